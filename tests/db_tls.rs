//! TLS to the databases, against a PostgreSQL server this test starts itself on a spare port, with
//! a CA it generates (openssl) and a server certificate for `localhost` and 127.0.0.1: the state
//! DB and the member DB connect with `verify-full`; a wrong CA, a host name the certificate does
//! not have, and `require` against a server without TLS are refused with errors that name the
//! database and the reason; `sslmode=disable` still works. MySQL/MariaDB: `ssl-mode=REQUIRED`
//! against the machine's MariaDB (built without TLS here) is refused, never plaintext.
//!
//! Needs the PostgreSQL server binaries (`initdb`, `pg_ctl`; `/usr/lib/postgresql/*/bin` or
//! `MAILBRIDGE_TEST_PG_BIN`) and the openssl CLI: skipped without them, a failure with CI=true.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use futures::TryStreamExt;
use mailbridge::config::{Config, DbUrl};
use mailbridge::source::{MemberSource, Value};
use mailbridge::store::OpenMode;
use sqlx::Connection;
use support::{app, db};

use support::pg_server::{PgServer, missing, run};
/// A CA, a server certificate it signed for `localhost` and 127.0.0.1, and an unrelated CA.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(dir).args(args));
    for ca in ["ca", "other-ca"] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=mailbridge test {ca}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
}

/// Runs one statement on a PostgreSQL connection.
async fn exec(c: &mut sqlx::postgres::PgConnection, sql: &'static str) {
    sqlx::query(sql)
        .execute(c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A PostgreSQL server of its own ([`PgServer`]) with `ssl = on`, its certificates from
/// [`make_certificates`].
struct TlsServer(PgServer);

impl std::ops::Deref for TlsServer {
    type Target = PgServer;
    fn deref(&self) -> &PgServer {
        &self.0
    }
}

impl TlsServer {
    /// `None` when the binaries or the openssl CLI are missing (skipped, or a failure in CI).
    fn start() -> Option<TlsServer> {
        if Command::new("openssl").arg("version").output().is_err() {
            missing("the openssl CLI is not installed");
            return None;
        }
        let server = PgServer::start(|dir| {
            make_certificates(dir);
            run(Command::new("chmod").arg("600").arg(dir.join("server.key")));
            format!(
                "ssl = on\nssl_cert_file = '{0}/server.pem'\nssl_key_file = '{0}/server.key'\n",
                dir.display()
            )
        })?;
        Some(TlsServer(server))
    }

    /// A new plaintext connection to the `postgres` database as the superuser.
    async fn admin(&self) -> sqlx::postgres::PgConnection {
        sqlx::postgres::PgConnection::connect(&self.url("127.0.0.1", "postgres", "sslmode=disable"))
            .await
            .expect("connect to the test server without TLS")
    }

    /// Turns TLS off (a reload; connections made from then on are plaintext-only).
    async fn disable_tls(&self) {
        let mut c = self.admin().await;
        exec(&mut c, "ALTER SYSTEM SET ssl = off").await;
        exec(&mut c, "SELECT pg_reload_conf()").await;
        // The reload is asynchronous: wait until new connections see it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let mut fresh = self.admin().await;
            let ssl: String = sqlx::query_scalar("SHOW ssl")
                .fetch_one(&mut fresh)
                .await
                .unwrap();
            if ssl == "off" {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ssl is still {ssl} after the reload"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

fn db_url(url: &str) -> DbUrl {
    DbUrl::parse(url, Path::new("/")).unwrap()
}

/// Why the state DB at `url` cannot be opened (it must not open).
async fn store_refusal(url: &str) -> String {
    match app::try_open_store(&db_url(url), OpenMode::ReadWrite).await {
        Ok(_) => panic!("the state DB at {url} opened"),
        Err(e) => e.to_string(),
    }
}

/// Why the member DB at `url` cannot be connected to (it must not connect).
async fn source_refusal(url: &str) -> mailbridge::source::SourceError {
    match app::try_member_source(&db_url(url), true).await {
        Ok(_) => panic!("the member DB at {url} connected"),
        Err(e) => e,
    }
}

/// Whether a connection to the member DB at `url` uses TLS (it must connect).
async fn source_tls(url: &str) -> Option<bool> {
    let source = app::try_member_source(&db_url(url), true).await.unwrap();
    let tls = source.tls_in_use().await.unwrap();
    source.close().await;
    tls
}

async fn members(source: &MemberSource) -> Vec<String> {
    source
        .stream("SELECT email FROM members ORDER BY id")
        .try_collect::<Vec<Vec<Value>>>()
        .await
        .unwrap()
        .into_iter()
        .map(|row| match &row[0] {
            Value::Text(t) => t.clone(),
            other => panic!("not text: {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn postgresql_over_tls_verifies_the_server_and_never_falls_back() {
    let Some(server) = TlsServer::start() else {
        return;
    };
    let ca = server.path("ca.pem");
    let other_ca = server.path("other-ca.pem");
    let verify_full = |host: &str, db: &str, ca: &Path| {
        server.url(
            host,
            db,
            &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
        )
    };

    // A member table in a database of its own.
    let mut admin =
        sqlx::postgres::PgConnection::connect(&verify_full("localhost", "postgres", &ca))
            .await
            .unwrap();
    exec(&mut admin, "CREATE DATABASE club").await;
    let mut club = sqlx::postgres::PgConnection::connect(&verify_full("localhost", "club", &ca))
        .await
        .unwrap();
    exec(
        &mut club,
        "CREATE TABLE members (id BIGINT PRIMARY KEY, email TEXT NOT NULL)",
    )
    .await;
    exec(
        &mut club,
        "INSERT INTO members VALUES (1, 'ann@example.org'), (2, 'bob@example.org')",
    )
    .await;

    // verify-full with the CA: the state DB migrates, over TLS, both by name and by IP address
    // (the certificate has both).
    for host in ["localhost", "127.0.0.1"] {
        let store = app::try_open_store(
            &db_url(&verify_full(host, "postgres", &ca)),
            OpenMode::ReadWrite,
        )
        .await
        .unwrap_or_else(|e| panic!("{host}: {}", mailbridge::error_chain(&e)));
        store.migrate().await.unwrap();
        store.ensure_migrated().await.unwrap();
        assert_eq!(store.tls_in_use().await.unwrap(), Some(true), "{host}");
        store.close().await;
    }
    // The member DB reads members over TLS.
    let source = app::try_member_source(&db_url(&verify_full("localhost", "club", &ca)), true)
        .await
        .unwrap();
    assert_eq!(source.tls_in_use().await.unwrap(), Some(true));
    assert_eq!(
        members(&source).await,
        vec!["ann@example.org", "bob@example.org"]
    );
    source.close().await;

    // A relative sslrootcert in the config file is taken from the config file's folder.
    let config_path = server.path("mailbridge.toml");
    std::fs::write(
        &config_path,
        format!(
            "[state]\nurl = \"{}\"\n[members]\nurl = \"{}\"\nmapping = \"{}\"\n",
            server.url(
                "localhost",
                "postgres",
                "sslmode=verify-full&sslrootcert=ca.pem"
            ),
            server.url(
                "localhost",
                "club",
                "sslmode=verify-full&sslrootcert=ca.pem"
            ),
            db::shipped_mapping().display()
        ),
    )
    .unwrap();
    let config = Config::load(&config_path).unwrap();
    let tls = config.state.url.tls().unwrap();
    assert_eq!(tls.root_cert.as_deref(), Some(ca.as_path()));
    let store = app::try_open_store(&config.state.url, OpenMode::ReadWrite)
        .await
        .unwrap();
    assert_eq!(store.tls_in_use().await.unwrap(), Some(true));
    store.close().await;
    let source = app::try_member_source(&config.members.url, true)
        .await
        .unwrap();
    assert_eq!(members(&source).await.len(), 2);
    source.close().await;

    // A CA that did not sign the server's certificate: refused, naming the database and why.
    let port = server.port;
    assert_eq!(
        store_refusal(&verify_full("localhost", "postgres", &other_ca)).await,
        format!(
            "cannot open the state database at localhost:{port}/postgres: the server's certificate is not trusted: it is not signed by the CA in sslrootcert ({})",
            other_ca.display()
        )
    );
    let err = source_refusal(&verify_full("localhost", "club", &other_ca)).await;
    let text = mailbridge::error_chain(&err);
    assert!(
        text.starts_with(&format!(
            "cannot connect to the member database at localhost:{port}/club: the server's certificate is not trusted: it is not signed by the CA in sslrootcert ({})",
            other_ca.display()
        )),
        "{text}"
    );
    assert!(!text.contains("not-a-secret-pw"), "{text}");
    // verify-ca checks the CA too.
    let err = source_refusal(&server.url(
        "localhost",
        "club",
        &format!("sslmode=verify-ca&sslrootcert={}", other_ca.display()),
    ))
    .await;
    assert!(err.to_string().contains("is not trusted"), "{err}");

    // A host name the certificate does not have (127.0.0.2 reaches the same server): refused by
    // verify-full, accepted by verify-ca (which checks the CA only).
    assert_eq!(
        store_refusal(&verify_full("127.0.0.2", "postgres", &ca)).await,
        format!(
            "cannot open the state database at 127.0.0.2:{port}/postgres: the server's certificate does not name the host `127.0.0.2` (it names localhost, 127.0.0.1; sslmode=verify-full checks the name)"
        )
    );
    let err = source_refusal(&verify_full("127.0.0.2", "club", &ca)).await;
    assert!(
        err.to_string().starts_with(&format!(
            "cannot connect to the member database at 127.0.0.2:{port}/club: the server's certificate does not name the host `127.0.0.2`"
        )),
        "{err}"
    );
    assert_eq!(
        source_tls(&server.url(
            "127.0.0.2",
            "club",
            &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
        ))
        .await,
        Some(true)
    );

    // The same server without TLS: `require` (and the verifying modes) fail rather than go
    // plaintext; `prefer` goes plaintext, as it says.
    drop(admin);
    drop(club);
    server.disable_tls().await;
    for query in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    ] {
        let mode = query.split('&').next().unwrap().to_owned();
        assert_eq!(
            store_refusal(&server.url("localhost", "postgres", &query)).await,
            format!(
                "cannot open the state database at localhost:{port}/postgres: the server does not support TLS, and {mode} does not fall back to plaintext"
            )
        );
        let err = source_refusal(&server.url("localhost", "club", &query)).await;
        assert_eq!(
            err.to_string(),
            format!(
                "cannot connect to the member database at localhost:{port}/club: the server does not support TLS, and {mode} does not fall back to plaintext"
            )
        );
    }
    assert_eq!(
        source_tls(&server.url("localhost", "club", "sslmode=prefer")).await,
        Some(false)
    );
}

/// `sslmode=disable` against the machine's PostgreSQL (which has TLS on): plaintext, works.
#[tokio::test]
async fn sslmode_disable_still_connects_in_plaintext() {
    let Some(db) = db::pg_database().await else {
        return;
    };
    let url = format!("{}?sslmode=disable", db.url);
    let store = app::try_open_store(&db_url(&url), OpenMode::ReadWrite)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.tls_in_use().await.unwrap(), Some(false));
    store.close().await;
    assert_eq!(source_tls(&url).await, Some(false));
}

/// MySQL/MariaDB: `ssl-mode=REQUIRED` against a server without TLS is refused (the machine's
/// MariaDB has none); DISABLED connects. Against a server with TLS, REQUIRED connects over it.
#[tokio::test]
async fn mysql_ssl_mode_required_never_goes_plaintext() {
    let Some(db) = db::mysql_database().await else {
        return;
    };
    let plain = app::try_member_source(&db_url(&format!("{}?ssl-mode=DISABLED", db.url)), true)
        .await
        .unwrap();
    assert_eq!(plain.tls_in_use().await.unwrap(), Some(false));
    let have_ssl: Option<(String, String)> =
        sqlx::query_as::<_, (String, String)>("SHOW VARIABLES LIKE 'have_ssl'")
            .fetch_optional(&sqlx::MySqlPool::connect(&db.url).await.unwrap())
            .await
            .unwrap();
    plain.close().await;
    let server_has_tls = have_ssl.is_some_and(|(_, v)| v == "YES");
    let required =
        app::try_member_source(&db_url(&format!("{}?ssl-mode=REQUIRED", db.url)), true).await;
    if server_has_tls {
        let source = required.unwrap();
        assert_eq!(source.tls_in_use().await.unwrap(), Some(true));
        source.close().await;
    } else {
        let err = required.unwrap_err();
        let location = DbUrl::parse(&db.url, Path::new("/")).unwrap().location();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot connect to the member database at {location}: the server does not support TLS, and ssl-mode=REQUIRED does not fall back to plaintext"
            )
        );
    }
}
