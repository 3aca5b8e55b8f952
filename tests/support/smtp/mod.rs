//! Real SMTP servers for the relay tests: aiosmtpd (PyPI) driven by `sink.py` beside this file, with
//! per-run certificates (a CA and a leaf with subjectAltName, made by the openssl CLI). With
//! `CI=true` a missing aiosmtpd fails the test; elsewhere the test is skipped with a message.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::app::RelayParts;
use super::config::ConfigFile;
use super::db::in_ci;

/// Whether aiosmtpd can be imported; panics under CI when it cannot.
pub fn aiosmtpd_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if in_ci() {
            panic!("aiosmtpd is not installed and CI=true (python3 -m pip install aiosmtpd)");
        }
        eprintln!(
            "SKIPPED: aiosmtpd is not installed here (python3 -m pip install aiosmtpd); CI=true makes this a failure"
        );
    }
    ok
}

/// A private CA and a server certificate for 127.0.0.1 / localhost signed by it.
#[derive(Clone)]
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    super::run_ok(
        Command::new("openssl").args(args).current_dir(dir),
        &format!("openssl {args:?}"),
    );
}

pub fn certs(dir: &Path) -> Certs {
    certs_with(
        dir,
        &[
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ],
    )
}

/// [`certs`] with RSA-2048 keys, as most public smarthosts present (the benchmark uses these).
pub fn certs_rsa(dir: &Path) -> Certs {
    certs_with(dir, &["-newkey", "rsa:2048", "-nodes"])
}

fn certs_with(dir: &Path, key_args: &[&str]) -> Certs {
    let mut ca_args = vec!["req", "-x509"];
    ca_args.extend(key_args.iter().copied());
    ca_args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=mailbridge test CA",
    ]);
    openssl(dir, &ca_args);
    let mut csr_args = vec!["req"];
    csr_args.extend(key_args.iter().copied());
    csr_args.extend([
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &csr_args);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write leaf.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

/// How to start a sink.
#[derive(Default, Clone)]
pub struct SinkOptions {
    pub port: u16,
    pub starttls: bool,
    pub implicit_tls: bool,
    pub auth: Option<(String, String)>,
    pub mail_fail: Option<(String, u32)>,
    pub rcpt_fail: Option<(String, u32)>,
    pub reject: Vec<(String, String)>,
    /// Accept this many messages on a connection, then end it: with the reply to the next MAIL
    /// FROM (e.g. Exim's 421), or silently after the last message when the reply is empty.
    pub per_connection: Option<(u32, String)>,
    /// For the first `n` messages: keep the message, then close the connection without a reply
    /// (`"drop"`) or never reply (`"stall"`): the client cannot know whether it was accepted.
    pub after_data: Option<(&'static str, u32)>,
    /// Do not offer PIPELINING (offered by default, as Postfix and Exim do).
    pub no_pipelining: bool,
}

/// A running aiosmtpd sink; stopped on drop.
pub struct Sink {
    child: Child,
    pub port: u16,
    pub maildir: PathBuf,
}

/// One message the sink accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub raw: Vec<u8>,
    /// Whether RCPT had arrived together with MAIL FROM (the client pipelined its commands).
    pub pipelined: bool,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// The value of the first header `name` (unfolded), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let mut out: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = out.as_mut() {
                if line.starts_with([' ', '\t']) {
                    v.push_str(line);
                    continue;
                }
                break;
            }
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case(name)
            {
                out = Some(v.trim().to_owned());
            }
        }
        out
    }
}

impl Sink {
    pub fn start(dir: &Path, certs: Option<&Certs>, opts: &SinkOptions) -> Sink {
        let maildir = dir.join(format!("maildir-{}", rand_suffix()));
        std::fs::create_dir_all(&maildir).expect("create maildir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp/sink.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args(["--port", &opts.port.to_string()])
            .arg("--maildir")
            .arg(&maildir);
        if opts.starttls || opts.implicit_tls {
            let c = certs.expect("TLS needs certificates");
            cmd.arg("--tls-cert")
                .arg(&c.cert)
                .arg("--tls-key")
                .arg(&c.key);
        }
        if opts.implicit_tls {
            cmd.arg("--implicit-tls");
        }
        if let Some((u, p)) = &opts.auth {
            cmd.args(["--auth", &format!("{u}:{p}")]);
        }
        if let Some((reply, n)) = &opts.mail_fail {
            cmd.args(["--mail-fail", reply, "--mail-fail-count", &n.to_string()]);
        }
        if let Some((reply, n)) = &opts.rcpt_fail {
            cmd.args(["--rcpt-fail", reply, "--rcpt-fail-count", &n.to_string()]);
        }
        for (addr, reply) in &opts.reject {
            cmd.args(["--reject", &format!("{addr}={reply}")]);
        }
        if let Some((what, n)) = &opts.after_data {
            cmd.args(["--after-data", what, "--after-data-count", &n.to_string()]);
        }
        if let Some((n, reply)) = &opts.per_connection {
            cmd.args(["--per-connection", &n.to_string()]);
            cmd.args(["--per-connection-reply", reply]);
        }
        if opts.no_pipelining {
            cmd.arg("--no-pipelining");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the aiosmtpd sink");
        let stdout = child.stdout.take().expect("sink stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the sink's READY line");
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the sink did not start: {line:?}"));
        Sink {
            child,
            port,
            maildir,
        }
    }

    /// Kills the server with SIGKILL (no goodbye to its clients, nothing flushed) and reaps it;
    /// what it stored stays in [`Sink::maildir`]. A new sink on the same `port` stands in for
    /// the restarted server.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the sink");
        self.child.wait().expect("reap the sink");
    }

    /// How many messages have been accepted so far.
    pub fn count(&self) -> usize {
        std::fs::read_dir(&self.maildir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Every accepted message, in order of arrival.
    pub fn messages(&self) -> Vec<Received> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.maildir)
            .expect("read maildir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|p| {
                let env: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(p.with_extension("json")).expect("read envelope"),
                )
                .expect("envelope JSON");
                Received {
                    mail_from: env["mail_from"].as_str().unwrap_or_default().to_owned(),
                    rcpt_tos: env["rcpt_tos"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                    raw: std::fs::read(&p).expect("read message"),
                    pipelined: env["pipelined"].as_bool().unwrap_or(false),
                }
            })
            .collect()
    }

    /// Polls until at least `n` messages arrived (or panics after `timeout`).
    pub fn wait_for(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.arrived(n, deadline, timeout) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Sink::wait_for`] for async tests whose runtime must keep running meanwhile.
    pub async fn wait_for_async(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.arrived(n, deadline, timeout) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether `n` messages are in; panics once `deadline` has passed without them.
    fn arrived(&self, n: usize, deadline: Instant, timeout: Duration) -> bool {
        let count = self.count();
        assert!(
            count >= n || Instant::now() < deadline,
            "the sink received {count} of {n} messages within {timeout:?}"
        );
        count >= n
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A loopback port nothing listens on (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// A `[relay]` config for tests: SQLite (or `state_url`) state, the given routes and extra lines.
///
/// A `[server]` table at the end of `relay_extra` goes into the file's one `[server]` section
/// (beside its `api_token`), for relay settings read from there (`public_url`).
pub fn relay_config(dir: &Path, state_url: &str, relay_extra: &str) -> PathBuf {
    let (relay, server) = relay_extra
        .split_once("[server]\n")
        .unwrap_or((relay_extra, ""));
    ConfigFile::new(state_url, "sqlite://members.db")
        .server(&format!("api_token = \"test-token\"\n{server}"))
        .relay(relay)
        .write(dir)
}

/// A sink that requires STARTTLS and AUTH as `user`/`pass` (with `extra` options), and the
/// `[relay.smtp]` lines for it.
pub fn smarthost(
    dir: &Path,
    certs: &Certs,
    (user, pass): (&str, &str),
    extra: SinkOptions,
) -> (Sink, String) {
    let opts = SinkOptions {
        starttls: true,
        auth: Some((user.into(), pass.into())),
        ..extra
    };
    let sink = Sink::start(dir, Some(certs), &opts);
    let section = smtp_section(sink.port, "starttls", Some(certs), Some((user, pass)));
    (sink, section)
}

/// The `[relay.smtp]` lines for `sink`.
pub fn smtp_section(
    sink_port: u16,
    tls: &str,
    certs: Option<&Certs>,
    auth: Option<(&str, &str)>,
) -> String {
    let mut s = format!(
        "[relay.smtp]\nhost = \"127.0.0.1\"\nport = {sink_port}\ntls = \"{tls}\"\ntimeout_secs = 10\n"
    );
    if let Some(c) = certs {
        s.push_str(&format!("ca_file = \"{}\"\n", c.ca.display()));
    }
    if let Some((u, p)) = auth {
        s.push_str(&format!("username = \"{u}\"\npassword = \"{p}\"\n"));
    }
    s
}

/// [`relay_config`] in `dir`, loaded, with its state DB opened and migrated.
pub async fn relay(dir: &Path, state_url: &str, relay_extra: &str) -> RelayParts {
    RelayParts::open(&relay_config(dir, state_url, relay_extra)).await
}

/// Writes the shell script `body` (after `#!/bin/sh`) to `path`, executable: a stand-in
/// `sendmail` for the relay's sendmail route.
pub fn stand_in(path: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}")).expect("write the stand-in");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .expect("make the stand-in executable");
    path.to_owned()
}

/// Whether dkimpy (and PyNaCl, for Ed25519) can be imported; panics under CI when they cannot.
pub fn dkimpy_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import dkim, nacl"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if in_ci() {
            panic!("dkimpy is not installed and CI=true (python3 -m pip install dkimpy pynacl)");
        }
        eprintln!(
            "SKIPPED: dkimpy is not installed here (python3 -m pip install dkimpy pynacl); CI=true makes this a failure"
        );
    }
    ok
}

/// dkimpy's verdict on `raw` (a message as received) against the TXT `record`: `Ok(())` when the
/// signature verifies, else dkimpy's reason.
pub fn dkim_verify(raw: &[u8], record: &str) -> Result<(), String> {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), raw).expect("write the message");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp/dkim_verify.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(file.path())
        .arg(record)
        .output()
        .expect("run dkim_verify.py");
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && said == "pass" {
        Ok(())
    } else {
        Err(format!(
            "{said} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
