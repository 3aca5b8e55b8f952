//! The `mailbridge` binary as users and scripts run it: exit codes, messages, `--json`, and the
//! promise that a dry run writes nothing anywhere.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use mailbridge::config::DbUrl;
use mailbridge::demo::sample;
use support::db;

fn run(config: &Path, args: &[&str]) -> Output {
    Command::new(db::binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .env("MB_TEST_MC_KEY", "0123456789abcdef-us9")
        .env("MAILBRIDGE_LOG", "warn")
        .output()
        .expect("run mailbridge")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `mailbridge` with `args`, which must exit with `code`; its stdout and stderr.
fn run_exits(config: &Path, args: &[&str], code: i32) -> (String, String) {
    let out = run(config, args);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    (stdout, stderr)
}

async fn sqlite_setup(n: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    sample::create_member_db(
        &DbUrl::parse("sqlite://members.db", dir.path()).unwrap(),
        n,
        9,
    )
    .await
    .unwrap();
    let cfg = db::write_config(dir.path(), "sqlite://state.db", "sqlite://members.db");
    (dir, cfg)
}

fn digest(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[tokio::test]
async fn dry_run_json_reports_the_plan_and_writes_nothing() {
    let (dir, cfg) = sqlite_setup(400).await;
    let out = run(&cfg, &["migrate"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let again = run(&cfg, &["migrate"]);
    assert!(
        text(&again).0.contains("0 migration(s) applied"),
        "{:?}",
        text(&again)
    );

    // Checkpoint the WAL so the files are complete before we fingerprint them.
    for f in ["state.db", "members.db"] {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join(f).display()))
            .await
            .unwrap();
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let files: Vec<_> = ["state.db", "members.db"]
        .iter()
        .map(|f| dir.path().join(f))
        .collect();
    let before: Vec<_> = files.iter().map(|f| digest(f)).collect();

    let (stdout, _) = run_exits(&cfg, &["sync", "--dry-run", "--json"], 0);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON report");
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["audience"], "newsletter");
    assert_eq!(report["provider"], "mailchimp");
    assert_eq!(report["members_read"], 400);
    assert!(report["created"].as_u64().unwrap() > 100);
    for key in [
        "run_id",
        "started_at",
        "finished_at",
        "updated",
        "archived",
        "unchanged",
        "skipped_invalid",
        "failed",
        "unsubscribes_pulled",
        "bounces_pulled",
        "errors",
    ] {
        assert!(report.get(key).is_some(), "report lacks {key}");
    }
    assert_eq!(report["api_calls"]["write"], 0);
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(
        skipped.len() as u64,
        report["skipped_invalid"].as_u64().unwrap()
    );
    assert!(
        skipped
            .iter()
            .all(|s| s["member_key"].is_string() && s["code"].is_string())
    );

    let after: Vec<_> = files.iter().map(|f| digest(f)).collect();
    assert_eq!(
        before, after,
        "a dry run must leave both databases byte-identical"
    );

    let table = run(&cfg, &["sync", "--dry-run", "--audience", "newsletter"]);
    let (stdout, _) = text(&table);
    assert!(
        stdout.contains("dry run, nothing was written") && stdout.contains("skipped (invalid)"),
        "{stdout}"
    );
}

#[tokio::test]
async fn dry_run_on_postgres_state_writes_no_row() {
    let Some(db) = db::pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    sample::create_member_db(
        &DbUrl::parse("sqlite://members.db", dir.path()).unwrap(),
        100,
        9,
    )
    .await
    .unwrap();
    let cfg = db::write_config(dir.path(), &db.url, "sqlite://members.db");
    assert!(run(&cfg, &["migrate"]).status.success());
    let out = run(&cfg, &["sync", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    for table in [
        "contacts",
        "sync_runs",
        "sync_errors",
        "cursors",
        "audiences",
    ] {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(n, 0, "dry run wrote to {table}");
    }
    pool.close().await;
}

#[tokio::test]
async fn dry_run_before_migrate_says_what_to_do() {
    let (_dir, cfg) = sqlite_setup(5).await;
    let out = run_exits(&cfg, &["sync", "--dry-run"], 1);
    assert!(out.1.contains("mailbridge migrate"), "{out:?}");
}

#[tokio::test]
async fn bad_config_exits_2_naming_file_line_and_key() {
    let (dir, cfg) = sqlite_setup(5).await;
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        good.replace(
            "list_id = \"list1\"",
            "list_id = \"list1\"\nlistid = \"typo\"",
        ),
    )
    .unwrap();
    let (_, stderr) = run_exits(&cfg, &["sync", "--dry-run"], 2);
    assert!(
        stderr.contains("mailbridge.toml")
            && stderr.contains("line 15")
            && stderr.contains("listid"),
        "{stderr}"
    );

    std::fs::write(
        &cfg,
        good.replace("${MB_TEST_MC_KEY}", "${MB_UNSET_VARIABLE_XYZ}"),
    )
    .unwrap();
    let (_, stderr) = run_exits(&cfg, &["migrate"], 2);
    assert!(
        stderr.contains("MB_UNSET_VARIABLE_XYZ") && stderr.contains("providers.mailchimp.api_key"),
        "{stderr}"
    );
    drop(dir);
}

#[tokio::test]
async fn bad_mapping_exits_2_and_unknown_audience_exits_2() {
    let (dir, cfg) = sqlite_setup(5).await;
    assert!(run(&cfg, &["migrate"]).status.success());
    let mapping = dir.path().join("bad.toml");
    std::fs::write(
        &mapping,
        std::fs::read_to_string(db::shipped_mapping())
            .unwrap()
            .replace("type = \"text\"", "type = \"txt\""),
    )
    .unwrap();
    let c = std::fs::read_to_string(&cfg).unwrap();
    let shipped = db::shipped_mapping().display().to_string();
    std::fs::write(&cfg, c.replace(&shipped, "bad.toml")).unwrap();
    let (_, stderr) = run_exits(&cfg, &["sync", "--dry-run"], 2);
    assert!(
        stderr.contains("bad.toml")
            && stderr.contains("merge_fields[0].type")
            && stderr.contains("txt"),
        "{stderr}"
    );

    std::fs::write(&cfg, c).unwrap();
    let out = run_exits(&cfg, &["sync", "--dry-run", "--audience", "juniors"], 2);
    assert!(out.1.contains("juniors"), "{out:?}");
}

#[tokio::test]
async fn unreachable_databases_exit_1_naming_which_and_the_host_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = db::write_config(
        dir.path(),
        "sqlite://state.db",
        "postgres://club:hunter2secret@127.0.0.1:1/club",
    );
    assert!(run(&cfg, &["migrate"]).status.success());
    let (stdout, stderr) = run_exits(&cfg, &["sync", "--dry-run"], 1);
    assert!(
        stderr.contains("member database") && stderr.contains("127.0.0.1:1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2secret") && !stdout.contains("hunter2secret"),
        "{stderr}"
    );

    let cfg = db::write_config(
        dir.path(),
        "postgres://state:sekretpw@127.0.0.1:2/state",
        "sqlite://members.db",
    );
    let (_, stderr) = run_exits(&cfg, &["migrate"], 1);
    assert!(
        stderr.contains("state database") && stderr.contains("127.0.0.1:2"),
        "{stderr}"
    );
    assert!(!stderr.contains("sekretpw"), "{stderr}");
}

#[test]
fn demo_runs_without_credentials_and_prints_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(db::binary())
        .args(["demo", "--members", "200", "--dir"])
        .arg(dir.path())
        .env("MAILBRIDGE_LOG", "warn")
        .env_remove("MAILBRIDGE_CONFIG")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("200 members")
            && stdout.contains("create")
            && stdout.contains("skipped (invalid)"),
        "{stdout}"
    );
    assert!(dir.path().join("members.db").exists() && dir.path().join("mailbridge.db").exists());
    // Constant Contact: synced by import, then an opt-out and a hard bounce polled back, written
    // to the member DB and (the bounce) suppressed.
    assert!(
        stdout.contains("1 opt-out(s) and 1 bounce(s) pulled")
            && stdout.contains("\"hard_bounce\", \"constant_contact:"),
        "{stdout}"
    );
    let created = stdout
        .lines()
        .skip_while(|l| !l.contains("audience cc-newsletter"))
        .find(|l| l.trim_start().starts_with("created "))
        .unwrap_or_default();
    assert!(
        !created.starts_with("   created 0,") && created.contains(" 0 failed"),
        "{stdout}"
    );
    // The admin pages: how to reach them, and a password that the demo config holds the hash of.
    let password = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("and log in with the password "))
        .expect("the admin password line")
        .to_owned();
    assert!(stdout.contains("/admin"), "{stdout}");
    let config = mailbridge::config::Config::load(&dir.path().join("mailbridge.toml")).unwrap();
    assert!(mailbridge::config::verify_admin_password(
        &password,
        config.admin.password_hash.as_ref().unwrap()
    ));
}

/// `demo --serve` keeps the admin pages up with the demo's data: log in with the printed
/// password, see the demo's runs, then stop it with SIGTERM (exit 0).
#[tokio::test]
async fn demo_serve_keeps_the_admin_pages_running() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(db::binary())
        .args(["demo", "--members", "50", "--serve", "--dir"])
        .arg(dir.path())
        .env("MAILBRIDGE_LOG", "warn")
        .env_remove("MAILBRIDGE_CONFIG")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut password) = (None, None);
    while let Some(line) =
        tokio::time::timeout(std::time::Duration::from_secs(120), lines.next_line())
            .await
            .expect("the demo printed nothing for two minutes")
            .unwrap()
    {
        if let Some(u) = line.strip_prefix("The admin pages are served at ") {
            url = Some(u.trim().trim_end_matches("/admin").to_owned());
        }
        if let Some(p) = line.trim().strip_prefix("log in with the password ") {
            password = Some(p.to_owned());
            break;
        }
    }
    let (base, password) = (url.expect("the admin URL"), password.expect("the password"));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http
        .get(format!("{base}/admin/login"))
        .send()
        .await
        .unwrap();
    let cookie = form.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = form.text().await.unwrap();
    let marker = "name=\"csrf\" value=\"";
    let at = html.find(marker).unwrap() + marker.len();
    let token = &html[at..at + html[at..].find('"').unwrap()];
    let login = http
        .post(format!("{base}/admin/login"))
        .header("cookie", cookie)
        .form(&[
            ("csrf", token),
            ("next", "/admin/runs"),
            ("password", password.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), reqwest::StatusCode::SEE_OTHER);
    let session = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("mailbridge_admin="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let runs = http
        .get(format!("{base}/admin/runs"))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(runs.status(), reqwest::StatusCode::OK);
    let runs = runs.text().await.unwrap();
    assert!(
        runs.contains("status-succeeded") && runs.contains("cc-newsletter"),
        "{runs}"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(db::binary())
        .args(["sync", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn simulate_serves_the_mailchimp_api_until_stopped() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(db::binary())
        .args(["simulate", "--bind", &format!("127.0.0.1:{port}")])
        .env("MAILBRIDGE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/3.0/ping");
    let mut answer = None;
    for _ in 0..200 {
        if let Ok(r) = client.get(&url).basic_auth("any", Some("key")).send().await {
            answer = Some(r.text().await.unwrap());
            break;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        answer
            .expect("the simulator never answered")
            .contains("Chimpy")
    );
}

/// A Constant Contact audience whose account was never connected: the sync stops before it
/// writes anything, and says which command connects it (exit 1); `auth constant-contact` without
/// the provider's section is a usage error naming the section (exit 2).
#[tokio::test]
async fn a_constant_contact_audience_before_auth_names_the_command_that_connects_it() {
    let (_dir, cfg) = sqlite_setup(10).await;
    let text = std::fs::read_to_string(&cfg).unwrap();
    let (_, stderr) = run_exits(&cfg, &["auth", "constant-contact"], 2);
    assert!(
        stderr.contains("[providers.constant_contact] is missing"),
        "{stderr}"
    );
    let text = text.replace(
        "provider = \"mailchimp\"",
        "provider = \"constant_contact\"",
    );
    std::fs::write(
        &cfg,
        format!(
            "{text}\n[providers.constant_contact]\nclient_id = \"c\"\nbase_url = \"http://127.0.0.1:9/v3\"\nauth_url = \"http://127.0.0.1:9/oauth2/default/v1\"\n"
        ),
    )
    .unwrap();
    run_exits(&cfg, &["migrate"], 0);
    // The sample mapping gives the audience tags, which this version syncs only to Mailchimp.
    let (_, stderr) = run_exits(&cfg, &["sync"], 2);
    assert!(
        stderr.contains("`audiences.newsletter.tags`") && stderr.contains("Constant Contact"),
        "{stderr}"
    );
    let shipped = db::shipped_mapping();
    let mapping = std::fs::read_to_string(&shipped).unwrap();
    let untagged = mapping.replace(
        "[[audiences.newsletter.tags]]\nfrom_column = \"membership\"\nvalues = [\"full\", \"family\", \"junior\", \"lapsed\"]\n",
        "",
    );
    assert_ne!(mapping, untagged, "the sample mapping's tags");
    let own = cfg.with_file_name("untagged.toml");
    std::fs::write(&own, untagged).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let shipped = shipped.display().to_string();
    assert!(text.contains(&shipped), "{text}");
    std::fs::write(&cfg, text.replace(&shipped, &own.display().to_string())).unwrap();
    let (_, stderr) = run_exits(&cfg, &["sync"], 1);
    assert!(
        stderr.contains("mailbridge auth constant-contact"),
        "{stderr}"
    );
    let (_, stderr) = run_exits(
        &cfg,
        &["auth", "constant-contact", "--refresh-token", "abc"],
        2,
    );
    assert!(stderr.contains("read from stdin"), "{stderr}");
}

/// `bounce parse` needs no config: it runs with a config path that does not exist.
#[test]
fn bounce_parse_prints_one_json_line_per_file_and_names_an_unreadable_one() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bounce-corpus/emails");
    let dsn = corpus.join("rfc3464-03.eml");
    let arf = corpus.join("arf-14.eml");
    let missing = corpus.join("no-such-file.eml");
    let nowhere = Path::new("/nonexistent/mailbridge.toml");
    let (stdout, stderr) = run_exits(
        nowhere,
        &[
            "bounce",
            "parse",
            "--json",
            dsn.to_str().unwrap(),
            missing.to_str().unwrap(),
            arf.to_str().unwrap(),
        ],
        1,
    );
    assert!(stderr.contains("no-such-file.eml"), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0]["file"]
            .as_str()
            .unwrap()
            .ends_with("rfc3464-03.eml")
    );
    assert_eq!(lines[0]["kind"], "dsn");
    let r = &lines[0]["recipients"][0];
    for key in [
        "email",
        "action",
        "status",
        "reply_code",
        "reason",
        "hard",
        "diagnostic",
    ] {
        assert!(r.get(key).is_some(), "{key} missing: {r}");
    }
    assert_eq!(lines[1]["kind"], "arf");
    assert_eq!(lines[1]["feedback_type"], "abuse");
    assert_eq!(lines[1]["recipients"][0]["email"], "kijitora@y.example.com");
    assert_eq!(lines[1]["recipients"][0]["hard"], serde_json::Value::Null);

    // Readable lines, exit 0 when every file was read.
    let (stdout, _) = run_exits(nowhere, &["bounce", "parse", arf.to_str().unwrap()], 0);
    assert!(
        stdout.contains("arf kijitora@y.example.com feedback - feedback=abuse"),
        "{stdout}"
    );
}
