//! The relay's time-dependent decisions, on a [`ManualClock`] the tests move: a deferred message
//! is retried after its back-off and not before, a message held back by the hourly limit goes once
//! the hour has passed, and one over the smarthost's monthly quota goes at the first instant of
//! the next month. On SQLite and PostgreSQL state (the quota on SQLite, with the SMTP sink).

#![allow(clippy::unwrap_used)]

mod support;

use support::relay::Env;
use support::{db as common, smtp};

use chrono::{DateTime, Utc};
use mailbridge::relay::Status;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// A relay on a state DB whose clock stands at `start` until the test moves it. Its `sendmail`
/// route is a stand-in that logs each recipient to `calls.log` and fails with EX_TEMPFAIL (a
/// deferral) while the file `fail` exists.
async fn clock_env(state_url: &str, start: DateTime<Utc>, relay_lines: &str) -> Env {
    Env::start(state_url, Some(start), |dir| {
        let bin = smtp::stand_in(
            &dir.join("sendmail"),
            &format!(
                "cat > /dev/null\nprintf '%s\\n' \"$5\" >> '{calls}'\nif [ -e '{fail}' ]; then exit 75; fi\n",
                calls = dir.join("calls.log").display(),
                fail = dir.join("fail").display(),
            ),
        );
        format!("sendmail_path = \"{}\"\n{relay_lines}", bin.display())
    })
    .await
    .with_message("Your membership", "See you on the water.\n", "notification")
}

impl Env {
    fn set_failing(&self, failing: bool) {
        if failing {
            self.touch("fail");
        } else {
            self.remove("fail");
        }
    }

    /// Queues a message to a@example.org and one to b@example.org and runs once: one goes, the
    /// other waits, queued, until `until`. Their ids: (sent, held).
    async fn one_sent_one_held(&self, url: &str, until: &str) -> (String, String) {
        let a = self.enqueue("a@example.org").await.id;
        let b = self.enqueue("b@example.org").await.id;
        let first = self.run_once().await;
        assert_eq!((first.sent, first.waiting), (1, 1), "{url}: {first:?}");
        let (sent, held) = if self.status(&a).await.status == Status::Sent {
            (a, b)
        } else {
            (b, a)
        };
        let st = self.status(&held).await;
        assert_eq!(st.status, Status::Queued, "{url}");
        assert_eq!(st.next_attempt_at.as_deref(), Some(until));
        (sent, held)
    }

    /// How many times the `sendmail` route was handed a message.
    fn calls(&self) -> usize {
        self.lines("calls.log").len()
    }
}

/// A deferred message is claimed again exactly when its back-off ends: runs before that (the
/// clock still, then a millisecond short) leave it alone, the run at that instant delivers it.
#[tokio::test]
async fn a_deferred_message_is_retried_after_its_back_off_and_not_before() {
    common::on_each_state_db(async |url| {
        let t0 = at("2026-12-06T10:00:00Z");
        let env = clock_env(
            url,
            t0,
            "routes = [\"sendmail\"]\nretry_base_secs = 600\nretry_max_secs = 3600\n",
        )
        .await;
        env.set_failing(true);
        let id = env.enqueue("ana@example.org").await.id;
        let first = env.run_once().await;
        assert_eq!((first.deferred, env.calls()), (1, 1), "{url}: {first:?}");
        let st = env.status(&id).await;
        assert_eq!((st.status, st.attempts), (Status::Deferred, 1), "{url}");
        // The first back-off: 600 s with a jitter of one half to one.
        let due = at(st.next_attempt_at.as_deref().unwrap());
        let wait = due - t0;
        assert!(
            (300..=600).contains(&wait.num_seconds()),
            "{url}: back-off of {wait}"
        );

        env.set_failing(false);
        assert_eq!(env.run_once().await.sent, 0, "{url}: retried at once");
        env.clock().set(due - chrono::Duration::milliseconds(1));
        assert_eq!(env.run_once().await.sent, 0, "{url}: retried early");
        assert_eq!(env.calls(), 1, "{url}");

        env.clock().set(due);
        let retry = env.run_once().await;
        assert_eq!((retry.sent, env.calls()), (1, 2), "{url}: {retry:?}");
        let st = env.status(&id).await;
        assert_eq!((st.status, st.attempts), (Status::Sent, 2), "{url}");
        assert_eq!(st.sent_at.as_deref(), Some(env.store.now_text().as_str()));
        env.store.close().await;
    })
    .await;
}

/// The hourly limit counts the sends of the hour before the clock's present time: a message held
/// back looks again a minute at a time while the hour's send is within it, and goes once it is not.
#[tokio::test]
async fn the_hourly_limit_lets_a_message_go_once_the_hour_has_passed() {
    common::on_each_state_db(async |url| {
        let t0 = at("2026-12-06T10:00:00Z");
        let env = clock_env(url, t0, "routes = [\"sendmail\"]\nhourly_limit = 1\n").await;
        let (sent, held) = env.one_sent_one_held(url, "2026-12-06T10:01:00.000Z").await;
        assert_eq!(
            env.status(&sent).await.sent_at.as_deref(),
            Some("2026-12-06T10:00:00.000Z")
        );

        // A minute on, the hour still holds the first send: it waits another minute.
        env.clock().set(at("2026-12-06T10:01:00Z"));
        let again = env.run_once().await;
        assert_eq!((again.sent, again.waiting), (0, 1), "{url}: {again:?}");
        // Exactly an hour after the first send, that send still counts.
        env.clock().set(at("2026-12-06T11:00:00Z"));
        let edge = env.run_once().await;
        assert_eq!((edge.sent, edge.waiting), (0, 1), "{url}: {edge:?}");
        // At its next look, a minute on, the first send is out of the hour.
        env.clock().set(at("2026-12-06T11:01:00Z"));
        let later = env.run_once().await;
        assert_eq!((later.sent, later.waiting), (1, 0), "{url}: {later:?}");
        assert_eq!(env.status(&held).await.status, Status::Sent, "{url}");
        assert_eq!(env.calls(), 2, "{url}");
        env.store.close().await;
    })
    .await;
}

/// The smarthost's monthly quota is counted per UTC month: a message over it waits for the first
/// instant of the next month (here across the new year) and goes then, not a millisecond before.
#[tokio::test]
async fn a_message_over_the_monthly_quota_goes_when_the_month_rolls_over() {
    if !smtp::aiosmtpd_available() {
        assert!(!common::in_ci(), "aiosmtpd is missing");
        return;
    }
    common::on_each_state_db(async |url| {
        let sink_dir = tempfile::tempdir().unwrap();
        let sink = smtp::Sink::start(sink_dir.path(), None, &smtp::SinkOptions::default());
        let smtp_lines = format!(
            "routes = [\"smtp\"]\n{}monthly_quota = 1\n",
            smtp::smtp_section(sink.port, "none", None, None)
        );
        let env = clock_env(url, at("2026-12-31T22:00:00Z"), &smtp_lines).await;
        let (_, held) = env.one_sent_one_held(url, "2027-01-01T00:00:00.000Z").await;
        assert_eq!(sink.count(), 1, "{url}");

        env.clock().set(at("2026-12-31T23:59:59.999Z"));
        assert_eq!(
            env.run_once().await.sent,
            0,
            "{url}: sent in the spent month"
        );
        env.clock().set(at("2027-01-01T00:00:00Z"));
        let new_month = env.run_once().await;
        assert_eq!(new_month.sent, 1, "{url}: {new_month:?}");
        sink.wait_for_async(2, std::time::Duration::from_secs(10))
            .await;
        assert_eq!(env.status(&held).await.status, Status::Sent, "{url}");
        env.store.close().await;
    })
    .await;
}
