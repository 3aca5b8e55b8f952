//! The demo's stand-in for a club's smarthost: a plain-text SMTP sink on loopback (no TLS, no
//! AUTH) that keeps what it receives in memory and refuses chosen recipients with `550 5.1.1`.
//!
//! It speaks just the commands the relay's `smtp` route sends (EHLO/HELO, MAIL, RCPT, DATA, RSET,
//! NOOP, QUIT). It lives here rather than as a dependency so that no SMTP server is part of the
//! binary's dependency tree; tests and benchmarks use real servers (aiosmtpd, mailin-embedded).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One accepted message: the envelope and the bytes between `DATA` and the final dot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
}

/// A running sink; it stops with the runtime it was started on.
pub struct Sink {
    pub port: u16,
    inbox: Arc<Mutex<Vec<Received>>>,
}

impl Sink {
    /// Listens on 127.0.0.1 (a free port) and refuses `RCPT TO` for the addresses in `refuse`
    /// (compared case-insensitively).
    pub async fn start(refuse: &[&str]) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let refuse: Arc<Vec<String>> = Arc::new(refuse.iter().map(|a| a.to_lowercase()).collect());
        let shared = inbox.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, shared.clone(), refuse.clone()));
            }
        });
        Ok(Self { port, inbox })
    }

    /// What the sink has accepted so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The address inside `MAIL FROM:<…>` / `RCPT TO:<…>` (parameters after it ignored).
fn path_of(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => arg[a + 1..b].to_owned(),
        _ => arg.split_whitespace().next().unwrap_or_default().to_owned(),
    }
}

/// The longest line SMTP allows, its CRLF included (RFC 5321 4.5.3.1.6); a longer one ends the
/// session rather than growing a buffer without bound.
const MAX_LINE: u64 = 1000;

/// Reads one line (at most [`MAX_LINE`] bytes) into `line`; its length, 0 at the end of input.
async fn read_line(
    read: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    line.clear();
    let n = (&mut *read).take(MAX_LINE).read_until(b'\n', line).await?;
    if n as u64 == MAX_LINE && !line.ends_with(b"\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "an SMTP line longer than 1000 bytes",
        ));
    }
    Ok(n)
}

async fn session(stream: TcpStream, inbox: Arc<Mutex<Vec<Received>>>, refuse: Arc<Vec<String>>) {
    // A client that goes away mid-session just ends it; the demo reports what was received.
    let _ = converse(stream, &inbox, &refuse).await;
}

async fn converse(
    stream: TcpStream,
    inbox: &Mutex<Vec<Received>>,
    refuse: &[String],
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write.write_all(b"220 sink.demo.example ESMTP\r\n").await?;
    let mut current = Received::default();
    let mut line = Vec::new();
    loop {
        if read_line(&mut read, &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        let (verb, arg) = text.split_once([' ', ':']).unwrap_or((text, ""));
        let reply: &[u8] = match verb.to_ascii_uppercase().as_str() {
            "EHLO" => b"250-sink.demo.example\r\n250 8BITMIME\r\n",
            "HELO" | "NOOP" => b"250 OK\r\n",
            "RSET" => {
                current = Received::default();
                b"250 OK\r\n"
            }
            "MAIL" => {
                current = Received {
                    from: path_of(arg),
                    ..Received::default()
                };
                b"250 OK\r\n"
            }
            "RCPT" => {
                let to = path_of(arg);
                if refuse.contains(&to.to_lowercase()) {
                    let no =
                        format!("550 5.1.1 <{to}>: Recipient address rejected: User unknown\r\n");
                    write.write_all(no.as_bytes()).await?;
                    continue;
                }
                current.to.push(to);
                b"250 OK\r\n"
            }
            "DATA" => {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                loop {
                    if read_line(&mut read, &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    // Dot-stuffing (RFC 5321 4.5.2): a leading dot was doubled by the client.
                    let body = if line.starts_with(b"..") {
                        &line[1..]
                    } else {
                        &line[..]
                    };
                    current.data.extend_from_slice(body);
                }
                inbox
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(std::mem::take(&mut current));
                b"250 2.0.0 OK: queued\r\n"
            }
            "QUIT" => {
                write.write_all(b"221 Bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.2 Command not recognized\r\n",
        };
        write.write_all(reply).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_of_reads_the_address_between_angle_brackets() {
        assert_eq!(path_of("<a@b.example> SIZE=100"), "a@b.example");
        assert_eq!(path_of(" <> "), "");
        assert_eq!(path_of("a@b.example"), "a@b.example");
    }

    async fn next<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) -> String {
        let mut l = String::new();
        read.read_line(&mut l).await.unwrap();
        l
    }

    #[tokio::test]
    async fn a_line_past_the_smtp_limit_ends_its_session_only() {
        let sink = Sink::start(&[]).await.unwrap();
        let stream = TcpStream::connect(("127.0.0.1", sink.port)).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        assert!(next(&mut read).await.starts_with("220"));
        let long = format!("HELO {}\r\n", "x".repeat(2000));
        write.write_all(long.as_bytes()).await.unwrap();
        // The sink hangs up instead of answering (or buffering the rest).
        assert_eq!(next(&mut read).await, "");
        // Another session is served as before.
        let stream = TcpStream::connect(("127.0.0.1", sink.port)).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        assert!(next(&mut read).await.starts_with("220"));
        write.write_all(b"HELO me\r\n").await.unwrap();
        assert_eq!(next(&mut read).await, "250 OK\r\n");
    }

    #[tokio::test]
    async fn accepts_a_message_and_refuses_a_listed_recipient() {
        let sink = Sink::start(&["Gone@Example.org"]).await.unwrap();
        let stream = TcpStream::connect(("127.0.0.1", sink.port)).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut replies = Vec::new();
        replies.push(next(&mut read).await);
        for cmd in [
            "HELO me\r\n",
            "MAIL FROM:<club@club.example>\r\n",
            "RCPT TO:<gone@example.org>\r\n",
            "RCPT TO:<ana@example.org>\r\n",
            "DATA\r\n",
        ] {
            write.write_all(cmd.as_bytes()).await.unwrap();
            replies.push(next(&mut read).await);
        }
        write
            .write_all(b"Subject: x\r\n\r\n..dot\r\n.\r\n")
            .await
            .unwrap();
        replies.push(next(&mut read).await);
        let codes: Vec<&str> = replies.iter().map(|r| &r[..3]).collect();
        assert_eq!(codes, ["220", "250", "250", "550", "250", "354", "250"]);
        assert_eq!(
            sink.received(),
            [Received {
                from: "club@club.example".into(),
                to: vec!["ana@example.org".into()],
                data: b"Subject: x\r\n\r\n.dot\r\n".to_vec(),
            }]
        );
    }
}
