//! The local MTA route: the `sendmail` binary every MTA ships (Postfix, Exim, OpenSMTPD), as PHP's
//! `mail()` uses it: `sendmail -i -f <envelope sender> -- <recipient>` with the message on stdin
//! (LF line endings, the local convention). The exit status follows sysexits.h.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::Delivery;
use crate::relay::classify::Failure;

const TIMEOUT: Duration = Duration::from_secs(60);

pub struct SendmailRoute {
    path: PathBuf,
}

impl SendmailRoute {
    pub fn new(path: PathBuf) -> SendmailRoute {
        SendmailRoute { path }
    }

    pub async fn send(&self, delivery: Delivery<'_>) -> Result<String, Failure> {
        // Both were validated at enqueue; a leading `-` would be read as an option.
        if delivery.envelope_from.starts_with('-') || delivery.recipient.starts_with('-') {
            return Err(Failure::Setup {
                detail: "an address starts with `-`".into(),
            });
        }
        let mut child = tokio::process::Command::new(&self.path)
            .args(["-i", "-f", delivery.envelope_from, "--", delivery.recipient])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Failure::Sendmail {
                exit: None,
                detail: format!("cannot run {}: {e}", self.path.display()),
            })?;
        let body = lf_line_endings(delivery.raw);
        // Set once the whole message is written and stdin closed: the MTA may have queued it.
        let handed_over = std::sync::atomic::AtomicBool::new(false);
        let work = async {
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(&body).await?;
                stdin.shutdown().await?;
            }
            handed_over.store(true, std::sync::atomic::Ordering::SeqCst);
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(TIMEOUT, work).await {
            Err(_) => {
                let detail = format!("{} did not finish within {TIMEOUT:?}", self.path.display());
                return Err(if handed_over.load(std::sync::atomic::Ordering::SeqCst) {
                    Failure::Unanswered {
                        detail: format!("{detail} after it was given the whole message"),
                    }
                } else {
                    Failure::Unreachable { detail }
                });
            }
            Ok(Err(e)) => {
                return Err(Failure::Sendmail {
                    exit: None,
                    detail: format!("talking to {}: {e}", self.path.display()),
                });
            }
            Ok(Ok(output)) => output,
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        if output.status.success() {
            Ok(format!(
                "sendmail accepted the message{}",
                if stderr.is_empty() {
                    String::new()
                } else {
                    format!(": {stderr}")
                }
            ))
        } else {
            Err(Failure::Sendmail {
                exit: output.status.code(),
                detail: stderr.chars().take(500).collect(),
            })
        }
    }
}

fn lf_line_endings(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\r' && raw.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn crlf_becomes_lf_and_lone_cr_stays() {
        assert_eq!(super::lf_line_endings(b"a\r\nb\rc\n"), b"a\nb\rc\n");
    }
}
