//! The bounce mailbox (`[bounces.imap]`): `bounce fetch` and `serve`'s poller read every message
//! in the folder over IMAP, ingest it ([`super::ingest::ingest`], as `bounce ingest` does), and
//! only once that is committed move it to `move_to` or delete it.
//!
//! - Every message in the folder is new: handled ones leave it. A crash (or a cut connection)
//!   between ingest and move leaves the message there; the next run ingests it again, which is a
//!   duplicate (the same bytes) and changes nothing, then moves it.
//! - A refused message (a forged VERP address) was handled: it is moved or deleted like the
//!   others, and the report says so. Auto-replies and mail that is no bounce likewise.
//! - A message that cannot be ingested (the state DB is down) is left in the folder for the next
//!   run, and the run stops there; so is a message over [`MAX_BOUNCE_BYTES`] (reported each run,
//!   never fetched whole).
//! - TLS always (implicit, or STARTTLS before LOGIN: no plaintext fallback), certificates checked
//!   against the public web CAs and `ca_file`. The password is never logged nor shown: server
//!   texts quoted in errors have it blanked out too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_imap::{Client, Session};
use futures::TryStreamExt;
use secrecy::ExposeSecret;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use super::ingest::{self, Ingest, IngestError, IngestResult, MAX_BOUNCE_BYTES, Outcome};
use crate::config::{AfterIngest, ImapConfig, ImapTls};

type Stream = TlsStream<TcpStream>;

/// Why a run could not read the mailbox at all (nothing was ingested).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("[bounces.imap] ca_file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("cannot connect to the IMAP server {server}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with the IMAP server {server} failed: {message}")]
    Tls { server: String, message: String },
    #[error(
        "the IMAP server {server} refused STARTTLS ({message}); mailbridge does not log in without TLS (try tls = \"tls\" on port 993)"
    )]
    NoStartTls { server: String, message: String },
    #[error("the IMAP server {server} refused the login of user `{user}`: {message}")]
    Login {
        server: String,
        user: String,
        message: String,
    },
    #[error("the IMAP server {server} did not answer {what} within {secs} s")]
    Timeout {
        server: String,
        what: String,
        secs: u64,
    },
    #[error("IMAP server {server}: {what} failed: {message}")]
    Command {
        server: String,
        what: String,
        message: String,
    },
}

/// What became of one message of the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Handled {
    Moved,
    Deleted,
    /// Still in the folder: the next run tries it again.
    Left,
}

/// One message of the folder, as `bounce fetch` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct MessageLine {
    pub uid: u32,
    /// The size the server gives (RFC822.SIZE).
    pub size: Option<u32>,
    pub handled: Handled,
    /// Why it was left, or what was done, in a sentence.
    pub note: String,
    /// What ingesting it decided (absent when it was not ingested).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestResult>,
}

/// The answer of one run over the mailbox.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FetchReport {
    pub server: String,
    pub folder: String,
    /// Messages read and ingested (whatever the outcome).
    pub fetched: u64,
    pub applied: u64,
    pub refused: u64,
    pub duplicates: u64,
    /// Auto-replies, no bounce, or about no message of ours.
    pub ignored: u64,
    /// Messages still in the folder after the run (too large, or not ingested or not moved
    /// because of a failure).
    pub left: u64,
    pub messages: Vec<MessageLine>,
    /// Why the run stopped before the end of the folder (the messages not reached are left).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// The stored events of the applied messages, for the events engine.
    #[serde(skip)]
    pub event_ids: Vec<i64>,
}

/// A fault to inject, for the crash tests: not part of the configuration.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Drop the connection right after the first message is ingested, before it is moved or
    /// deleted (as a crash would).
    pub cut_after_first_ingest: bool,
}

/// Reads the mailbox once: every message in `folder` is ingested, then moved or deleted. Stops
/// between messages when `stop` is cancelled.
pub async fn fetch(
    ctx: Ingest<'_>,
    config: &ImapConfig,
    stop: Option<&CancellationToken>,
) -> Result<FetchReport, FetchError> {
    fetch_with(ctx, config, stop, Faults::default()).await
}

#[doc(hidden)]
pub async fn fetch_with(
    ctx: Ingest<'_>,
    config: &ImapConfig,
    stop: Option<&CancellationToken>,
    faults: Faults,
) -> Result<FetchReport, FetchError> {
    let conn = Conn::new(config);
    let mut session = conn.open().await?;
    let mut report = FetchReport {
        server: conn.server.clone(),
        folder: config.folder.clone(),
        ..FetchReport::default()
    };
    let result = conn.run(&mut session, ctx, &mut report, stop, faults).await;
    if !matches!(result, Err(Cut)) {
        // A polite goodbye; the run's outcome does not depend on it.
        let _ = tokio::time::timeout(conn.timeout, session.logout()).await;
    }
    Ok(report)
}

/// The connection was dropped on purpose ([`Faults`]).
struct Cut;

struct Conn<'a> {
    config: &'a ImapConfig,
    /// `host:port`, for messages.
    server: String,
    timeout: Duration,
}

impl<'a> Conn<'a> {
    fn new(config: &'a ImapConfig) -> Conn<'a> {
        Conn {
            config,
            server: format!("{}:{}", config.host, config.port),
            timeout: Duration::from_secs(config.timeout_secs),
        }
    }

    /// A server's text, bounded, with the password blanked out should the server echo it.
    fn quote(&self, text: &str) -> String {
        let password = self.config.password.expose_secret();
        let mut text = text.trim().to_owned();
        if !password.is_empty() {
            text = text.replace(password, "[password]");
        }
        if text.len() > 300 {
            let mut end = 300;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        text
    }

    fn command_error(&self, what: &str, e: &async_imap::error::Error) -> FetchError {
        FetchError::Command {
            server: self.server.clone(),
            what: what.to_owned(),
            message: self.quote(&e.to_string()),
        }
    }

    /// `fut` within the timeout; `what` names the step in errors.
    async fn within<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, async_imap::error::Error>>,
    ) -> Result<T, FetchError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.command_error(what, &e)),
            Err(_) => Err(self.timeout_error(what)),
        }
    }

    fn timeout_error(&self, what: &str) -> FetchError {
        FetchError::Timeout {
            server: self.server.clone(),
            what: what.to_owned(),
            secs: self.config.timeout_secs,
        }
    }

    fn tls_connector(&self) -> Result<TlsConnector, FetchError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &self.config.ca_file {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let err = |message: String| FetchError::CaFile {
                path: path.display().to_string(),
                message,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(format!("not a PEM certificate: {e}")))?;
            if certs.is_empty() {
                return Err(err("no certificate in it".to_owned()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| err(format!("not a usable CA certificate: {e}")))?;
            }
        }
        // The provider is named rather than taken from the process default: two are compiled in.
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls {
            server: self.server.clone(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// TCP, TLS (implicit or STARTTLS), LOGIN, SELECT.
    async fn open(&self) -> Result<Session<Stream>, FetchError> {
        let connector = self.tls_connector()?;
        let host = self.config.host.as_str();
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect((host, self.config.port)))
            .await
            .map_err(|_| self.timeout_error("the connection"))?
            .map_err(|source| FetchError::Connect {
                server: self.server.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tcp = match self.config.tls {
            ImapTls::Tls => tcp,
            ImapTls::StartTls => self.starttls(tcp).await?,
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
            FetchError::Tls {
                server: self.server.clone(),
                message: format!("`{host}` is not a host name: {e}"),
            }
        })?;
        let tls = tokio::time::timeout(self.timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| self.timeout_error("the TLS handshake"))?
            .map_err(|e| FetchError::Tls {
                server: self.server.clone(),
                message: tls_reason(&e),
            })?;
        let mut client = Client::new(tls);
        if self.config.tls == ImapTls::Tls {
            self.greeting(&mut client).await?;
        }
        let user = self.config.username.as_str();
        let password = self.config.password.expose_secret();
        let mut session =
            match tokio::time::timeout(self.timeout, client.login(user, password)).await {
                Err(_) => return Err(self.timeout_error("LOGIN")),
                Ok(Err((e, _))) => {
                    return Err(FetchError::Login {
                        server: self.server.clone(),
                        user: user.to_owned(),
                        message: self.quote(&login_reason(&e)),
                    });
                }
                Ok(Ok(session)) => session,
            };
        self.within(
            &format!("SELECT {}", self.config.folder),
            session.select(&self.config.folder),
        )
        .await?;
        if let AfterIngest::MoveTo(to) = &self.config.after {
            // Checked before anything is ingested: a missing folder would otherwise have every
            // message ingested and left, run after run.
            self.within(
                &format!("STATUS {to} (the move_to folder)"),
                session.status(to, "(MESSAGES)"),
            )
            .await?;
        }
        Ok(session)
    }

    /// The server's first line: `* OK` (or PREAUTH); `* BYE` is a refusal.
    async fn greeting<T>(&self, client: &mut Client<T>) -> Result<(), FetchError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + std::fmt::Debug + Send,
    {
        use async_imap::imap_proto::{Response, Status};
        let first = tokio::time::timeout(self.timeout, client.read_response())
            .await
            .map_err(|_| self.timeout_error("the greeting"))?
            .map_err(|e| FetchError::Command {
                server: self.server.clone(),
                what: "the greeting".into(),
                message: e.to_string(),
            })?;
        match first.as_ref().map(|r| r.parsed()) {
            Some(Response::Data {
                status: Status::Ok | Status::PreAuth,
                ..
            }) => Ok(()),
            Some(Response::Data { outcome, .. }) => Err(FetchError::Command {
                server: self.server.clone(),
                what: "the greeting".into(),
                message: format!(
                    "the server turned the connection away: {}",
                    self.quote(outcome.information.as_deref().unwrap_or(""))
                ),
            }),
            _ => Err(FetchError::Command {
                server: self.server.clone(),
                what: "the greeting".into(),
                message: "no IMAP greeting".into(),
            }),
        }
    }

    /// Greeting and STARTTLS in plaintext; the plain stream back, to be wrapped in TLS. Anything
    /// the server sent after its OK is dropped with the plaintext reader (it could only be an
    /// injection).
    async fn starttls(&self, tcp: TcpStream) -> Result<TcpStream, FetchError> {
        let mut client = Client::new(tcp);
        self.greeting(&mut client).await?;
        match tokio::time::timeout(
            self.timeout,
            client.run_command_and_check_ok("STARTTLS", None),
        )
        .await
        {
            Err(_) => Err(self.timeout_error("STARTTLS")),
            Ok(Err(e)) => Err(FetchError::NoStartTls {
                server: self.server.clone(),
                message: self.quote(&e.to_string()),
            }),
            Ok(Ok(())) => Ok(client.into_inner()),
        }
    }

    /// Every message of the folder, oldest UID first. A failure after the first message is not
    /// an error of the run: it stops there and says why in `report.stopped`.
    async fn run(
        &self,
        session: &mut Session<Stream>,
        ctx: Ingest<'_>,
        report: &mut FetchReport,
        stop: Option<&CancellationToken>,
        faults: Faults,
    ) -> Result<(), Cut> {
        let caps = match self.within("CAPABILITY", session.capabilities()).await {
            Ok(c) => c,
            Err(e) => {
                report.stopped = Some(e.to_string());
                return Ok(());
            }
        };
        let ops = Ops {
            has_move: caps.has_str("MOVE"),
            has_uidplus: caps.has_str("UIDPLUS"),
        };
        let mut uids: Vec<u32> = match self
            .within("UID SEARCH ALL", session.uid_search("ALL"))
            .await
        {
            Ok(set) => set.into_iter().collect(),
            Err(e) => {
                report.stopped = Some(e.to_string());
                return Ok(());
            }
        };
        uids.sort_unstable();
        let mut cut = faults.cut_after_first_ingest;
        for (at, &uid) in uids.iter().enumerate() {
            if stop.is_some_and(CancellationToken::is_cancelled) {
                report.stopped = Some("mailbridge is shutting down".into());
            }
            if report.stopped.is_some() {
                report.left += (uids.len() - at) as u64;
                break;
            }
            let line = self.one(session, ctx, report, uid, ops, &mut cut).await?;
            if line.handled == Handled::Left {
                report.left += 1;
            }
            report.messages.push(line);
        }
        Ok(())
    }

    /// One message: size, bytes, ingest, then move or delete.
    async fn one(
        &self,
        session: &mut Session<Stream>,
        ctx: Ingest<'_>,
        report: &mut FetchReport,
        uid: u32,
        ops: Ops,
        cut: &mut bool,
    ) -> Result<MessageLine, Cut> {
        let mut line = MessageLine {
            uid,
            size: None,
            handled: Handled::Left,
            note: String::new(),
            ingest: None,
        };
        let raw = match self.read(session, uid, &mut line).await {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(line),
            Err(e) => {
                line.note = format!("not read: {e}");
                report.stopped = Some(e.to_string());
                return Ok(line);
            }
        };
        report.fetched += 1;
        let result = match ingest::ingest(ctx, &raw, false).await {
            Ok(r) => r,
            Err(e) => {
                line.note = format!(
                    "not ingested, left for the next run: {}",
                    crate::error_chain(&e)
                );
                if matches!(e, IngestError::Store(_)) {
                    report.stopped = Some(format!(
                        "the state database failed: {}",
                        crate::error_chain(&e)
                    ));
                }
                return Ok(line);
            }
        };
        match result.outcome {
            Outcome::Applied => report.applied += 1,
            Outcome::Refused => report.refused += 1,
            Outcome::Duplicate => report.duplicates += 1,
            Outcome::Ignored | Outcome::UnknownMessage => report.ignored += 1,
        }
        report.event_ids.extend(&result.event_ids);
        let outcome = result.outcome;
        line.ingest = Some(result);
        if std::mem::take(cut) {
            return Err(Cut);
        }
        let done = match &self.config.after {
            AfterIngest::MoveTo(to) => self.move_to(session, uid, to, ops).await,
            AfterIngest::Delete => self.delete(session, uid, ops).await,
        };
        match done {
            Ok((handled, how)) => {
                line.handled = handled;
                let refused = if outcome == Outcome::Refused {
                    " (handled all the same)"
                } else {
                    ""
                };
                let done = match &self.config.after {
                    AfterIngest::MoveTo(to) => format!("moved to {to}"),
                    AfterIngest::Delete => "deleted".to_owned(),
                };
                line.note = format!("{}{refused}, {done} ({how})", outcome.as_str());
            }
            Err(e) => {
                line.note = format!(
                    "{}, but left in the folder ({e}); the next run finds it a duplicate",
                    outcome.as_str()
                );
                report.stopped = Some(e.to_string());
            }
        }
        Ok(line)
    }

    /// The message's bytes, or `None` (with the reason in `line`) when it is too large or gone.
    async fn read(
        &self,
        session: &mut Session<Stream>,
        uid: u32,
        line: &mut MessageLine,
    ) -> Result<Option<Vec<u8>>, FetchError> {
        let what = format!("UID FETCH {uid} RFC822.SIZE");
        let sizes: Vec<_> = self
            .within(&what, async {
                session
                    .uid_fetch(uid.to_string(), "(UID RFC822.SIZE)")
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        let Some(size) = sizes.iter().find(|f| f.uid == Some(uid)).map(|f| f.size) else {
            line.note = "gone before it was read (another client took it)".into();
            return Ok(None);
        };
        line.size = size;
        let too_large = |line: &mut MessageLine, size: usize| {
            line.note = format!(
                "{size} bytes, more than the {MAX_BOUNCE_BYTES} a bounce may be: left in the folder, not ingested"
            );
        };
        if let Some(size) = size
            && size as usize > MAX_BOUNCE_BYTES
        {
            too_large(line, size as usize);
            return Ok(None);
        }
        // At most one byte over the limit, whatever the size the server gave.
        let what = format!("UID FETCH {uid} BODY.PEEK[]");
        let bodies: Vec<_> = self
            .within(&what, async {
                session
                    .uid_fetch(
                        uid.to_string(),
                        format!("(UID BODY.PEEK[]<0.{}>)", MAX_BOUNCE_BYTES + 1),
                    )
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        let Some(body) = bodies
            .iter()
            .find(|f| f.uid == Some(uid))
            .and_then(|f| f.body())
        else {
            line.note = "gone before it was read (another client took it)".into();
            return Ok(None);
        };
        if body.len() > MAX_BOUNCE_BYTES {
            too_large(line, body.len());
            return Ok(None);
        }
        Ok(Some(body.to_vec()))
    }

    async fn move_to(
        &self,
        session: &mut Session<Stream>,
        uid: u32,
        to: &str,
        ops: Ops,
    ) -> Result<(Handled, &'static str), FetchError> {
        if ops.has_move {
            self.within(
                &format!("UID MOVE {uid} {to}"),
                session.uid_mv(uid.to_string(), to),
            )
            .await?;
            Ok((Handled::Moved, "UID MOVE"))
        } else {
            self.within(
                &format!("UID COPY {uid} {to}"),
                session.uid_copy(uid.to_string(), to),
            )
            .await?;
            self.delete(session, uid, ops).await?;
            Ok((
                Handled::Moved,
                if ops.has_uidplus {
                    "UID COPY, UID STORE \\Deleted, UID EXPUNGE"
                } else {
                    "UID COPY, UID STORE \\Deleted, EXPUNGE"
                },
            ))
        }
    }

    /// `\Deleted` and expunged: UID EXPUNGE of this message where the server has UIDPLUS, else a
    /// plain EXPUNGE (which also removes any other message flagged `\Deleted` in the folder).
    async fn delete(
        &self,
        session: &mut Session<Stream>,
        uid: u32,
        ops: Ops,
    ) -> Result<(Handled, &'static str), FetchError> {
        self.within(&format!("UID STORE {uid} +FLAGS (\\Deleted)"), async {
            session
                .uid_store(uid.to_string(), "+FLAGS.SILENT (\\Deleted)")
                .await?
                .try_collect::<Vec<_>>()
                .await
        })
        .await?;
        if ops.has_uidplus {
            self.within(&format!("UID EXPUNGE {uid}"), async {
                session
                    .uid_expunge(uid.to_string())
                    .await?
                    .try_collect::<Vec<_>>()
                    .await
            })
            .await?;
            Ok((Handled::Deleted, "UID STORE \\Deleted, UID EXPUNGE"))
        } else {
            self.within("EXPUNGE", async {
                session.expunge().await?.try_collect::<Vec<_>>().await
            })
            .await?;
            Ok((Handled::Deleted, "UID STORE \\Deleted, EXPUNGE"))
        }
    }
}

/// What the server can do, from CAPABILITY after LOGIN.
#[derive(Clone, Copy)]
struct Ops {
    has_move: bool,
    has_uidplus: bool,
}

/// The server's words for a refused LOGIN (`NO [AUTHENTICATIONFAILED] …`), else the error.
fn login_reason(e: &async_imap::error::Error) -> String {
    match e {
        async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A TLS failure in words a person can act on.
fn tls_reason(e: &std::io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(cert)) => format!(
            "the server's certificate is not trusted ({cert:?}); if the server uses a private or self-signed CA, set [bounces.imap] ca_file to it"
        ),
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

/// `serve`'s bounce mailbox poller: a run at start, then every `poll_every`; wakes the
/// writeback worker when a run stored events. Stops between messages once `shutdown` is
/// cancelled.
pub struct Poller {
    pub store: crate::store::Store,
    pub relay: Option<Arc<crate::config::RelayConfig>>,
    pub config: Arc<ImapConfig>,
}

impl Poller {
    pub async fn run(self, shutdown: CancellationToken, events_ready: Arc<tokio::sync::Notify>) {
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            self.once(&shutdown, &events_ready).await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.config.poll_every) => {}
            }
        }
    }

    #[tracing::instrument(skip_all, fields(server = %format!("{}:{}", self.config.host, self.config.port), folder = %self.config.folder))]
    async fn once(&self, shutdown: &CancellationToken, events_ready: &tokio::sync::Notify) {
        let ctx = Ingest {
            store: &self.store,
            relay: self.relay.as_deref(),
        };
        let report = match fetch(ctx, &self.config, Some(shutdown)).await {
            Ok(r) => r,
            Err(
                e @ (FetchError::Login { .. } | FetchError::Tls { .. } | FetchError::CaFile { .. }),
            ) => {
                tracing::error!(
                    "The bounce mailbox cannot be read; retried every poll: {}",
                    crate::error_chain(&e)
                );
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "The bounce mailbox could not be read this time; retried at the next poll: {}",
                    crate::error_chain(&e)
                );
                return;
            }
        };
        if !report.event_ids.is_empty() {
            events_ready.notify_one();
        }
        for m in &report.messages {
            match (&m.ingest, m.handled) {
                (_, Handled::Left) => {
                    tracing::warn!(
                        uid = m.uid,
                        "A bounce mail was left in the folder: {}",
                        m.note
                    );
                }
                (Some(r), _) if r.is_refusal() => {
                    tracing::warn!(uid = m.uid, mail = %r.id, "A bounce mail was refused: {}: {}", m.note, r.message);
                }
                (Some(r), _) => {
                    tracing::info!(uid = m.uid, mail = %r.id, "{}: {}", m.note, r.message);
                }
                (None, _) => tracing::info!(uid = m.uid, "{}", m.note),
            }
        }
        if let Some(why) = &report.stopped {
            tracing::warn!(
                "The bounce mailbox run stopped; the rest waits for the next poll: {why}"
            );
        }
    }
}
