//! A real DNS server per test: Debian's `dnsmasq` (installed by `.ci/run`) on a free loopback
//! port, answering authoritatively from a [`Zone`] written to its own config file (a config file,
//! not command-line options: only the file's parser reads quoted TXT strings, so a record can be
//! split into several strings of at most 255 bytes). Names under `.test` and the reverse zones
//! (and `.example`) that no record names get NXDOMAIN, not REFUSED. Ready once it answers a query; killed on drop.
//!
//! Outside CI, a test whose dnsmasq cannot start (not installed) skips with a message; with
//! `CI=true` it fails.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::in_ci;

/// The records a server answers with.
#[derive(Default, Clone)]
pub struct Zone {
    lines: String,
}

fn quoted(chunk: &[u8]) -> String {
    let mut s = String::from("\"");
    for &b in chunk {
        if b == b'"' || b == b'\\' {
            s.push('\\');
        }
        s.push(b as char);
    }
    s.push('"');
    s
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    /// A TXT record, split into strings of at most 255 bytes as a zone file would be.
    pub fn txt(mut self, name: &str, text: &str) -> Zone {
        let strings: Vec<String> = text.as_bytes().chunks(255).map(quoted).collect();
        let _ = writeln!(self.lines, "txt-record={name},{}", strings.join(","));
        self
    }

    pub fn mx(mut self, name: &str, exchange: &str, preference: u16) -> Zone {
        let _ = writeln!(self.lines, "mx-host={name},{exchange},{preference}");
        self
    }

    /// An A or AAAA record (dnsmasq adds the matching PTR record).
    pub fn host(mut self, name: &str, ip: &str) -> Zone {
        let _ = writeln!(self.lines, "host-record={name},{ip}");
        self
    }

    /// A PTR record for `ip` only (no forward record).
    pub fn ptr(mut self, ip: &str, name: &str) -> Zone {
        let ip: IpAddr = ip.parse().unwrap();
        let reverse = match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
            }
            IpAddr::V6(_) => panic!("the harness writes IPv4 PTR records only"),
        };
        let _ = writeln!(self.lines, "ptr-record={reverse},{name}");
        self
    }
}

pub struct DnsServer {
    _dir: tempfile::TempDir,
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unavailable(why: &str) -> Option<DnsServer> {
    if in_ci() {
        panic!("dnsmasq cannot start and CI=true: {why}");
    }
    eprintln!("SKIPPED: dnsmasq cannot start here ({why}); CI=true makes this a failure");
    None
}

fn dnsmasq_binary() -> Option<PathBuf> {
    ["/usr/sbin/dnsmasq", "/usr/local/sbin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A port free for both UDP and TCP on loopback, as far as can be told.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A DNS query for `ready.probe.test` TXT (id 0x4d42), by hand: 12-byte header, one question.
fn probe_query() -> Vec<u8> {
    let mut q = vec![0x4d, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["ready", "probe", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 16, 0, 1]);
    q
}

impl DnsServer {
    /// A running server answering `zone`; `None` when dnsmasq cannot start here outside CI.
    pub fn start(zone: &Zone) -> Option<DnsServer> {
        let Some(binary) = dnsmasq_binary() else {
            return unavailable("no dnsmasq binary (apt-get install dnsmasq)");
        };
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("dnsmasq.conf");
        let zone = zone.clone().txt("ready.probe.test", "ready");
        std::fs::write(&conf, &zone.lines).unwrap();
        let port = free_port();
        let mut cmd = Command::new(&binary);
        cmd.arg(format!("--conf-file={}", conf.display()))
            .args([
                "--no-resolv",
                "--no-hosts",
                "--keep-in-foreground",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file",
                "--local=/test/",
                "--local=/example/",
                "--local=/in-addr.arpa/",
                "--local=/ip6.arpa/",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // As root dnsmasq drops to an unprivileged user; its own user may not exist here.
        if std::fs::metadata(dir.path()).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        }) {
            cmd.arg("--user=root");
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return unavailable(&format!("{}: {e}", binary.display())),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut server = DnsServer {
            _dir: dir,
            child,
            addr,
        };
        // Ready when it answers the probe: each try waits up to 100 ms for the answer itself.
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 512];
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = server.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return unavailable(&format!("dnsmasq exited ({status}): {err}"));
            }
            socket.send_to(&probe_query(), addr).unwrap();
            if let Ok((n, _)) = socket.recv_from(&mut buf) {
                // Our id, a response, NOERROR, one answer or more.
                if n > 12 && buf[..2] == [0x4d, 0x42] && buf[3] & 0x0f == 0 && buf[7] > 0 {
                    return Some(server);
                }
            }
            assert!(Instant::now() < until, "dnsmasq did not answer within 10 s");
        }
    }
}
