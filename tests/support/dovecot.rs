//! A real Dovecot (Debian package `dovecot-imapd`) per test, on free loopback ports, from a
//! config generated in a temp dir: its own base_dir, state_dir, log, a passwd-file with one user,
//! maildir in the temp dir, and a certificate made for this run by the openssl CLI (a CA of its
//! own signing a certificate for `localhost`). Run in the foreground and killed on drop.
//!
//! Outside CI, a test whose Dovecot cannot start (not installed) skips with a message; with
//! `CI=true` it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_imap::Session;
use futures::TryStreamExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::in_ci;

pub const USER: &str = "bounces";
pub const PASSWORD: &str = "imap-s3cret-Pa55";

pub struct Dovecot {
    pub dir: tempfile::TempDir,
    child: Child,
    /// Port of implicit TLS (IMAPS).
    pub tls_port: u16,
    /// Port of the plain listener (STARTTLS).
    pub starttls_port: u16,
    /// The CA that signed the server's certificate (PEM).
    pub ca_file: PathBuf,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Options of a test's server.
#[derive(Default, Clone)]
pub struct Options {
    /// `imap_capability` after login (none: Dovecot's own, with MOVE and UIDPLUS).
    pub capability: Option<String>,
}

fn dovecot_binary() -> Option<PathBuf> {
    ["/usr/sbin/dovecot", "/usr/local/sbin/dovecot"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn unavailable(why: &str) -> Option<Dovecot> {
    if in_ci() {
        panic!("Dovecot cannot start and CI=true: {why}");
    }
    eprintln!("SKIPPED: Dovecot cannot start here ({why}); CI=true makes this a failure");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn openssl(dir: &Path, args: &[&str]) {
    super::run_ok(
        Command::new("openssl").current_dir(dir).args(args),
        &format!("openssl {}", args.join(" ")),
    );
}

/// A CA and a server certificate for `localhost` / 127.0.0.1 signed by it, in `dir`.
pub fn make_certs(dir: &Path, prefix: &str) {
    let ca_key = format!("{prefix}ca.key");
    let ca = format!("{prefix}ca.pem");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            "/CN=mailbridge test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// The uid, gid and user name Dovecot's processes run as: as root, `nobody` (Dovecot runs no
/// mail process as root); otherwise the current user.
fn run_as(dir: &Path) -> (u32, u32, String) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).unwrap();
    if meta.uid() == 0 {
        return (65534, 65534, "nobody".into());
    }
    let name = Command::new("id").arg("-un").output().unwrap();
    (
        meta.uid(),
        meta.gid(),
        String::from_utf8_lossy(&name.stdout).trim().to_owned(),
    )
}

impl Dovecot {
    /// A running server with user [`USER`] / [`PASSWORD`], folders INBOX and `Done`; `None`
    /// when Dovecot cannot start here outside CI.
    pub async fn start(options: Options) -> Option<Dovecot> {
        let Some(binary) = dovecot_binary() else {
            return unavailable("no dovecot binary (apt-get install dovecot-imapd)");
        };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (uid, gid, user) = run_as(root);
        for sub in ["run", "state", "mail"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        if uid != 0 {
            let _ = Command::new("chown")
                .arg(format!("{uid}:{gid}"))
                .arg(root.join("mail"))
                .status();
        }
        make_certs(root, "");
        let group = Command::new("id")
            .args(["-gn", &user])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        std::fs::write(
            root.join("passwd"),
            format!(
                "{USER}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{}\n",
                root.join("mail").display()
            ),
        )
        .unwrap();
        let tls_port = free_port();
        let starttls_port = free_port();
        let r = root.display();
        let capability = options
            .capability
            .map(|c| format!("protocol imap {{\n  imap_capability = {c}\n}}\n"))
            .unwrap_or_default();
        std::fs::write(
            root.join("dovecot.conf"),
            format!(
                "base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
instance_name = mbtest-{tls_port}
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{r}/server.pem
ssl_key = <{r}/server.key
auth_mechanisms = plain
auth_failure_delay = 0
default_login_user = {user}
default_internal_user = {user}
default_internal_group = {group}
first_valid_uid = {uid}
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {r}/passwd
}}
userdb {{
  driver = passwd-file
  args = {r}/passwd
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {starttls_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
namespace inbox {{
  inbox = yes
  mailbox Done {{
    auto = create
  }}
}}
{capability}"
            ),
        )
        .unwrap();
        let child = match Command::new(&binary)
            .arg("-F")
            .arg("-c")
            .arg(root.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return unavailable(&format!("{}: {e}", binary.display())),
        };
        let mut server = Dovecot {
            ca_file: root.join("ca.pem"),
            dir,
            child,
            tls_port,
            starttls_port,
        };
        // Ready when both listeners accept (Dovecot binds them before it forks its workers).
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(server.dir.path().join("dovecot.log"))
                    .unwrap_or_default();
                let mut err = String::new();
                if let Some(mut e) = server.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return unavailable(&format!("dovecot exited ({status}): {err}{log}"));
            }
            let up = TcpStream::connect(("127.0.0.1", tls_port)).await.is_ok()
                && TcpStream::connect(("127.0.0.1", starttls_port))
                    .await
                    .is_ok();
            if up {
                break;
            }
            assert!(Instant::now() < until, "Dovecot did not listen within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(server)
    }

    /// The `[bounces.imap]` lines for this server (implicit TLS, its CA trusted), then `extra`.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "\n[bounces.imap]\nhost = \"localhost\"\nport = {}\ntls = \"tls\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\nca_file = \"{}\"\ntimeout_secs = 10\n{extra}",
            self.tls_port,
            self.ca_file.display()
        )
    }

    /// A logged-in session of the test user (implicit TLS), for delivering and looking.
    pub async fn session(&self) -> Session<TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&self.ca_file).unwrap();
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(("127.0.0.1", self.tls_port))
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let mut client = async_imap::Client::new(tls);
        client.read_response().await.unwrap();
        client
            .login(USER, PASSWORD)
            .await
            .map_err(|(e, _)| e)
            .unwrap()
    }

    /// Delivers `raw` to `folder` by IMAP APPEND.
    pub async fn deliver(&self, folder: &str, raw: &[u8]) {
        let mut s = self.session().await;
        s.append(folder, None, None, raw).await.unwrap();
        s.logout().await.unwrap();
    }

    /// How many messages `folder` holds.
    pub async fn count(&self, folder: &str) -> u32 {
        let mut s = self.session().await;
        let status = s.status(folder, "(MESSAGES)").await.unwrap();
        s.logout().await.unwrap();
        status.exists
    }

    /// The raw messages of `folder`, by UID.
    pub async fn messages(&self, folder: &str) -> Vec<Vec<u8>> {
        let mut s = self.session().await;
        s.select(folder).await.unwrap();
        let fetched: Vec<_> = s
            .uid_fetch("1:*", "BODY.PEEK[]")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let out = fetched
            .iter()
            .filter_map(|f| f.body().map(<[u8]>::to_vec))
            .collect();
        s.logout().await.unwrap();
        out
    }

    /// Dovecot's log (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}
