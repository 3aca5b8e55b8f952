//! Quota alerts end to end: the relay delivers members' mail through a real SMTP server (aiosmtpd)
//! on a manual clock, and the alert mails to `[alerts] to` arrive there too, once per threshold
//! and period: crossing 80% mails once, more sends in the band mail nothing (also from a second
//! store and worker on the same state DB, as after a restart), 95% mails again, a new month
//! alerts again; the hourly limit alerts per UTC hour; processes racing for one alert send one;
//! an alert goes through a route without a monthly quota when there is one. On SQLite and
//! PostgreSQL state.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use mailbridge::app::App;
use mailbridge::clock::{Clock, ManualClock};
use mailbridge::relay::alerts::{Alerter, LimitKind, Usage};
use support::app::{RelayParts, load_config};
use support::db as common;
use support::relay::{Env, counter, run_closing};
use support::smtp::{self, Received, Sink, SinkOptions};

const OPS: &str = "ops@club.example";

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// The SMTP sink, or `None` (test skipped) when aiosmtpd is missing outside CI.
fn sink(dir: &std::path::Path) -> Option<Sink> {
    if !smtp::aiosmtpd_available() {
        assert!(!common::in_ci(), "aiosmtpd is missing");
        return None;
    }
    Some(Sink::start(dir, None, &SinkOptions::default()))
}

/// A relay on `url` whose clock stands at `start`: the `smtp` route to `sink` with `smtp_lines`
/// in `[relay.smtp]`, `relay_lines` in `[relay]`, and `[alerts] to = [OPS]` with `alert_lines`.
async fn alerts_env(
    url: &str,
    start: DateTime<Utc>,
    sink: &Sink,
    relay_lines: &str,
    smtp_lines: &str,
    alert_lines: &str,
) -> Env {
    let section = smtp::smtp_section(sink.port, "none", None, None);
    Env::start(url, Some(start), |_| {
        format!(
            "concurrency = 1\n{relay_lines}{section}{smtp_lines}\n[alerts]\nto = [\"{OPS}\"]\n{alert_lines}"
        )
    })
    .await
    .with_message("Your membership", "See you on the water.\n", "notification")
}

impl Env {
    /// Queues `n` members' messages and delivers everything due.
    async fn send_members(&self, n: usize) {
        for i in 0..n {
            self.enqueue(&format!("member{i}@example.org")).await;
        }
        self.run_once().await;
    }
}

/// The alert mails among what `sink` received after its first `base` messages (an earlier
/// state DB's run), once it has `base + n`, with their subject and decoded text.
async fn alerts(sink: &Sink, base: usize, n: usize) -> Vec<(String, String)> {
    sink.wait_for_async(base + n, Duration::from_secs(20)).await;
    assert_eq!(sink.count(), base + n, "messages at the sink");
    sink.messages()[base..]
        .iter()
        .filter(|m| m.rcpt_tos.iter().any(|r| r == OPS))
        .map(decoded)
        .collect()
}

fn decoded(m: &Received) -> (String, String) {
    let parsed = mail_parser::MessageParser::default()
        .parse(&m.raw)
        .expect("a parsable alert mail");
    (
        parsed.subject().unwrap_or_default().to_owned(),
        parsed.body_text(0).unwrap_or_default().into_owned(),
    )
}

/// The relay parts of a second application on the same config and state DB (another process,
/// or this one restarted), on a clock of its own standing at `now`.
async fn restarted(env: &Env, now: DateTime<Utc>) -> RelayParts {
    let app =
        App::new(load_config(&env.dir.join("mailbridge.toml"))).with_clock(ManualClock::new(now));
    RelayParts::open_app(app).await
}

/// The smarthost's monthly quota of 20 with the default thresholds (80% = 16, 95% = 19): one
/// mail at 80%, none more in the band (also from a restarted worker), one at 95%, none once the
/// quota is spent, and one again at 80% of the next month.
#[tokio::test]
async fn the_monthly_quota_alerts_once_per_threshold_and_month() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sink) = sink(dir.path()) else { return };
    common::on_each_state_db(async |url| {
        let base = sink.count();
        let t0 = at("2026-12-10T10:00:00Z");
        let env = alerts_env(
            url,
            t0,
            &sink,
            "routes = [\"smtp\"]\n",
            "monthly_quota = 20\n",
            "",
        )
        .await;

        env.send_members(15).await;
        assert!(
            alerts(&sink, base, 15).await.is_empty(),
            "{url}: 75% alerted"
        );

        // The 16th message reaches 80%: one alert, through the relay, naming limit and figures.
        env.send_members(1).await;
        let got = alerts(&sink, base, 17).await;
        assert_eq!(got.len(), 1, "{url}: {got:?}");
        let (subject, text) = &got[0];
        assert_eq!(
            subject, "[mailbridge] 80% of the smtp route's monthly quota: 16 of 20 messages used",
            "{url}"
        );
        for part in [
            "Limit:     the monthly quota of the smtp route ([relay.smtp] monthly_quota)",
            "Period:    2026-12 (UTC month)",
            "Used:      16 of 20 messages (80%)",
            "Threshold: 80% reached",
            "Resets:    2027-01-01T00:00:00Z",
            "No other route is configured, so this mail went through the smtp route itself",
        ] {
            assert!(text.contains(part), "{url}: {part:?} in\n{text}");
        }

        // 18 of 20 from another application on the same state DB: no second 80% alert.
        let other = restarted(&env, env.clock().now()).await;
        outbox_enqueue(&other, "late@example.org").await;
        let summary = run_closing(other.worker()).await;
        assert_eq!(summary.sent, 1, "{url}: {summary:?}");
        assert_eq!(
            alerts(&sink, base, 18).await.len(),
            1,
            "{url}: alerted twice"
        );
        other.store.close().await;

        // 19 of 20 is 95%: the second alert, which takes the quota's last message.
        env.send_members(1).await;
        let got = alerts(&sink, base, 20).await;
        assert_eq!(got.len(), 2, "{url}: {got:?}");
        assert_eq!(
            got[1].0, "[mailbridge] 95% of the smtp route's monthly quota: 19 of 20 messages used",
            "{url}"
        );
        assert!(got[1].1.contains("Threshold: 95% reached"), "{url}");

        // Spent: the next message waits, and nothing more is alerted this month.
        env.send_members(1).await;
        assert_eq!(alerts(&sink, base, 20).await.len(), 2, "{url}");

        // A new month: the waiting message goes, and 80% alerts again, for 2027-01.
        env.clock().set(at("2027-01-01T00:00:00Z"));
        env.send_members(15).await;
        let got = alerts(&sink, base, 37).await;
        assert_eq!(got.len(), 3, "{url}: {got:?}");
        assert_eq!(
            got[2].0, "[mailbridge] 80% of the smtp route's monthly quota: 16 of 20 messages used",
            "{url}"
        );
        assert!(got[2].1.contains("Period:    2027-01 (UTC month)"), "{url}");
        env.store.close().await;
    })
    .await;
}

async fn outbox_enqueue(parts: &RelayParts, to: &str) {
    let msg = support::relay::message("Your membership", "See you.\n", "notification");
    mailbridge::relay::outbox::enqueue(
        &parts.store,
        &parts.relay,
        &mailbridge::relay::NewMessage {
            to: to.into(),
            ..msg
        },
    )
    .await
    .unwrap();
}

/// `[relay] hourly_limit = 10`, alerting at 80%: one alert per UTC hour, and again in the next.
#[tokio::test]
async fn the_hourly_limit_alerts_once_per_hour() {
    let _ = mailbridge::http::metrics::handle();
    let dir = tempfile::tempdir().unwrap();
    let Some(sink) = sink(dir.path()) else { return };
    let series =
        "mailbridge_quota_alerts_total{kind=\"hourly_limit\",limit=\"relay\",threshold=\"80\"}";
    common::on_each_state_db(async |url| {
        let base = sink.count();
        let counted = counter(series);
        let env = alerts_env(
            url,
            at("2026-12-10T10:05:00Z"),
            &sink,
            "routes = [\"smtp\"]\nhourly_limit = 10\n",
            "",
            "thresholds = [80]\n",
        )
        .await;
        env.send_members(8).await;
        let got = alerts(&sink, base, 9).await;
        assert_eq!(got.len(), 1, "{url}: {got:?}");
        assert_eq!(
            got[0].0, "[mailbridge] 80% of the relay's hourly limit: 8 of 10 messages used",
            "{url}"
        );
        assert!(
            got[0].1.contains("Period:    2026-12-10 10:00-11:00 UTC"),
            "{url}: {}",
            got[0].1
        );
        assert!(
            got[0]
                .1
                .contains("the hourly limit over all routes ([relay] hourly_limit)"),
            "{url}"
        );
        assert_eq!(counter(series), counted + 1.0, "{url}");

        // The tenth message of the hour: still the same hour's 80%, no new alert.
        env.send_members(1).await;
        assert_eq!(alerts(&sink, base, 10).await.len(), 1, "{url}");

        // The next UTC hour (and the sends of the last hour out of the window): alerts again.
        env.clock().set(at("2026-12-10T11:06:00Z"));
        env.send_members(8).await;
        let got = alerts(&sink, base, 19).await;
        assert_eq!(got.len(), 2, "{url}: {got:?}");
        assert!(
            got[1].1.contains("Period:    2026-12-10 11:00-12:00 UTC"),
            "{url}: {}",
            got[1].1
        );
        assert_eq!(counter(series), counted + 2.0, "{url}");
        env.store.close().await;
    })
    .await;
}

/// Eight processes see the same usage at once (each its own store on the state DB and its own
/// memory of what was alerted): one claims the alert, one mail goes out.
#[tokio::test]
async fn processes_racing_for_one_alert_send_one_mail() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sink) = sink(dir.path()) else { return };
    common::on_each_state_db(async |url| {
        let base = sink.count();
        let now = at("2026-12-10T10:00:00Z");
        let env = alerts_env(
            url,
            now,
            &sink,
            "routes = [\"smtp\"]\n",
            "monthly_quota = 100\n",
            "",
        )
        .await;
        let mut parts = Vec::new();
        for _ in 0..8 {
            parts.push(restarted(&env, now).await);
        }
        let usage = Usage {
            kind: LimitKind::MonthlyQuota,
            subject: "smtp",
            used: 85,
            limit: 100,
        };
        let races = parts.iter().map(|p| {
            let alerter = Alerter::new(
                p.store.clone(),
                p.config.alerts.clone(),
                Some(p.relay.clone()),
            );
            async move { alerter.observe(usage).await }
        });
        let won: Vec<Vec<u8>> = futures::future::join_all(races).await;
        let winners: Vec<&Vec<u8>> = won.iter().filter(|w| !w.is_empty()).collect();
        assert_eq!(winners, vec![&vec![80u8]], "{url}: {won:?}");
        for p in &parts {
            p.store.close().await;
        }
        let summary = env.run_once().await;
        assert_eq!(summary.sent, 1, "{url}: {summary:?}");
        let got = alerts(&sink, base, 1).await;
        assert_eq!(got.len(), 1, "{url}");
        assert_eq!(
            got[0].0, "[mailbridge] 80% of the smtp route's monthly quota: 85 of 100 messages used",
            "{url}"
        );
        env.store.close().await;
    })
    .await;
}

/// With a second route, the alert about the smtp route's quota goes through that route (here a
/// stand-in sendmail that keeps what it is handed); the members' mail stays on smtp.
#[tokio::test]
async fn an_alert_about_a_routes_quota_goes_through_another_route() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sink) = sink(dir.path()) else { return };
    let env = Env::start("sqlite://state.db", Some(at("2026-12-10T10:00:00Z")), |d| {
        let bin = smtp::stand_in(
            &d.join("sendmail"),
            &format!(
                "printf '%s\\n' \"$5\" >> '{calls}'\ncat >> '{kept}'\n",
                calls = d.join("calls.log").display(),
                kept = d.join("kept.eml").display(),
            ),
        );
        format!(
            "routes = [\"smtp\", \"sendmail\"]\nsendmail_path = \"{}\"\nconcurrency = 1\n{}monthly_quota = 10\n\n[alerts]\nto = [\"{OPS}\"]\nthresholds = [50]\n",
            bin.display(),
            smtp::smtp_section(sink.port, "none", None, None)
        )
    })
    .await;
    for i in 0..5 {
        env.enqueue(&format!("member{i}@example.org")).await;
    }
    let summary = env.run_once().await;
    assert_eq!(summary.sent, 6, "{summary:?}");
    assert!(
        alerts(&sink, 0, 5).await.is_empty(),
        "the alert used the smtp route"
    );
    assert_eq!(env.lines("calls.log"), vec![OPS.to_owned()]);
    let kept = std::fs::read(env.dir.join("kept.eml")).unwrap();
    let parsed = mail_parser::MessageParser::default().parse(&kept).unwrap();
    assert_eq!(
        parsed.subject(),
        Some("[mailbridge] 50% of the smtp route's monthly quota: 5 of 10 messages used")
    );
    assert!(
        parsed
            .body_text(0)
            .unwrap()
            .contains("This mail was sent through another route (sendmail)")
    );
    env.store.close().await;
}
