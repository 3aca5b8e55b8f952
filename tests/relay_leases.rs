//! Send leases (issue 24): a worker checks in the state DB, right before each message, that it
//! still holds the message's lease, and leaves a message another worker took over to that worker;
//! a send that outlasts the lease renews it, so no other worker's claim takes the message while it
//! is being sent. On SQLite and PostgreSQL state, with a stand-in `sendmail` that holds one
//! message until the test lets it go, and a [`ManualClock`]: a lease runs out when the test moves
//! the clock past it, not after a wait.

#![allow(clippy::unwrap_used)]

mod support;

use support::relay::{Env, counter, run_closing};
use support::serve::wait_until;
use support::{db as common, smtp};

use std::time::Duration;

use mailbridge::clock::Clock;
use mailbridge::relay::Status;
use mailbridge::relay::outbox::{self, Claimed, Outcome};
use mailbridge::store::time_text;

/// A relay whose only route is a stand-in `sendmail`: it logs each recipient to `started.log`
/// when it gets the message and to `sent.log` when it is done; with the first message it gets, it
/// waits for the file `go` in between. Its clock stands at the present (in whole milliseconds, as
/// the state DB stores times) until the test moves it.
async fn lease_env(state_url: &str, relay_extra: &str) -> Env {
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 3);
    Env::start(state_url, Some(now), |dir| {
        let bin = smtp::stand_in(
            &dir.join("sendmail"),
            &format!(
                "cat > /dev/null\nprintf '%s\\n' \"$5\" >> '{started}'\nif mkdir '{first}' 2>/dev/null; then while [ ! -e '{go}' ]; do sleep 0.02; done; fi\nprintf '%s\\n' \"$5\" >> '{sent}'\n",
                started = dir.join("started.log").display(),
                go = dir.join("go").display(),
                first = dir.join("first").display(),
                sent = dir.join("sent.log").display()
            ),
        );
        format!(
            "routes = [\"sendmail\"]\nsendmail_path = \"{}\"\nconcurrency = 1\n{relay_extra}",
            bin.display()
        )
    })
    .await
}

/// Runs `check` on a [`lease_env`] with `relay_extra` on each state DB in turn, its store closed
/// after it.
async fn on_each_lease_env(relay_extra: &str, check: impl AsyncFn(&str, &Env)) {
    common::on_each_state_db(async |url| {
        let env = lease_env(url, relay_extra).await;
        check(url, &env).await;
        env.store.close().await;
    })
    .await;
}

impl Env {
    /// What worker B's claim takes at the clock's present time (with a lease into 2100).
    async fn worker_b_claims(&self) -> Vec<Claimed> {
        let now = self.store.now_text();
        outbox::claim(
            &self.store,
            "worker-b",
            &now,
            &now,
            "2100-01-01T00:00:00.000Z",
            10,
        )
        .await
        .unwrap()
    }

    /// The message's (leased_by, lease_until).
    async fn lease(&self, id: &str) -> (Option<String>, Option<String>) {
        sqlx::query_as("SELECT leased_by, lease_until FROM outbox WHERE id = $1")
            .bind(id)
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }

    /// When the message's lease ends.
    async fn lease_until(&self, id: &str) -> chrono::DateTime<chrono::Utc> {
        let until = self.lease(id).await.1.expect("leased");
        chrono::DateTime::parse_from_rfc3339(&until)
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    /// Starts `relay --once` on a worker of its own and waits until the stand-in holds the first
    /// message; returns the run and that message's recipient.
    async fn run_until_first_started(
        &self,
    ) -> (
        tokio::task::JoinHandle<mailbridge::relay::RunSummary>,
        String,
    ) {
        let run = tokio::spawn(run_closing(self.worker()));
        wait_until(
            "the first send to start",
            Duration::from_secs(20),
            || async { !self.lines("started.log").is_empty() },
        )
        .await;
        (run, self.lines("started.log")[0].clone())
    }
}

/// Worker A claims two messages (a 2 s lease) and sends one slowly; the clock moves past the
/// other's lease while it waits in A's queue, and worker B takes it over as its claim would (its
/// name in `leased_by`, a lease of its own). Before the second message's turn A renews its lease in the
/// state DB, finds it gone, and does not send it; B's outcome is the one recorded.
#[tokio::test]
async fn a_message_another_worker_took_over_is_not_sent() {
    let _ = mailbridge::http::metrics::handle();
    let lost = "mailbridge_relay_lease_lost_total{stage=\"before_send\"}";
    on_each_lease_env("lease_secs = 2\n", async |url, env| {
        let a = env.enqueue("a@example.org").await.id;
        let b = env.enqueue("b@example.org").await.id;
        let before = counter(lost);
        let (run, first) = env.run_until_first_started().await;
        // The other message waits in A's queue behind the one being sent.
        let (taken, taken_to) = if first == "a@example.org" {
            (b, "b@example.org")
        } else {
            (a, "a@example.org")
        };
        let (holder, until) = env.lease(&taken).await;
        assert!(
            holder.is_some_and(|w| w != "worker-b"),
            "{url}: A claimed both"
        );
        // A lease is taken over only once it has run out: move the clock past it.
        let until = chrono::DateTime::parse_from_rfc3339(&until.unwrap()).unwrap();
        env.clock()
            .set(until.with_timezone(&chrono::Utc) + chrono::Duration::seconds(1));
        sqlx::query(
            "UPDATE outbox SET leased_by = 'worker-b', lease_until = '2100-01-01T00:00:00.000Z' WHERE id = $1",
        )
        .bind(&taken)
        .execute(env.store.pool())
        .await
        .unwrap();
        env.touch("go");
        wait_until(
            "A to find its lease gone",
            Duration::from_secs(20),
            || async { counter(lost) >= before + 1.0 },
        )
        .await;
        assert_eq!(env.lines("sent.log"), [first.as_str()], "{url}");
        assert_eq!(
            env.lines("started.log"),
            [first.as_str()],
            "{url}: A sent a message whose lease B holds"
        );
        assert_eq!(
            env.lease(&taken).await.0.as_deref(),
            Some("worker-b"),
            "{url}"
        );
        // B delivers it and records its outcome; A's run then finds nothing left.
        let b_claim = Claimed {
            id: taken.clone(),
            message_id: String::new(),
            recipient: taken_to.into(),
            category: "registration".into(),
            raw: Vec::new(),
            attempts: 0,
            envelope_from: String::new(),
            created_at: env.store.now_text(),
            retry_route: None,
            rowid: None,
        };
        let sent_by_b = Outcome::Sent {
            route: "sendmail".into(),
            reply: "sent by worker B".into(),
        };
        assert!(
            outbox::finish(&env.store, "worker-b", &b_claim, &sent_by_b)
                .await
                .unwrap()
        );
        let summary = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("A's run ends once B's message is done")
            .unwrap();
        assert_eq!(summary.sent, 1, "{url}: {summary:?}");
        let st = outbox::get(&env.store, &taken).await.unwrap().unwrap();
        assert_eq!(st.status, Status::Sent, "{url}");
        assert_eq!(st.last_reply.as_deref(), Some("sent by worker B"), "{url}");
        assert_eq!(st.attempts, 1, "{url}");
        assert_eq!(
            env.lines("sent.log"),
            [first.as_str()],
            "{url}: A sent only its own message"
        );
    })
    .await;
}

/// A send that takes longer than the lease (3 s) renews it every third of it while it runs: with
/// the clock moved a second at a time past the claim's lease end, the row's lease is renewed at
/// each step and stays in the future, and another worker's claim does not take the message.
#[tokio::test]
async fn a_send_longer_than_the_lease_keeps_its_lease() {
    on_each_lease_env("lease_secs = 3\n", async |url, env| {
        let slow = env.enqueue("slow@example.org").await.id;
        let (run, _) = env.run_until_first_started().await;
        let holder = env.lease(&slow).await.0.expect("leased");
        let claimed_until = env.lease_until(&slow).await;
        assert_eq!(
            claimed_until,
            env.clock().now() + chrono::Duration::seconds(3)
        );
        // Five seconds past the claim, a second at a time: each step's renewal extends the lease
        // to three seconds after it.
        for _ in 0..5 {
            env.clock().advance(Duration::from_secs(1));
            let renewed = env.clock().now() + chrono::Duration::seconds(3);
            wait_until("the renewal", Duration::from_secs(20), || async {
                env.lease_until(&slow).await == renewed
            })
            .await;
            assert_eq!(env.lease(&slow).await.0.as_deref(), Some(holder.as_str()));
        }
        assert!(env.clock().now() > claimed_until, "{url}");
        let other = env.worker_b_claims().await;
        assert!(other.is_empty(), "{url}: B took over a message being sent");
        env.touch("go");
        let summary = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(summary.sent, 1, "{url}: {summary:?}");
        assert_eq!(env.lines("sent.log"), ["slow@example.org"], "{url}");
        let st = outbox::get(&env.store, &slow).await.unwrap().unwrap();
        assert_eq!(st.status, Status::Sent, "{url}");
    })
    .await;
}

/// A worker that claimed a message and died holds it until its lease runs out on the clock, and
/// not a moment longer: another worker's claim skips the message a millisecond before the lease's
/// end and takes it over at the end; the dead worker's late outcome is refused.
#[tokio::test]
async fn a_dead_workers_message_is_taken_over_once_the_clock_reaches_its_lease_end() {
    on_each_lease_env("lease_secs = 60\n", async |url, env| {
        env.touch("go");
        let id = env.enqueue("late@example.org").await.id;
        let now = env.clock().now();
        let until = now + chrono::Duration::seconds(60);
        let dead = outbox::claim(
            &env.store,
            "dead-worker",
            &time_text(now),
            &time_text(now),
            &time_text(until),
            10,
        )
        .await
        .unwrap();
        assert_eq!(dead.len(), 1, "{url}");

        env.clock().set(until - chrono::Duration::milliseconds(1));
        let early = env.worker_b_claims().await;
        assert!(
            early.is_empty(),
            "{url}: taken over before the lease ran out"
        );

        env.clock().set(until);
        let summary = env.run_once().await;
        assert_eq!(summary.sent, 1, "{url}: {summary:?}");
        assert_eq!(env.lines("sent.log"), ["late@example.org"], "{url}");
        let st = outbox::get(&env.store, &id).await.unwrap().unwrap();
        assert_eq!((st.status, st.attempts), (Status::Sent, 1), "{url}");
        let late = Outcome::Sent {
            route: "sendmail".into(),
            reply: "the dead worker's reply".into(),
        };
        assert!(
            !outbox::finish(&env.store, "dead-worker", &dead[0], &late)
                .await
                .unwrap(),
            "{url}: a taken-over lease's outcome was recorded"
        );
    })
    .await;
}
