//! A private PostgreSQL server per test, from Debian's server binaries (`initdb`, `pg_ctl`; the
//! newest `/usr/lib/postgresql/*/bin`, `MAILBRIDGE_TEST_PG_BIN` or the PATH), in a temp dir, on a
//! spare loopback port: for tests that configure the server (TLS, in db_tls.rs) or stop, kill and
//! restart it (faults.rs), which the shared 127.0.0.1:5432 server is not theirs to do. Without
//! the binaries the test is skipped, a failure with `CI=true`. Stopped (immediate) on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::db::in_ci;

/// Reports a missing tool: a failure under CI, a skip (with a message) elsewhere.
pub fn missing(what: &str) {
    if in_ci() {
        panic!("{what}, and CI=true");
    }
    eprintln!("SKIPPED: {what}; CI=true makes this a failure");
}

/// The folder with `initdb` and `pg_ctl`: `MAILBRIDGE_TEST_PG_BIN`, the newest
/// `/usr/lib/postgresql/<version>/bin`, or the PATH.
pub fn pg_bin() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("MAILBRIDGE_TEST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let found = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    (found.status.success() && !path.is_empty())
        .then(|| Path::new(&path).parent().map(Path::to_path_buf))
        .flatten()
}

/// Runs `cmd` to the end; panics with its output unless it succeeded.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A PostgreSQL server of its own (superuser `postgres`, trust authentication on loopback and
/// its socket), stopped on drop.
pub struct PgServer {
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    root: bool,
}

impl PgServer {
    /// `initdb` and `pg_ctl start`; `prepare` runs first on the server's directory (to write the
    /// certificates its lines name) and returns lines for postgresql.conf. `None` when the
    /// binaries are missing (skipped, or a failure in CI).
    pub fn start(prepare: impl FnOnce(&Path) -> String) -> Option<PgServer> {
        let Some(bin) = pg_bin() else {
            missing("the PostgreSQL server binaries (initdb, pg_ctl) are not installed");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let extra_conf = prepare(dir.path());
        let server = PgServer {
            dir,
            bin,
            port: super::smtp::free_port(),
            root: is_root(),
        };
        let path = server.dir.path();
        server.chown();
        run(server
            .command("initdb")
            .args(["--auth=trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(path.join("data")));
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1,127.0.0.2'\nunix_socket_directories = '{d}'\n\
             fsync = off\nmax_connections = 40\n{extra_conf}\n",
            port = server.port,
            d = path.display(),
        );
        let mut pg_conf = std::fs::read_to_string(path.join("data/postgresql.conf"))
            .expect("read postgresql.conf");
        pg_conf.push_str(&conf);
        std::fs::write(path.join("data/postgresql.conf"), pg_conf).expect("write postgresql.conf");
        std::fs::write(
            path.join("data/pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.0/8 trust\n",
        )
        .expect("write pg_hba.conf");
        server.chown();
        server.pg_ctl_start();
        Some(server)
    }

    /// A server program from the binaries' folder, run as `postgres` when the test is root
    /// (PostgreSQL refuses to run as root).
    pub fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn chown(&self) {
        if self.root {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(self.dir.path()));
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A URL to `database` on this server, through `host`, with `query`.
    pub fn url(&self, host: &str, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres:not-a-secret-pw@{host}:{}/{database}?{query}",
            self.port
        )
    }

    /// `pg_ctl start`, waiting until the server accepts connections.
    pub fn pg_ctl_start(&self) {
        run(self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(self.path("data"))
            .arg("-l")
            .arg(self.path("server.log"))
            .arg("start"));
    }

    /// `pg_ctl stop -m fast`: sessions are ended, transactions in flight rolled back.
    pub fn stop_fast(&self) {
        run(self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-m", "fast", "-D"])
            .arg(self.path("data"))
            .arg("stop"));
    }

    /// SIGKILL to the postmaster (its pid from `postmaster.pid`), then waits until nothing
    /// answers on the port: the children notice their parent is gone and exit.
    pub fn kill_postmaster(&self) {
        let pid =
            std::fs::read_to_string(self.path("data/postmaster.pid")).expect("read postmaster.pid");
        let pid = pid.lines().next().unwrap_or_default().trim().to_owned();
        run(Command::new("kill").args(["-KILL", &pid]));
        let deadline = Instant::now() + Duration::from_secs(30);
        // The shared memory the old children hold keeps a new postmaster out until they are gone.
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            || Path::new(&format!("/proc/{pid}")).exists()
        {
            assert!(
                Instant::now() < deadline,
                "the killed postmaster {pid} still answers"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .output();
    }
}
