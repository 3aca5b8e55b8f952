//! Bounce ingest: whatever arrives by the pipe alias, `POST /v1/bounces` or the IMAP mailbox,
//! `ingest` answers without panicking and acts only through what the state DB knows: every event
//! it records is about the one relay message the DB holds, to its recipient; the same bytes twice
//! change nothing the second time.
//!
//! One state DB (SQLite, in a temporary directory) for the whole run, with one sent message. In a
//! seed, `{VERP}` stands for that message's VERP bounce address and `{MESSAGE_ID}` for its
//! Message-ID, so the seeds reach the code that applies a bounce; mutations break them at will.

use std::sync::OnceLock;

use mailbridge::bounces::ingest::{self, Ingest, Outcome};
use mailbridge::config::{Config, DbUrl, RelayConfig};
use mailbridge::relay::{NewMessage, outbox};
use mailbridge::store::{OpenMode, Store};
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;

/// The message's recipient: the only address an event may name.
const RECIPIENT: &str = "ann@example.org";

struct World {
    runtime: tokio::runtime::Runtime,
    store: Store,
    relay: RelayConfig,
    verp: String,
    message_id: String,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let text = r#"
[members]
url = "sqlite://m.db"
mapping = "m.toml"
[relay]
from = "Riverside Rowing Club <club@club.example>"
routes = ["sendmail"]
bounce_domain = "bounces.club.example"
verp_secret = "fuzz-secret-0123456789abcdef"
"#;
        let relay = Config::from_str_with_env(std::path::Path::new("t.toml"), text, &|_| None)
            .expect("config")
            .relay
            .expect("[relay]");
        let url = DbUrl::parse(
            &format!("sqlite://{}", dir.path().join("state.db").display()),
            dir.path(),
        )
        .expect("url");
        let (store, queued) = runtime.block_on(async {
            let store = Store::open(&url, OpenMode::ReadWrite)
                .await
                .expect("state DB");
            store.migrate().await.expect("migrate");
            let message = NewMessage {
                to: RECIPIENT.into(),
                subject: "Welcome".into(),
                text: "Welcome to the club.\n".into(),
                html: None,
                reply_to: None,
                headers: Default::default(),
                category: "registration".into(),
            };
            let queued = outbox::enqueue(&store, &relay, &message)
                .await
                .expect("enqueue");
            // Handed to the relay route (delivery is not this target's subject).
            sqlx::query("UPDATE outbox SET status = 'sent' WHERE id = $1")
                .bind(&queued.id)
                .execute(store.pool())
                .await
                .expect("mark sent");
            (store, queued)
        });
        let verp = mailbridge::relay::verp::encode(
            &queued.id,
            "bounces.club.example",
            b"fuzz-secret-0123456789abcdef",
        );
        World {
            runtime,
            store,
            relay,
            verp,
            message_id: queued.message_id.trim_matches(['<', '>']).to_owned(),
            _dir: dir,
        }
    })
}

/// Addresses the recorded relay events name.
fn event_addresses(w: &World) -> Vec<Option<String>> {
    w.runtime.block_on(async {
        sqlx::query_as::<_, (Option<String>,)>(
            "SELECT email FROM provider_events WHERE provider = 'relay'",
        )
        .fetch_all(w.store.pool())
        .await
        .expect("read events")
        .into_iter()
        .map(|(e,)| e)
        .collect()
    })
}

pub fn check(input: &[u8]) -> TestCaseResult {
    let w = world();
    let raw = replace(
        &replace(input, b"{VERP}", w.verp.as_bytes()),
        b"{MESSAGE_ID}",
        w.message_id.as_bytes(),
    );
    let ctx = || Ingest {
        store: &w.store,
        relay: Some(&w.relay),
    };
    let first = w.runtime.block_on(ingest::ingest(ctx(), &raw, false));
    let first = match first {
        Ok(result) => result,
        Err(ingest::IngestError::TooLarge { .. }) => {
            prop_assert!(raw.len() > ingest::MAX_BOUNCE_BYTES);
            return Ok(());
        }
        Err(e) => return Err(TestCaseError::fail(format!("ingest failed: {e}"))),
    };
    // An effect that acts (not `none`, which only says why something was ignored) is on the
    // message's recipient.
    for effect in first.effects.iter().filter(|e| e.action != "none") {
        prop_assert_eq!(effect.email.as_str(), RECIPIENT, "{:?}", first);
    }
    for email in event_addresses(w) {
        prop_assert_eq!(email.as_deref(), Some(RECIPIENT));
    }
    // The same bytes again: a duplicate (a refusal is not stored, so it is refused again).
    let events_before = event_addresses(w).len();
    let again = w
        .runtime
        .block_on(ingest::ingest(ctx(), &raw, false))
        .map_err(|e| TestCaseError::fail(format!("second ingest failed: {e}")))?;
    if first.outcome == Outcome::Refused {
        prop_assert_eq!(again.outcome, Outcome::Refused);
    } else {
        prop_assert_eq!(again.outcome, Outcome::Duplicate, "{:?}", again);
    }
    prop_assert_eq!(event_addresses(w).len(), events_before);
    Ok(())
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}
