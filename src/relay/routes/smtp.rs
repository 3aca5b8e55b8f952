//! The SMTP smarthost route: lettre's SMTP client (`AsyncSmtpConnection`: EHLO, STARTTLS, AUTH,
//! MAIL/RCPT/DATA) over connections this route pools itself, `tls = starttls` (STARTTLS required,
//! no downgrade), `tls` (implicit TLS) or `none`, AUTH PLAIN/LOGIN, timeouts, and an optional
//! private CA (`ca_file`, PEM) for internal relays and tests.
//!
//! Why not lettre's own pooled transport: it opens its sockets without `TCP_NODELAY`, and lettre
//! writes the message and the final `.` in two writes, so every message waits for the server's
//! delayed ACK (40 ms on Linux): at most ~25 messages per second per connection, measured here.
//! Opening the socket ourselves (with `TCP_NODELAY`) and handing it to lettre removes that wait.
//! Implicit TLS still uses lettre's own connect (it has no hook for our socket there).
//!
//! The mail transaction runs step by step rather than through lettre's `send`, so that the route
//! knows whether the content was handed over when the conversation breaks: a lost answer after
//! that is [`Failure::Unanswered`] (the server may have queued the message), and such a message
//! is never sent again on a fresh connection within the attempt.
//!
//! When the server offers PIPELINING (RFC 2920; Postfix, Exim and most smarthosts do), MAIL, RCPT
//! and DATA go out in one write and their replies are read in order: a message costs two round
//! trips (the envelope, then the content) instead of four. lettre's `ServerInfo` does not keep
//! that keyword, so a new connection asks EHLO once more (before AUTH) to read it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lettre::address::{Address, Envelope};
use lettre::transport::smtp;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use super::Delivery;
use super::RouteError;
use crate::config::{SmtpConfig, SmtpTls};
use crate::relay::classify::Failure;

/// An idle connection older than this is checked with NOOP before use.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// A connection ready for mail transactions, and whether its server offers PIPELINING.
struct Conn {
    smtp: AsyncSmtpConnection,
    pipelining: bool,
}

pub struct SmtpRoute {
    host: String,
    port: u16,
    tls: SmtpTls,
    tls_params: Option<TlsParameters>,
    credentials: Option<Credentials>,
    timeout: Duration,
    hello: ClientId,
    idle: Mutex<Vec<(Conn, Instant)>>,
    slots: Semaphore,
}

impl SmtpRoute {
    pub fn new(config: &SmtpConfig, pool_size: u32) -> Result<SmtpRoute, RouteError> {
        let tls_params = if config.tls == SmtpTls::None {
            None
        } else {
            let mut params = TlsParameters::builder(config.host.clone());
            if let Some(path) = &config.ca_file {
                let ca_err = |message: String| RouteError::CaFile {
                    path: path.display().to_string(),
                    message,
                };
                let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| ca_err(format!("not a PEM certificate: {e}")))?;
                params = params.add_root_certificate(cert);
            }
            Some(
                params
                    .build_rustls()
                    .map_err(|e| RouteError::Smtp(format!("TLS setup failed: {e}")))?,
            )
        };
        let credentials = config.username.as_ref().map(|user| {
            let password = config
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_owned())
                .unwrap_or_default();
            Credentials::new(user.clone(), password)
        });
        Ok(SmtpRoute {
            host: config.host.clone(),
            port: config.port,
            tls: config.tls,
            tls_params,
            credentials,
            timeout: Duration::from_secs(config.timeout_secs),
            hello: ClientId::default(),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(pool_size.max(1) as usize),
        })
    }

    /// A new, ready connection: TCP (no Nagle), EHLO, STARTTLS or implicit TLS, EHLO again (for
    /// PIPELINING), AUTH.
    async fn connect(&self) -> Result<Conn, Failure> {
        let setup = async {
            let mut conn = match self.tls {
                SmtpTls::Tls => AsyncSmtpConnection::connect_tokio1(
                    (self.host.as_str(), self.port),
                    Some(self.timeout),
                    &self.hello,
                    self.tls_params.clone(),
                    None,
                )
                .await
                .map_err(|e| failure(&e))?,
                SmtpTls::StartTls | SmtpTls::None => {
                    let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                        .await
                        .map_err(|e| Failure::Unreachable {
                            detail: format!("cannot connect to {}:{}: {e}", self.host, self.port),
                        })?;
                    // Best effort: without it, only speed suffers.
                    let _ = tcp.set_nodelay(true);
                    let mut conn =
                        AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello)
                            .await
                            .map_err(|e| failure(&e))?;
                    if self.tls == SmtpTls::StartTls {
                        let params = self.tls_params.clone().ok_or_else(|| Failure::Setup {
                            detail: "STARTTLS without TLS parameters".into(),
                        })?;
                        // Refused or not offered: an error, never a plain-text fallback.
                        conn.starttls(params, &self.hello)
                            .await
                            .map_err(|e| failure(&e))?;
                    }
                    conn
                }
            };
            // The extensions as the server offers them now (after STARTTLS, a server may offer
            // more): lettre read the same answer but keeps only the keywords it knows.
            let ehlo = conn
                .command(Ehlo::new(self.hello.clone()))
                .await
                .map_err(|e| failure(&e))?;
            let pipelining = ehlo.message().any(|line| {
                line.split_whitespace()
                    .next()
                    .is_some_and(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"))
            });
            if let Some(credentials) = &self.credentials {
                conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                    .await
                    .map_err(|e| failure(&e))?;
            }
            Ok(Conn {
                smtp: conn,
                pipelining,
            })
        };
        tokio::time::timeout(self.timeout, setup)
            .await
            .map_err(|_| Failure::Unreachable {
                detail: format!(
                    "{}:{} did not complete the connection within {:?}",
                    self.host, self.port, self.timeout
                ),
            })?
    }

    /// An idle pooled connection that still answers (true: it was reused), or a new one.
    async fn checkout(&self) -> Result<(Conn, bool), Failure> {
        loop {
            let next = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match next {
                None => return Ok((self.connect().await?, false)),
                Some((mut conn, since)) => {
                    if since.elapsed() < IDLE_CHECK
                        || tokio::time::timeout(self.timeout, conn.smtp.test_connected())
                            .await
                            .unwrap_or(false)
                    {
                        return Ok((conn, true));
                    }
                }
            }
        }
    }

    pub async fn send(&self, delivery: Delivery<'_>) -> Result<String, Failure> {
        let envelope = envelope(delivery.envelope_from, delivery.recipient)?;
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Failure::Unreachable {
                detail: "the SMTP route is shut down".into(),
            })?;
        let (mut conn, mut reused) = self.checkout().await?;
        loop {
            // Set once the content and its final `.` are being written: from then on the server
            // may have accepted the message, whatever happens to its answer.
            let handed_over = AtomicBool::new(false);
            // MAIL, RCPT, DATA and the message: a few commands, each allowed the timeout.
            let budget = self.timeout * 4;
            let result = tokio::time::timeout(
                budget,
                transaction(&mut conn, &envelope, delivery.raw, &handed_over),
            )
            .await;
            let handed_over = handed_over.load(Ordering::SeqCst);
            let Ok(result) = result else {
                let detail = format!(
                    "no answer from {}:{} within {budget:?}",
                    self.host, self.port
                );
                return Err(if handed_over {
                    Failure::Unanswered {
                        detail: format!("{detail} after the message content was sent"),
                    }
                } else {
                    Failure::Unreachable { detail }
                });
            };
            if !conn.smtp.has_broken() {
                self.idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((conn, Instant::now()));
            }
            match result {
                Ok(response) => {
                    return Ok(format!(
                        "{} {}",
                        response.code(),
                        response.message().collect::<Vec<_>>().join(" ")
                    ));
                }
                // A reply is an answer: only a silent end after the handover leaves the message's
                // fate unknown, and such a message is never sent again on a new connection here.
                Err(TxError::Unsupported(detail)) => {
                    return Err(Failure::Setup {
                        detail: detail.into(),
                    });
                }
                Err(TxError::Smtp(e))
                    if reused && ended_by_server(&e) && (e.status().is_some() || !handed_over) =>
                {
                    // The server ended a pooled connection since its last message (a restart, a
                    // per-connection message limit): that says nothing about the route. Once,
                    // on a new connection; a second failure there is the route's own.
                    tracing::debug!(
                        "The SMTP server ended a pooled connection ({e}); sending on a new one"
                    );
                    conn = self.connect().await?;
                    reused = false;
                }
                Err(TxError::Smtp(e)) => return Err(failure_after(&e, handed_over)),
            }
        }
    }

    /// Says QUIT on every idle connection; later sends fail.
    pub async fn shutdown(&self) {
        self.slots.close();
        let idle: Vec<_> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        for (mut conn, _) in idle {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.smtp.quit()).await;
        }
    }
}

pub(crate) fn envelope(envelope_from: &str, recipient: &str) -> Result<Envelope, Failure> {
    let from: Address = envelope_from.parse().map_err(|e| Failure::Setup {
        detail: format!("envelope sender `{envelope_from}`: {e}"),
    })?;
    let to: Address = recipient.parse().map_err(|e| Failure::Setup {
        detail: format!("recipient `{recipient}`: {e}"),
    })?;
    Envelope::new(Some(from), vec![to]).map_err(|e| Failure::Setup {
        detail: e.to_string(),
    })
}

/// One mail transaction on `conn`: what lettre's `AsyncSmtpConnection::send` does (the SMTPUTF8
/// and 8BITMIME checks, MAIL, RCPT, DATA, the content), except that `handed_over` is set the
/// moment the whole content has been written and only the final `.` and the answer are left, and
/// that MAIL, RCPT and DATA are pipelined when the server offers it. On a failure the connection
/// is aborted (QUIT, then closed), as lettre does.
async fn transaction(
    conn: &mut Conn,
    envelope: &Envelope,
    raw: &[u8],
    handed_over: &AtomicBool,
) -> Result<smtp::response::Response, TxError> {
    let mut options = Vec::new();
    let non_ascii_address = envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .any(|a: &Address| !AsRef::<str>::as_ref(a).is_ascii());
    if non_ascii_address {
        if !conn
            .smtp
            .server_info()
            .supports_feature(Extension::SmtpUtfEight)
        {
            return Err(TxError::Unsupported(
                "the envelope has non-ASCII addresses but the server does not offer SMTPUTF8",
            ));
        }
        options.push(MailParameter::SmtpUtfEight);
    }
    if !raw.is_ascii() {
        if !conn
            .smtp
            .server_info()
            .supports_feature(Extension::EightBitMime)
        {
            return Err(TxError::Unsupported(
                "the message has non-ASCII bytes but the server does not offer 8BITMIME",
            ));
        }
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let pipelining = conn.pipelining;
    let conn = &mut conn.smtp;
    let mail = Mail::new(envelope.from().cloned(), options);
    let steps = async {
        if pipelining {
            envelope_pipelined(conn, mail, envelope).await?;
        } else {
            conn.command(mail).await?;
            for to in envelope.to() {
                conn.command(Rcpt::new(to.clone(), Vec::new())).await?;
            }
            conn.command(Data).await?;
        }
        let reply = conn
            .message_iter(Content {
                raw: Some(raw),
                written: handed_over,
            })
            .await?;
        Ok::<_, PipelineError>(reply)
    };
    let result = steps.await;
    match &result {
        Ok(_) => {}
        // The server took DATA although an earlier command of the group failed: it now reads
        // content, so a QUIT would be taken as content and never answered. The connection is
        // only marked broken (abort's first step, taken in its first poll) and then dropped.
        Err(PipelineError::DataAfterFailure(_)) => {
            let _ = tokio::time::timeout(Duration::ZERO, conn.abort()).await;
        }
        Err(PipelineError::Smtp(_)) => conn.abort().await,
    }
    result.map_err(|e| match e {
        PipelineError::DataAfterFailure(e) | PipelineError::Smtp(e) => TxError::Smtp(e),
    })
}

/// MAIL, each RCPT and DATA in one write (RFC 2920), then their replies in order. Every reply of
/// the group is read, so that the connection is at a known point whatever failed; the first
/// failure is returned (a refused recipient keeps its own reply and code, as without pipelining).
async fn envelope_pipelined(
    conn: &mut AsyncSmtpConnection,
    mail: Mail,
    envelope: &Envelope,
) -> Result<(), PipelineError> {
    use std::fmt::Write as _;
    let mut group = mail.to_string();
    for to in envelope.to() {
        // Writing to a String cannot fail.
        let _ = write!(group, "{}", Rcpt::new(to.clone(), Vec::new()));
    }
    let _ = write!(group, "{Data}");
    let replies = envelope.to().len() + 2;
    let mut failed: Option<smtp::Error> = None;
    let mut data_accepted = false;
    for i in 0..replies {
        let reply = if i == 0 {
            conn.command(&group).await
        } else {
            conn.read_response().await
        };
        match reply {
            Ok(_) => data_accepted = i + 1 == replies,
            // A reply: the next command's reply follows it.
            Err(e) if e.status().is_some() => {
                failed.get_or_insert(e);
            }
            // No reply (the connection ended, or what came was not a reply): nothing more will
            // come; the first failure is what happened (a 421 before the connection closed).
            Err(e) => return Err(PipelineError::Smtp(failed.unwrap_or(e))),
        }
    }
    match failed {
        None => Ok(()),
        Some(e) if data_accepted => Err(PipelineError::DataAfterFailure(e)),
        Some(e) => Err(PipelineError::Smtp(e)),
    }
}

/// The message content for `message_iter`: one part; lettre asks for the next part once the
/// first is written, and that request says the whole content went out.
struct Content<'a> {
    raw: Option<&'a [u8]>,
    written: &'a AtomicBool,
}

impl<'a> Iterator for Content<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let part = self.raw.take();
        if part.is_none() {
            self.written.store(true, Ordering::SeqCst);
        }
        part
    }
}

/// Why a pipelined envelope or the content that follows failed.
enum PipelineError {
    /// The server answered DATA with 354 after refusing an earlier command of the group.
    DataAfterFailure(smtp::Error),
    Smtp(smtp::Error),
}

impl From<smtp::Error> for PipelineError {
    fn from(e: smtp::Error) -> PipelineError {
        PipelineError::Smtp(e)
    }
}

/// Why a [`transaction`] failed: the server lacks an extension the message needs (found before
/// any command is sent), or the conversation failed.
enum TxError {
    Unsupported(&'static str),
    Smtp(smtp::Error),
}

impl From<smtp::Error> for TxError {
    fn from(e: smtp::Error) -> TxError {
        TxError::Smtp(e)
    }
}

/// Whether `e`, on a connection used before, says the server ended that connection rather than
/// refused the message: the connection closed or reset with no reply, or 421 ("closing
/// transmission channel"), which Exim answers once a connection has carried its
/// `smtp_accept_max_per_connection` messages. A timeout is not retried (the server is slow, and a
/// retry would double the wait).
fn ended_by_server(e: &smtp::Error) -> bool {
    match e.status() {
        Some(code) => code.to_string() == "421",
        None => !e.is_client() && !e.is_timeout(),
    }
}

/// [`failure`] for an error of a mail transaction: after the handover (`handed_over`), an error
/// that is not a reply (the connection closed, reset or sent something unreadable) leaves the
/// message's fate unknown.
fn failure_after(e: &smtp::Error, handed_over: bool) -> Failure {
    match failure(e) {
        Failure::Unreachable { detail } if handed_over => Failure::Unanswered {
            detail: format!("{detail} (after the message content was sent)"),
        },
        other => other,
    }
}

/// A lettre error as a [`Failure`]: a negative reply keeps its code and the server's text; a
/// client-side problem (no common AUTH mechanism …) is a setup failure; everything else
/// (refused, timeout, TLS, broken connection) means the route is unreachable.
pub fn failure(e: &smtp::Error) -> Failure {
    if let Some(code) = e.status() {
        let text = e.to_string();
        let text = text
            .split_once("): ")
            .map(|(_, t)| t.to_owned())
            .unwrap_or_default();
        let code = code.to_string().parse::<u16>().unwrap_or(0);
        return Failure::Smtp { code, text };
    }
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !detail.contains(&s_text) {
            detail.push_str(": ");
            detail.push_str(&s_text);
        }
        source = s.source();
    }
    if e.is_client() {
        Failure::Setup { detail }
    } else {
        Failure::Unreachable { detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn bad_envelope_is_a_setup_failure() {
        assert!(matches!(
            envelope("not an address", "ana@example.org"),
            Err(Failure::Setup { .. })
        ));
    }
}
