//! The data behind the admin pages (issue 21), on SQLite and PostgreSQL state: the outbox listed
//! a page at a time under every filter, a message's history of turns and an operator's retry,
//! the suppression list searched and lifted (never a consent opt-out), and the members needing
//! attention.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use mailbridge::config::DbUrl;
use mailbridge::domain::AddressPrefix;
use mailbridge::relay::Status;
use mailbridge::relay::outbox::{
    self, Claimed, Cursor, ListQuery, Outcome, RetryOutcome, STATUSES, turn,
};
use mailbridge::relay::routes::ROUTE_NAMES;
use mailbridge::store::suppressions::{self, LiftOutcome, Which};
use mailbridge::store::{ADD_SUPPRESSION_SQL, OpenMode, Store};
use mailbridge::sync::attention::{self, Concern};
use support::db::{self, Db};
use support::{Kind, kind_tests};

/// A fresh, migrated state DB of `kind` (`None`: its server is not there, and CI is not set).
async fn state(kind: Kind, dir: &std::path::Path) -> Option<(Store, Db)> {
    let db = db::state_db(kind, dir).await?;
    let url = DbUrl::parse(&db.url, dir).unwrap();
    let store = Store::open(&url, OpenMode::ReadWrite).await.unwrap();
    store.migrate().await.unwrap();
    Some((store, db))
}

// ---- the outbox, a page at a time ----

/// One stored message as the test knows it.
#[derive(Clone, Debug)]
struct Row {
    id: String,
    recipient: String,
    status: Status,
    created_at: String,
    sent_at: Option<String>,
}

const RECIPIENTS: [&str; 7] = [
    "anna@example.org",
    "anna@other.net",
    "annabel@example.org",
    "anna.b@example.org",
    "b@example.org",
    "bob@example.org",
    "zed~x@example.org",
];

/// 240 messages over every status and recipient, several to a created_at (ties are broken by
/// id). The sent ones went out over the three routes, in batches of up to 8 sharing a sent_at, in
/// another order than they were queued in; the bounced ones were sent too (a bounce mail came
/// later).
async fn fill(store: &Store) -> Vec<Row> {
    let mut rows = Vec::new();
    for i in 0..240u32 {
        let status = STATUSES[(i as usize * 5 + i as usize / 7) % STATUSES.len()];
        let sent = matches!(status, Status::Sent | Status::Bounced);
        let row = Row {
            id: format!("{:032x}", u128::from(i.wrapping_mul(2_654_435_761))),
            recipient: RECIPIENTS[(i as usize * 3 + i as usize / 11) % RECIPIENTS.len()].into(),
            status,
            created_at: format!("2026-12-13T10:{:02}:00.000Z", i / 4),
            sent_at: sent.then(|| format!("2026-12-13T11:{:02}:00.000Z", (i * 7 % 240) / 8)),
        };
        sqlx::query(
            "INSERT INTO outbox (id, message_id, recipient, category, status, attempts,
                 next_attempt_at, lease_until, last_reply, route, created_at, updated_at, sent_at)
             VALUES ($1, $2, $3, 'registration', $4, 1, $5, $6, 'reply', $7, $5, $5, $8)",
        )
        .bind(&row.id)
        .bind(format!("<{}@x>", row.id))
        .bind(&row.recipient)
        .bind(status.as_str())
        .bind(&row.created_at)
        .bind((status == Status::Sending).then_some("2026-12-13T11:00:00.000Z"))
        .bind(ROUTE_NAMES[i as usize % ROUTE_NAMES.len()])
        .bind(&row.sent_at)
        .execute(store.pool())
        .await
        .unwrap();
        rows.push(row);
    }
    rows
}

/// The ids `query` lists, page after page of `limit`, with the pages' sizes checked.
async fn walk(store: &Store, query: &ListQuery, limit: u32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after: Option<Cursor> = None;
    for _ in 0..1000 {
        let page = outbox::list(
            store,
            &ListQuery {
                after: after.clone(),
                limit,
                ..query.clone()
            },
        )
        .await
        .unwrap();
        assert!(page.messages.len() <= limit as usize);
        ids.extend(page.messages.iter().map(|m| m.id.clone()));
        match page.next {
            Some(next) => {
                assert_eq!(
                    page.messages.len(),
                    limit as usize,
                    "a short page has a next"
                );
                // The cursor survives a trip through a link.
                after = Some(Cursor::parse(&next.to_param()).unwrap());
            }
            None => return ids,
        }
    }
    panic!("the listing never ended");
}

async fn outbox_listing_pages_through_every_filter(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _db)) = state(kind, dir.path()).await else {
        return;
    };
    let rows = fill(&store).await;
    let mut newest_first = rows.clone();
    newest_first.sort_by(|a, b| (&b.created_at, &b.id).cmp(&(&a.created_at, &a.id)));
    let mut recently_sent = rows.clone();
    recently_sent.sort_by(|a, b| (&b.sent_at, &b.id).cmp(&(&a.sent_at, &a.id)));
    let mut by_address = rows.clone();
    by_address.sort_by(|a, b| {
        (&a.recipient, &b.created_at, &b.id).cmp(&(&b.recipient, &a.created_at, &a.id))
    });
    let mut checked = 0;
    for status in std::iter::once(None).chain(STATUSES.map(Some)) {
        for search in [
            None,
            Some("anna@"),
            Some(" Anna@Example.ORG "),
            Some("b"),
            Some("zz"),
        ] {
            let prefix = search.and_then(AddressPrefix::parse);
            // By address for a search over all or sent messages, the sent ones most recently
            // sent first, else newest first.
            let order = match (&prefix, status) {
                (Some(_), None | Some(Status::Sent)) => &by_address,
                (None, Some(Status::Sent)) => &recently_sent,
                _ => &newest_first,
            };
            let want: Vec<String> = order
                .iter()
                .filter(|r| status.is_none_or(|s| r.status == s))
                .filter(|r| prefix.as_ref().is_none_or(|p| p.matches(&r.recipient)))
                .map(|r| r.id.clone())
                .collect();
            let query = ListQuery {
                status,
                recipient: prefix.clone(),
                ..ListQuery::default()
            };
            for limit in [7, 50] {
                assert_eq!(
                    walk(&store, &query, limit).await,
                    want,
                    "{kind:?}: status {status:?}, search {search:?}, pages of {limit}"
                );
            }
            checked += usize::from(!want.is_empty());
        }
    }
    assert_eq!(
        checked,
        8 * 4,
        "every filter but the search for `zz` finds something"
    );

    // A page's rows are the messages as `GET /v1/messages/{id}` shows them.
    let page = outbox::list(
        &store,
        &ListQuery {
            limit: 3,
            ..ListQuery::default()
        },
    )
    .await
    .unwrap();
    for m in &page.messages {
        assert_eq!(
            serde_json::to_value(m).unwrap(),
            serde_json::to_value(outbox::get(&store, &m.id).await.unwrap().unwrap()).unwrap()
        );
    }
    // A cursor of another search lists nothing after it.
    let elsewhere = ListQuery {
        recipient: AddressPrefix::parse("bob@"),
        after: page.next.clone(),
        limit: 10,
        ..ListQuery::default()
    };
    let after_other = outbox::list(&store, &elsewhere).await.unwrap();
    if page
        .next
        .as_ref()
        .is_some_and(|c| !c.recipient.starts_with("bob@"))
    {
        assert!(after_other.messages.is_empty(), "{kind:?}");
    }

    let counts = outbox::counts(&store).await.unwrap();
    for s in STATUSES {
        let n = rows.iter().filter(|r| r.status == s).count() as u64;
        assert!(n > 0, "every status is in the test data");
        let want = (s != Status::Sent).then_some(n);
        assert_eq!(counts.of(s), want, "{kind:?}: {s:?}");
    }
    store.close().await;
}

kind_tests!(outbox_listing_pages_through_every_filter:
    outbox_listing_sqlite => Sqlite,
    outbox_listing_postgres => Postgres,
);

// ---- a message's history, and the operator's retry ----

async fn history_and_retry(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let Some(db) = db::state_db(kind, dir.path()).await else {
        return;
    };
    let env = support::relay::Env::start(&db.url, Some(support::clock::start()), |_| {
        "routes = [\"sendmail\"]\nsendmail_path = \"/bin/true\"\n".into()
    })
    .await;
    let store = &env.store;
    let names = [
        "sent", "deferred", "quota", "tried", "lost", "bounced", "held", "failed", "stolen",
        "handed",
    ];
    let mut ids = BTreeMap::new();
    for name in names {
        ids.insert(name, env.enqueue(&format!("{name}@example.org")).await.id);
    }
    let now = store.now_text();
    let far = "2999-01-01T00:00:00.000Z";
    let claimed: Vec<Claimed> = outbox::claim(store, "w1", far, &now, far, 100)
        .await
        .unwrap();
    assert_eq!(claimed.len(), names.len());
    let of = |name: &str| claimed.iter().find(|c| c.id == ids[name]).unwrap().clone();
    let later = "2026-12-31T00:00:00.000Z".to_owned();
    let outcomes = [
        (
            "sent",
            Outcome::Sent {
                route: "sendmail".into(),
                reply: "250 2.0.0 queued as 1".into(),
            },
        ),
        (
            "deferred",
            Outcome::Deferred {
                route: Some("sendmail".into()),
                reply: "451 4.3.0 try later".into(),
                next_attempt_at: later.clone(),
                attempted: true,
            },
        ),
        (
            "quota",
            Outcome::Waiting {
                route: None,
                reply: "waiting: [relay] hourly_limit reached".into(),
                next_attempt_at: later.clone(),
                attempted: false,
            },
        ),
        (
            "tried",
            Outcome::Waiting {
                route: Some("sendmail".into()),
                reply: "route sendmail is misconfigured".into(),
                next_attempt_at: later.clone(),
                attempted: true,
            },
        ),
        (
            "lost",
            Outcome::Ambiguous {
                route: "sendmail".into(),
                reply: "connection reset after DATA".into(),
                next_attempt_at: later.clone(),
            },
        ),
        (
            "bounced",
            Outcome::Bounced {
                route: "sendmail".into(),
                reply: "550 5.1.1 no such user".into(),
                suppress: true,
            },
        ),
        (
            "held",
            Outcome::Suppressed {
                reply: outbox::SUPPRESSED_REPLY,
            },
        ),
        (
            "failed",
            Outcome::Failed {
                route: Some("sendmail".into()),
                reply: "gave up after 72 hours without delivery; last: 451".into(),
                attempted: true,
            },
        ),
    ];
    let pairs: Vec<(Claimed, Outcome)> = outcomes
        .iter()
        .map(|(name, o)| (of(name), o.clone()))
        .collect();
    let refs: Vec<(&Claimed, &Outcome)> = pairs.iter().map(|(c, o)| (c, o)).collect();
    let kept = outbox::finish_many(store, "w1", &refs).await.unwrap();
    assert!(kept.iter().all(|k| *k), "{kept:?}");
    // Another worker's outcome for a message it does not hold records nothing, history included.
    let stolen = of("stolen");
    let defer = Outcome::Deferred {
        route: Some("sendmail".into()),
        reply: "451".into(),
        next_attempt_at: later.clone(),
        attempted: true,
    };
    assert_eq!(
        outbox::finish_many(store, "w2", &[(&stolen, &defer)])
            .await
            .unwrap(),
        [false]
    );
    assert!(
        outbox::hand_back(store, "w1", &of("handed"), &now)
            .await
            .unwrap()
    );
    assert!(
        !outbox::hand_back(store, "w2", &of("stolen"), &now)
            .await
            .unwrap(),
        "not w2's to hand back"
    );

    let history = async |name: &str| outbox::attempts(store, &ids[name]).await.unwrap();
    for name in ["sent", "quota", "stolen"] {
        assert_eq!(history(name).await, [], "{kind:?}: {name}");
    }
    for (name, outcome, route, attempt) in [
        ("deferred", turn::DEFERRED, Some("sendmail"), 1),
        ("tried", turn::WAITING, Some("sendmail"), 1),
        ("lost", turn::ANSWER_LOST, Some("sendmail"), 1),
        ("bounced", turn::BOUNCED, Some("sendmail"), 1),
        ("held", turn::HELD_BACK, None, 0),
        ("failed", turn::FAILED, Some("sendmail"), 1),
        ("handed", turn::HANDED_BACK, None, 0),
    ] {
        let h = history(name).await;
        assert_eq!(h.len(), 1, "{kind:?}: {name}: {h:?}");
        let reply = outcomes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| match o {
                Outcome::Deferred { reply, .. }
                | Outcome::Waiting { reply, .. }
                | Outcome::Ambiguous { reply, .. }
                | Outcome::Bounced { reply, .. }
                | Outcome::Failed { reply, .. } => reply.clone(),
                Outcome::Suppressed { reply } => (*reply).to_owned(),
                Outcome::Sent { .. } => unreachable!(),
            })
            .unwrap_or_else(|| "handed back at shutdown before its send began".into());
        assert_eq!(
            (
                h[0].outcome.as_str(),
                h[0].route.as_deref(),
                h[0].attempt,
                h[0].reply.as_deref()
            ),
            (outcome, route, attempt, Some(reply.as_str())),
            "{kind:?}: {name}"
        );
        assert_eq!(h[0].at, now, "{kind:?}: {name}");
    }
    assert_eq!(outbox::attempts(store, "no-such-id").await.unwrap(), []);

    // Retry: deferred and failed messages go back to the queue, due now.
    let retried_at = store.now_text();
    for name in ["deferred", "failed"] {
        assert_eq!(
            outbox::retry_now(store, &ids[name], &retried_at)
                .await
                .unwrap(),
            RetryOutcome::Requeued,
            "{kind:?}: {name}"
        );
        let st = env.status(&ids[name]).await;
        assert_eq!(st.status, Status::Queued, "{kind:?}: {name}");
        assert_eq!(st.next_attempt_at.as_deref(), Some(retried_at.as_str()));
        assert_eq!(st.attempts, 1, "the attempt count stays");
        let h = history(name).await;
        assert_eq!(h.last().unwrap().outcome, turn::REQUEUED, "{kind:?}: {h:?}");
        // Queued now: a second retry is refused.
        assert_eq!(
            outbox::retry_now(store, &ids[name], &retried_at)
                .await
                .unwrap(),
            RetryOutcome::NotRetryable {
                status: Status::Queued
            }
        );
    }
    // Its bounce suppressed the address: refused until the suppression is lifted.
    assert_eq!(
        outbox::retry_now(store, &ids["bounced"], &retried_at)
            .await
            .unwrap(),
        RetryOutcome::AddressSuppressed {
            reason: "hard_bounce".into()
        }
    );
    assert_eq!(env.status(&ids["bounced"]).await.status, Status::Bounced);
    assert_eq!(
        suppressions::lift(
            store,
            "bounced@example.org",
            "the mailbox exists again",
            "admin",
            &retried_at
        )
        .await
        .unwrap(),
        LiftOutcome::Lifted
    );
    assert_eq!(
        outbox::retry_now(store, &ids["bounced"], &retried_at)
            .await
            .unwrap(),
        RetryOutcome::Requeued
    );
    // A message whose answer was lost is deferred: it may be retried too.
    assert_eq!(
        outbox::retry_now(store, &ids["lost"], &retried_at)
            .await
            .unwrap(),
        RetryOutcome::Requeued
    );
    for (name, status) in [("sent", Status::Sent), ("held", Status::Suppressed)] {
        assert_eq!(
            outbox::retry_now(store, &ids[name], &retried_at)
                .await
                .unwrap(),
            RetryOutcome::NotRetryable { status },
            "{kind:?}: {name}"
        );
    }
    assert_eq!(
        outbox::retry_now(store, "no-such-id", &retried_at)
            .await
            .unwrap(),
        RetryOutcome::NotFound
    );

    // The history of messages that are done goes with their bytes; the rest stays.
    let purged = outbox::purge_attempts(store, "2999-01-01T00:00:00.000Z")
        .await
        .unwrap();
    assert_eq!(
        purged, 1,
        "{kind:?}: only the held message is done and has history"
    );
    assert_eq!(history("held").await, []);
    assert_eq!(history("deferred").await.len(), 2);
    store.close().await;
}

kind_tests!(history_and_retry:
    history_and_retry_sqlite => Sqlite,
    history_and_retry_postgres => Postgres,
);

// ---- the suppression list ----

async fn suppress(store: &Store, email: &str, reason: &str, source: &str, at: &str) {
    sqlx::query(ADD_SUPPRESSION_SQL)
        .bind(email)
        .bind(reason)
        .bind(source)
        .bind(Some("550 5.1.1"))
        .bind(at)
        .execute(store.pool())
        .await
        .unwrap();
}

async fn suppression_list_and_lifts(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _db)) = state(kind, dir.path()).await else {
        return;
    };
    let t = "2026-12-13T10:00:00.000Z";
    for (email, reason, source) in [
        ("anna@example.org", "hard_bounce", "relay:smtp"),
        ("anna@other.net", "soft_bounce", "mailchimp:l1"),
        ("anna.b@example.org", "spam_complaint", "mailchimp:l1"),
        ("annabel@example.org", "rejected", "mailchimp_transactional"),
        ("b@example.org", "hard_bounce", "relay"),
        ("zed@example.org", "mystery", "elsewhere"),
    ] {
        suppress(&store, email, reason, source, t).await;
    }
    let emails = async |search: Option<&str>, which: Which, limit: u32| {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = suppressions::list(
                &store,
                &suppressions::ListQuery {
                    search: search.and_then(AddressPrefix::parse),
                    which,
                    after: after.clone(),
                    limit,
                },
            )
            .await
            .unwrap();
            out.extend(page.rows.into_iter().map(|r| r.email));
            match page.next {
                Some(n) => after = Some(n),
                None => return out,
            }
        }
    };
    assert_eq!(
        emails(Some("Anna@"), Which::Active, 1).await,
        ["anna@example.org", "anna@other.net"],
        "{kind:?}: a prefix, in byte order, a page at a time"
    );
    assert_eq!(
        emails(Some("anna"), Which::Active, 2).await,
        [
            "anna.b@example.org",
            "anna@example.org",
            "anna@other.net",
            "annabel@example.org"
        ],
        "{kind:?}"
    );
    assert_eq!(emails(None, Which::Active, 4).await.len(), 6);
    assert_eq!(emails(None, Which::Lifted, 4).await, Vec::<String>::new());

    let lift = async |email: &str, why: &str| {
        suppressions::lift(&store, email, why, "admin", "2026-12-14T09:00:00.000Z")
            .await
            .unwrap()
    };
    assert_eq!(
        lift("anna@example.org", "  \t").await,
        LiftOutcome::NeedsReason
    );
    assert_eq!(
        lift("anna@example.org", &"x".repeat(501)).await,
        LiftOutcome::ReasonTooLong
    );
    for (email, reason) in [
        ("anna.b@example.org", "spam_complaint"),
        ("annabel@example.org", "rejected"),
        ("zed@example.org", "mystery"),
    ] {
        assert_eq!(
            lift(email, "the member asked").await,
            LiftOutcome::ConsentOptOut {
                reason: reason.into()
            },
            "{kind:?}: {email}"
        );
    }
    assert_eq!(
        lift("nobody@example.org", "why").await,
        LiftOutcome::NotSuppressed
    );
    let why = format!("{}\0 mailbox fixed", "é".repeat(480));
    assert_eq!(lift("anna@example.org", &why).await, LiftOutcome::Lifted);
    assert_eq!(
        lift("anna@other.net", "mailbox no longer full").await,
        LiftOutcome::Lifted
    );
    assert_eq!(
        lift("anna@example.org", "again").await,
        LiftOutcome::NotSuppressed,
        "a lifted suppression is not lifted twice"
    );
    assert!(
        !outbox::is_suppressed(&store, "anna@example.org")
            .await
            .unwrap()
    );
    assert!(
        outbox::is_suppressed(&store, "anna.b@example.org")
            .await
            .unwrap()
    );
    assert_eq!(
        emails(None, Which::Lifted, 10).await,
        ["anna@example.org", "anna@other.net"]
    );
    let lifts = suppressions::lifts(&store, "anna@example.org")
        .await
        .unwrap();
    assert_eq!(lifts.len(), 1, "{kind:?}");
    let l = &lifts[0];
    assert_eq!(
        (
            l.reason.as_str(),
            l.source.as_str(),
            l.lifted_by.as_str(),
            l.lifted_at.as_str()
        ),
        (
            "hard_bounce",
            "relay:smtp",
            "admin",
            "2026-12-14T09:00:00.000Z"
        )
    );
    assert_eq!(l.suppressed_at, t);
    assert_eq!(l.detail.as_deref(), Some("550 5.1.1"));
    assert_eq!(
        l.why,
        why.replace('\0', "\u{FFFD}"),
        "{kind:?}: the reason, trimmed"
    );
    // A new bounce suppresses the address again, and a second lift is recorded beside the first.
    suppress(
        &store,
        "anna@example.org",
        "hard_bounce",
        "relay:smtp",
        "2026-12-15T00:00:00.000Z",
    )
    .await;
    assert!(
        outbox::is_suppressed(&store, "anna@example.org")
            .await
            .unwrap()
    );
    assert_eq!(
        lift("anna@example.org", "fixed again").await,
        LiftOutcome::Lifted
    );
    let lifts = suppressions::lifts(&store, "anna@example.org")
        .await
        .unwrap();
    assert_eq!(
        lifts.iter().map(|l| l.why.as_str()).collect::<Vec<_>>()[0],
        "fixed again",
        "newest first"
    );
    assert_eq!(lifts.len(), 2);
    store.close().await;
}

kind_tests!(suppression_list_and_lifts:
    suppressions_sqlite => Sqlite,
    suppressions_postgres => Postgres,
);

// ---- members needing attention ----

async fn run(store: &Store, id: &str, audience: &str, status: &str, started: &str, report: &str) {
    sqlx::query(
        "INSERT INTO sync_runs (run_id, audience, provider, status, started_at, finished_at, report)
         VALUES ($1, $2, 'mailchimp', $3, $4, $4, $5)",
    )
    .bind(id)
    .bind(audience)
    .bind(status)
    .bind(started)
    .bind(report)
    .execute(store.pool())
    .await
    .unwrap();
}

async fn member_error(store: &Store, run_id: &str, key: &str, email: &str, at: &str) {
    sqlx::query(
        "INSERT INTO sync_errors (run_id, audience, member_key, email, code, message, created_at)
         VALUES ($1, 'news', $2, $3, 'invalid_resource', 'Mailchimp refused the merge field BIRTHDAY', $4)",
    )
    .bind(run_id)
    .bind(key)
    .bind(email)
    .bind(at)
    .execute(store.pool())
    .await
    .unwrap();
}

async fn contact(store: &Store, audience: &str, key: &str, email: &str, status: &str, at: &str) {
    sqlx::query(
        "INSERT INTO contacts (audience, member_key, email, content_hash, remote_status, synced_at)
         VALUES ($1, $2, $3, 'h', $4, $5)",
    )
    .bind(audience)
    .bind(key)
    .bind(email)
    .bind(status)
    .bind(at)
    .execute(store.pool())
    .await
    .unwrap();
}

/// What a row of the list says: concern, audience, member, address.
type Seen<'a> = (Concern, Option<&'a str>, Option<&'a str>, Option<&'a str>);

async fn members_needing_attention(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _db)) = state(kind, dir.path()).await else {
        return;
    };
    for name in ["news", "juniors"] {
        sqlx::query(
            "INSERT INTO audiences (name, provider, list_id, created_at) VALUES ($1, 'mailchimp', $1, 't')",
        )
        .bind(name)
        .execute(store.pool())
        .await
        .unwrap();
    }
    let skipped = serde_json::json!({"skipped": [
        {"member_key": "7", "email": "seven@example", "code": "invalid_email", "message": "`seven@example` is not a valid e-mail address: the domain needs at least one dot"},
        {"member_key": "8", "email": "one@example.org", "code": "duplicate_email", "message": "same address as member 1, who keeps it"},
        {"member_key": "9", "email": null, "code": "missing_email", "message": "the address is missing"},
        {"member_key": null, "email": "x@example.org", "code": "missing_member_key", "message": "the member key column is NULL or blank"},
        {"member_key": "10", "email": "gone@example.org", "code": "opted_out", "message": "the contact is unsubscribed at the provider"}
    ]})
    .to_string();
    // The older run's failures are history; the latest finished run's are listed. A later
    // refused run and a running one pushed nothing and change nothing.
    run(
        &store,
        "r1",
        "news",
        "partial",
        "2026-12-10T00:00:00.000Z",
        "{}",
    )
    .await;
    member_error(
        &store,
        "r1",
        "3",
        "three@example.org",
        "2026-12-10T00:00:01.000Z",
    )
    .await;
    run(
        &store,
        "r2",
        "news",
        "partial",
        "2026-12-11T00:00:00.000Z",
        &skipped,
    )
    .await;
    member_error(
        &store,
        "r2",
        "4",
        "four@example.org",
        "2026-12-11T00:00:01.000Z",
    )
    .await;
    run(
        &store,
        "r3",
        "news",
        "refused",
        "2026-12-12T00:00:00.000Z",
        "{}",
    )
    .await;
    run(
        &store,
        "r4",
        "news",
        "running",
        "2026-12-12T01:00:00.000Z",
        "{}",
    )
    .await;
    run(
        &store,
        "j1",
        "juniors",
        "succeeded",
        "2026-12-11T05:00:00.000Z",
        "not json",
    )
    .await;
    // Suppressions: a member's bounce, a complaint, a rejection, a lifted one (not listed).
    suppress(
        &store,
        "two@example.org",
        "hard_bounce",
        "relay:smtp",
        "2026-12-12T02:00:00.000Z",
    )
    .await;
    suppress(
        &store,
        "spam@example.org",
        "spam_complaint",
        "mailchimp:news",
        "2026-12-12T03:00:00.000Z",
    )
    .await;
    suppress(
        &store,
        "rej@example.org",
        "rejected",
        "mailchimp_transactional",
        "2026-12-12T04:00:00.000Z",
    )
    .await;
    suppress(
        &store,
        "fixed@example.org",
        "hard_bounce",
        "relay",
        "2026-12-01T00:00:00.000Z",
    )
    .await;
    assert_eq!(
        suppressions::lift(
            &store,
            "fixed@example.org",
            "works",
            "admin",
            "2026-12-02T00:00:00.000Z"
        )
        .await
        .unwrap(),
        LiftOutcome::Lifted
    );
    contact(
        &store,
        "juniors",
        "2",
        "two@example.org",
        "cleaned",
        "2026-12-12T02:00:00.000Z",
    )
    .await;
    contact(
        &store,
        "news",
        "5",
        "five@example.org",
        "cleaned",
        "2026-12-12T05:00:00.000Z",
    )
    .await;
    contact(
        &store,
        "news",
        "6",
        "six@example.org",
        "subscribed",
        "2026-12-12T05:00:00.000Z",
    )
    .await;

    let all = attention::needing_attention(&store, None, 100)
        .await
        .unwrap();
    let seen: Vec<Seen<'_>> = all
        .rows
        .iter()
        .map(|r| {
            (
                r.concern,
                r.audience.as_deref(),
                r.member_key.as_deref(),
                r.email.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                Concern::Cleaned,
                Some("news"),
                Some("5"),
                Some("five@example.org")
            ),
            (Concern::Rejected, None, None, Some("rej@example.org")),
            (Concern::Complained, None, None, Some("spam@example.org")),
            // The bounced address is member 2 of juniors (its cleaned contact is not listed twice).
            (
                Concern::Bounced,
                Some("juniors"),
                Some("2"),
                Some("two@example.org")
            ),
            (
                Concern::PushFailed,
                Some("news"),
                Some("4"),
                Some("four@example.org")
            ),
            (
                Concern::InvalidAddress,
                Some("news"),
                Some("7"),
                Some("seven@example")
            ),
            (
                Concern::DuplicateAddress,
                Some("news"),
                Some("8"),
                Some("one@example.org")
            ),
            (Concern::InvalidAddress, Some("news"), Some("9"), None),
            (Concern::BadRow, Some("news"), None, Some("x@example.org")),
        ],
        "{kind:?}: newest first"
    );
    assert_eq!(all.total, 9);
    assert_eq!(all.count(Concern::InvalidAddress), 2);
    let failed = &all.rows[4];
    assert_eq!(failed.run_id.as_deref(), Some("r2"));
    assert!(failed.why.contains("BIRTHDAY"), "{failed:?}");
    assert!(
        all.rows[3].why.contains("hard_bounce from relay:smtp"),
        "{:?}",
        all.rows[3]
    );
    assert!(!Concern::Bounced.todo().is_empty());

    // One concern, capped: the count stays whole.
    let some = attention::needing_attention(&store, Some(Concern::InvalidAddress), 1)
        .await
        .unwrap();
    assert_eq!((some.rows.len(), some.total), (1, 2), "{kind:?}");
    assert!(
        some.rows
            .iter()
            .all(|r| r.concern == Concern::InvalidAddress)
    );
    let complaints = attention::needing_attention(&store, Some(Concern::Complained), 10)
        .await
        .unwrap();
    assert_eq!(complaints.rows.len(), 1);
    assert_eq!(
        complaints.rows[0].email.as_deref(),
        Some("spam@example.org")
    );
    let rejected = attention::needing_attention(&store, Some(Concern::Rejected), 10)
        .await
        .unwrap();
    assert_eq!(rejected.rows.len(), 1);
    assert_eq!(rejected.rows[0].email.as_deref(), Some("rej@example.org"));
    store.close().await;
}

kind_tests!(members_needing_attention:
    attention_sqlite => Sqlite,
    attention_postgres => Postgres,
);

// ---- a bounce mail, end to end ----

/// A bounce mail about a sent message: the message's history says so, its retry is refused while
/// the bounce suppresses the address, the suppression is lifted, the retry goes, and the member
/// appears as needing attention until then.
async fn bounce_mail_history_lift_and_retry(kind: Kind) {
    let Some(env) = support::bounces::start(kind, true).await else {
        return;
    };
    let msg = env.sent_to("m2@example.org").await;
    let report = mailbridge::bounces::BounceReport {
        verp: Some(mailbridge::relay::verp::encode(
            &msg.id,
            support::bounces::DOMAIN,
            support::bounces::SECRET.as_bytes(),
        )),
        kind: mailbridge::bounces::BounceKind::Dsn,
        recipients: vec![mailbridge::bounces::Recipient {
            email: "m2@example.org".into(),
            action: Some("failed".into()),
            status: Some("5.1.1".into()),
            reply_code: Some(550),
            reason: mailbridge::bounces::Reason::UserUnknown,
            hard: Some(true),
            diagnostic: Some("550 5.1.1 no such user".into()),
        }],
        feedback_type: None,
        original_message_id: None,
        unsubscribe: None,
        not_bounce_reason: None,
    };
    env.ingest_and_apply(&report, "bounce mail 1").await;
    let history = outbox::attempts(&env.store, &msg.id).await.unwrap();
    assert_eq!(history.len(), 1, "{kind:?}: {history:?}");
    assert_eq!(history[0].outcome, turn::BOUNCE_MAIL);
    assert!(
        history[0].reply.as_deref().unwrap().contains("5.1.1"),
        "{history:?}"
    );

    let listed = attention::needing_attention(&env.store, Some(Concern::Bounced), 10)
        .await
        .unwrap();
    assert_eq!(listed.rows.len(), 1, "{kind:?}: {listed:?}");
    assert_eq!(listed.rows[0].member_key.as_deref(), Some("2"));

    let now = env.store.now_text();
    assert_eq!(
        outbox::retry_now(&env.store, &msg.id, &now).await.unwrap(),
        RetryOutcome::AddressSuppressed {
            reason: "hard_bounce".into()
        }
    );
    assert_eq!(
        suppressions::lift(&env.store, "m2@example.org", "new mailbox", "admin", &now)
            .await
            .unwrap(),
        LiftOutcome::Lifted
    );
    assert_eq!(
        outbox::retry_now(&env.store, &msg.id, &now).await.unwrap(),
        RetryOutcome::Requeued
    );
    assert_eq!(env.status(&msg.id).await.status, Status::Queued);
    let turns: Vec<String> = outbox::attempts(&env.store, &msg.id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(turns, [turn::BOUNCE_MAIL, turn::REQUEUED]);
    assert_eq!(
        attention::needing_attention(&env.store, Some(Concern::Bounced), 10)
            .await
            .unwrap()
            .total,
        0
    );
}

kind_tests!(bounce_mail_history_lift_and_retry:
    bounce_mail_sqlite => Sqlite,
    bounce_mail_postgres => Postgres,
);
