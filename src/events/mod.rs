//! Provider events: unsubscribes, cleaned addresses and spam complaints read back from the
//! provider, recorded once each (`provider_events`, unique dedupe key), written back to the member
//! DB with the mapping's writeback statements, and added to `suppressions` when the address must
//! get no more mail. Owns the SQL of `provider_events`, `suppressions` and `cursors`.

pub mod apply;
pub mod ingest;
pub mod opt_out;
pub mod poll;
pub mod worker;

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::config::{AudienceConfig, DbKind, ProviderKind};
use crate::domain::{ReportError, parse_time};
use crate::mapping::{Mapping, MappingError};
use crate::providers::{
    NewEvent, Provider, ProviderError, ProviderSet, RemoteChange, not_after_now,
};
use crate::source::MemberSource;
use crate::store::{Store, StoreError, now_text};

/// Why a pull stopped. Its messages are the ones a sync gives for the same causes (a sync's pull
/// is this one).
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{provider}: {0}", provider = .0.provider_name())]
    Provider(#[from] ProviderError),
}

/// The name of an audience's member-pull cursor at `provider` (`mailchimp.members`, as stored
/// since the first release).
pub fn members_cursor(provider: ProviderKind) -> String {
    format!("{}.members", provider.as_str())
}

/// The lease that lets one process at a time write events back to the member DB: `serve`'s
/// writeback worker, or a `pull`/`sync` run. Two appliers on the same events would write each
/// back twice and count a failed attempt twice (retrying it sooner and giving up earlier).
pub const WRITEBACK_LOCK: &str = "events:writeback";
/// How long a `pull` or `sync` waits for the writeback lease before leaving its events to the
/// process that holds it.
const WRITEBACK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

const INSERT_EVENT: &str = "INSERT INTO provider_events (dedupe_key, provider, audience, list_id, event_type, email, member_key, reason, fired_at, payload, received_at, verified, outcome, applied_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
     ON CONFLICT (dedupe_key) DO NOTHING";

/// Stores one event in `executor`'s transaction; `Ok(false)` when it was a duplicate.
pub async fn insert_event<'e, E>(executor: E, event: &NewEvent) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let now = now_text();
    let done = sqlx::query(INSERT_EVENT)
        .bind(event.dedupe_key())
        .bind(event.provider)
        .bind(event.audience.as_deref())
        .bind(event.list_id.as_deref())
        .bind(&event.event_type)
        .bind(event.email.as_deref())
        .bind(event.member_key.as_deref())
        .bind(event.reason.as_deref())
        .bind(&event.fired_at)
        .bind(&event.payload)
        .bind(&now)
        .bind(i64::from(event.verified))
        .bind(event.ignored)
        .bind(event.ignored.map(|_| now.as_str()))
        .execute(executor)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// What a pull did.
#[derive(Clone, Debug, Default)]
pub struct PullOutcome {
    pub unsubscribes: u64,
    pub bounces: u64,
    /// Addresses newly put on the suppression list.
    pub suppressed: u64,
    /// Events about an address no member has (applied, nothing written back).
    pub unmatched: u64,
    /// Events that could not be written back (retried on the next run).
    pub errors: Vec<ReportError>,
    /// The process that holds the writeback lease (a running `serve`), when this run left the
    /// recorded events to it instead of writing them back itself.
    pub left_to: Option<String>,
}

/// What the provider last said about an address, from recorded events.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderMark {
    pub event_type: String,
    pub occurred_at: Option<DateTime<Utc>>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Reads the stored cursor.
pub async fn cursor(
    store: &Store,
    audience: &str,
    name: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT position FROM cursors WHERE audience = $1 AND name = $2")
            .bind(audience)
            .bind(name)
            .fetch_optional(store.pool())
            .await
            .map_err(StoreError::query("read a cursor"))?;
    Ok(row.and_then(|(p,)| parse_time(&p)))
}

async fn set_cursor(
    store: &Store,
    audience: &str,
    name: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO cursors (audience, name, position, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (audience, name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
    )
    .bind(audience)
    .bind(name)
    .bind(rfc3339(at))
    .bind(now_text())
    .execute(store.pool())
    .await
    .map_err(StoreError::query("write a cursor"))?;
    Ok(())
}

/// How far before the cursor a pull reads again: a change the provider indexes a little late
/// (its time is earlier than the newest one already read) is still found. Reading a change twice
/// records it once (the dedupe key).
pub const PULL_OVERLAP: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// Pull (behaviour 1): members whose status became unsubscribed, cleaned or pending since the
/// cursor are recorded as events, written back, suppressed where needed; then the cursor moves.
/// `from_scratch` (`--full`, or no cursor yet) reads the whole audience for those statuses.
pub async fn pull(
    audience: &AudienceConfig,
    mapping: &Mapping,
    store: &Store,
    source: &MemberSource,
    client: &Provider,
    from_scratch: bool,
) -> Result<PullOutcome, PullError> {
    // The audience must have a mapping before anything is recorded for it.
    mapping.audience(&audience.name)?;
    record_changes(audience, store, client, from_scratch).await?;
    apply_pending(audience, mapping, store, source, client).await
}

/// Records as events what changed at the provider since the audience's cursor (the pull overlap
/// before it; ever, when `from_scratch` or without a cursor), then moves the cursor; returns
/// how many changes were read.
pub async fn record_changes(
    audience: &AudienceConfig,
    store: &Store,
    client: &Provider,
    from_scratch: bool,
) -> Result<u64, PullError> {
    let name = members_cursor(audience.provider);
    let cursor = if from_scratch {
        None
    } else {
        cursor(store, &audience.name, &name).await?
    };
    let since = cursor.map(|t| t - PULL_OVERLAP);
    let mut newest = cursor;
    let mut read = 0u64;
    let mut page: Option<String> = None;
    loop {
        let got = client
            .changes(&audience.list_id, since, page.as_deref())
            .await?;
        for change in &got.changes {
            record(store, audience, change).await?;
            read += 1;
            if let Some(t) = change.at {
                newest = Some(newest.map_or(t, |n| n.max(t)));
            }
        }
        match got.next {
            Some(next) => page = Some(next),
            None => break,
        }
    }
    // Every change before the cursor is durable in provider_events (applied, or applied later
    // from there), so moving the cursor loses nothing.
    if let Some(t) = newest
        && Some(t) != cursor
    {
        set_cursor(store, &audience.name, &name, t).await?;
    }
    Ok(read)
}

async fn record(
    store: &Store,
    audience: &AudienceConfig,
    change: &RemoteChange,
) -> Result<(), PullError> {
    let now = Utc::now();
    let fired_at = rfc3339(change.at.map_or(now, |t| not_after_now(t, now)));
    let event = NewEvent {
        provider: audience.provider.as_str(),
        audience: Some(audience.name.clone()),
        list_id: Some(audience.list_id.clone()),
        event_type: change.event_type.to_owned(),
        email: Some(change.email.trim().to_lowercase()),
        // The member is the one the state DB ties to the list and address, found when the
        // event is applied; a merge field (which a subscriber may edit) selects nobody.
        member_key: None,
        reason: change.reason.clone(),
        fired_at,
        source_id: None,
        payload: change.payload.to_string(),
        // Read from the provider's API.
        verified: true,
        ignored: None,
    };
    insert_event(store.pool(), &event)
        .await
        .map_err(StoreError::query("record a provider event"))?;
    Ok(())
}

/// Writes back every unapplied event of the audience's list, oldest first (the pull's step;
/// `serve` runs the same engine over all events, see [`apply::apply_events`]).
pub async fn apply_pending(
    audience: &AudienceConfig,
    mapping: &Mapping,
    store: &Store,
    source: &MemberSource,
    provider: &Provider,
) -> Result<PullOutcome, PullError> {
    let providers = ProviderSet::new([provider.clone()]);
    let ctx = Leased {
        mapping,
        store,
        source,
        audiences: std::slice::from_ref(audience),
        soft_bounces: apply::SoftBouncePolicy::default(),
        providers: &providers,
    };
    apply_leased(&ctx, apply::Scope::List(audience), "pull").await
}

/// Writes back the stored events `ids` now, under the writeback lease (`bounce ingest`: the
/// events its bounce mail recorded). When another process holds the lease (a running `serve`),
/// they are left to it ([`PullOutcome::left_to`]).
pub async fn apply_now(
    mapping: &Mapping,
    store: &Store,
    source: &MemberSource,
    soft_bounces: apply::SoftBouncePolicy,
    ids: &[i64],
) -> Result<PullOutcome, PullError> {
    if ids.is_empty() {
        return Ok(PullOutcome::default());
    }
    let providers = ProviderSet::new([]);
    let ctx = Leased {
        mapping,
        store,
        source,
        audiences: &[],
        soft_bounces,
        providers: &providers,
    };
    apply_leased(&ctx, apply::Scope::Ids(ids), "bounce").await
}

/// What [`apply_leased`] builds its [`apply::ApplyContext`] from.
struct Leased<'a> {
    mapping: &'a Mapping,
    store: &'a Store,
    source: &'a MemberSource,
    audiences: &'a [AudienceConfig],
    soft_bounces: apply::SoftBouncePolicy,
    providers: &'a ProviderSet,
}

/// Applies the events of `scope` under the writeback lease, waiting a while for a process that
/// holds it; `kind` names this process's holder.
async fn apply_leased(
    parts: &Leased<'_>,
    scope: apply::Scope<'_>,
    kind: &str,
) -> Result<PullOutcome, PullError> {
    let store = parts.store;
    let mut out = PullOutcome::default();
    let mut lease = worker::WritebackLease::default();
    // `serve`'s worker holds the lease only while it applies events: wait for it that long.
    let waited_until = std::time::Instant::now() + WRITEBACK_WAIT;
    let mut busy = lease.hold(store, kind).await?;
    while busy.is_some() && std::time::Instant::now() < waited_until {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        busy = lease.hold(store, kind).await?;
    }
    if let Some(current) = busy {
        // Still busy: its worker applies these events too (they are durable in
        // provider_events, and the sync's consent checks read them there).
        tracing::info!(
            holder = %current,
            "Another process writes provider events back to the member database; the recorded events are left to it"
        );
        out.left_to = Some(current);
        return Ok(out);
    }
    let Some(watch) = lease.watch() else {
        return Ok(out);
    };
    let ctx = apply::ApplyContext {
        mapping: parts.mapping,
        store,
        source: parts.source,
        audiences: parts.audiences,
        soft_bounces: parts.soft_bounces,
        providers: parts.providers,
        lease: Some(&watch),
    };
    let applied = async {
        loop {
            let round = apply::apply_events(&ctx, scope, 1000).await?;
            out.unsubscribes += round.unsubscribes;
            out.bounces += round.bounces;
            out.suppressed += round.suppressed;
            out.unmatched += round.unmatched;
            out.errors.extend(round.errors);
            if round.lease_lost {
                // This process stalled past the lease and another took it over: the rest is
                // the new holder's, and what this run applied stays applied.
                tracing::warn!(
                    "The writeback lease was lost during the pull; the remaining events are left to the process that took it over"
                );
                return Ok::<Option<String>, PullError>(Some(
                    "the process that took the writeback lease over".to_owned(),
                ));
            }
            if round.seen < 1000 || round.member_db_down || round.seen == round.failed {
                return Ok(None);
            }
        }
    }
    .await;
    lease.release().await;
    out.left_to = applied?;
    Ok(out)
}

/// Event types that say what an address's subscription status is (others, such as `profile`
/// or `campaign`, say nothing about consent and must not hide one that does).
const STATUS_EVENTS: [&str; 5] = [
    "subscribed",
    "unsubscribed",
    "pending",
    "cleaned",
    "complained",
];

/// The latest status event per address for a list (what the provider last said about consent).
/// Only verified events count: an unsigned webhook says nothing until its provider confirmed it.
pub async fn provider_marks(
    store: &Store,
    provider: &str,
    list_id: &str,
) -> Result<HashMap<String, ProviderMark>, StoreError> {
    let rows: Vec<(Option<String>, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT email, event_type, fired_at FROM provider_events
         WHERE provider = $1 AND list_id = $2 AND verified = 1 AND event_type IN ('{}')
         ORDER BY id",
        STATUS_EVENTS.join("', '")
    )))
    .bind(provider)
    .bind(list_id)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::query("read provider events"))?;
    let mut out: HashMap<String, ProviderMark> = HashMap::new();
    for (email, kind, fired_at) in rows {
        let Some(email) = email else { continue };
        let mark = ProviderMark {
            event_type: kind,
            occurred_at: parse_time(&fired_at),
        };
        // At the same instant the one stored later wins (the provider's times have whole
        // seconds; the order we learned of them is the better guess).
        if out
            .get(&email)
            .is_none_or(|old| old.occurred_at <= mark.occurred_at)
        {
            out.insert(email, mark);
        }
    }
    Ok(out)
}

/// The SQL condition that a `provider_events` row (columns prefixed with `alias`, such as `"n."`
/// or `""`) is an event of the address `email` (an SQL expression: a parameter, or an outer
/// query's column). A SQLite state DB has no index by address on `provider_events`: the dedupe
/// keys start with the address ([`NewEvent::dedupe_key`]), so there the condition is also the
/// range of the key's unique index that holds that address's keys.
pub(crate) fn same_email_sql(kind: DbKind, alias: &str, email: &str) -> String {
    match kind {
        DbKind::Sqlite => format!(
            "{alias}email = {email} \
             AND {alias}dedupe_key >= (replace({email}, char(31), '') || char(31)) \
             AND {alias}dedupe_key < (replace({email}, char(31), '') || ' ')"
        ),
        DbKind::Postgres | DbKind::MySql => format!("{alias}email = {email}"),
    }
}

/// Deletes up to `limit` provider events processed (applied, ignored, superseded, unmatched)
/// before `before` (RFC 3339 text) and received and fired before it too; returns how many.
/// Unapplied events are never deleted. Neither is a status event that is still the latest word
/// on its address: the consent rule ([`provider_marks`]) and the out-of-order check read the
/// newest one, so a status event goes only once a newer one of the same provider, list and
/// address is itself verified and applied. Soft bounces are counted over a window that
/// `[retention]` keeps events for at least.
pub async fn prune_processed(store: &Store, before: &str, limit: i64) -> Result<u64, StoreError> {
    let done = sqlx::query(sqlx::AssertSqlSafe(prune_sql(store.kind())))
        .bind(before)
        .bind(limit)
        .execute(store.pool())
        .await
        .map_err(StoreError::query("delete old provider events"))?;
    Ok(done.rows_affected())
}

/// [`prune_processed`]'s statement: `$1` the time before which, `$2` the limit.
fn prune_sql(kind: DbKind) -> String {
    let statuses = STATUS_EVENTS.join("', '");
    let same_email = same_email_sql(kind, "n.", "e.email");
    format!(
        "DELETE FROM provider_events WHERE id IN (
             SELECT e.id FROM provider_events e
             WHERE e.applied_at IS NOT NULL AND e.applied_at < $1
               AND e.received_at < $1 AND e.fired_at < $1
               AND (e.email IS NULL OR e.event_type NOT IN ('{statuses}') OR EXISTS (
                   SELECT 1 FROM provider_events n
                   WHERE {same_email} AND n.provider = e.provider
                     AND COALESCE(n.list_id, '') = COALESCE(e.list_id, '')
                     AND n.event_type IN ('{statuses}')
                     AND n.verified = 1 AND n.applied_at IS NOT NULL
                     AND (n.outcome IS NULL OR n.outcome = 'applied')
                     AND (n.fired_at > e.fired_at OR (n.fired_at = e.fired_at AND n.id > e.id))))
             ORDER BY e.applied_at, e.id
             LIMIT $2)"
    )
}

/// When the newest provider event of `audience` (webhook or poll) was received, and when its
/// pull cursor last moved: whether events still arrive (the admin overview's health line).
pub async fn last_received(
    store: &Store,
    audience: &str,
) -> Result<(Option<String>, Option<String>), StoreError> {
    let event: Option<(String,)> = sqlx::query_as(
        "SELECT received_at FROM provider_events WHERE audience = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(audience)
    .fetch_optional(store.pool())
    .await
    .map_err(StoreError::query("read the newest provider event"))?;
    let cursor: Option<(Option<String>,)> =
        sqlx::query_as("SELECT MAX(updated_at) FROM cursors WHERE audience = $1")
            .bind(audience)
            .fetch_optional(store.pool())
            .await
            .map_err(StoreError::query("read the pull cursors"))?;
    Ok((event.map(|(t,)| t), cursor.and_then(|(t,)| t)))
}

/// Addresses on the suppression list (not lifted), each with the reason it was added for.
pub async fn suppressed(store: &Store) -> Result<HashMap<String, String>, StoreError> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT email, reason FROM suppressions WHERE lifted_at IS NULL")
            .fetch_all(store.pool())
            .await
            .map_err(StoreError::query("read suppressions"))?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DbUrl;
    use crate::store::OpenMode;

    fn event(email: &str, event_type: &str) -> NewEvent {
        NewEvent {
            provider: "mailchimp",
            audience: None,
            list_id: Some("l1".into()),
            event_type: event_type.into(),
            email: Some(email.into()),
            member_key: None,
            reason: None,
            fired_at: "2026-11-28T10:00:00.000Z".into(),
            source_id: None,
            payload: "{}".into(),
            verified: true,
            ignored: None,
        }
    }

    /// On SQLite an address's events are found through the dedupe key's index, and exactly
    /// they: not those of an address that starts the same, nor of one that differs only by the
    /// separator, whatever characters around it the addresses hold. The plans read that index,
    /// not the table (there is no other index by address).
    #[tokio::test]
    async fn an_address_finds_its_own_events_through_the_key_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = DbUrl::parse("sqlite://state.db", dir.path()).expect("url");
        let store = Store::open(&url, OpenMode::ReadWrite).await.expect("open");
        store.migrate().await.expect("migrate");
        let emails = [
            "a@example.org",
            "a@example.org.uk",
            "a@example.or",
            "a\u{1f}b@example.org",
            "ab@example.org",
            "a\u{1}@example.org",
            "a\u{7f}@example.org",
            "a ",
            "",
        ];
        for email in emails {
            for kind in ["unsubscribed", "soft_bounce"] {
                assert!(
                    insert_event(store.pool(), &event(email, kind))
                        .await
                        .expect("insert")
                );
            }
        }
        let sql = format!(
            "SELECT email, event_type FROM provider_events WHERE {} ORDER BY event_type",
            same_email_sql(DbKind::Sqlite, "", "$1")
        );
        for email in emails {
            let found: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(email)
                .fetch_all(store.pool())
                .await
                .expect("query");
            let expected = [
                (email.to_owned(), "soft_bounce".to_owned()),
                (email.to_owned(), "unsubscribed".to_owned()),
            ];
            assert_eq!(found, expected, "{email:?}");
        }
        // The parameters are the address (the prune's cutoff) and the prune's limit.
        let plan = |sql: String, params: usize| {
            let store = store.clone();
            async move {
                let explain = format!("EXPLAIN QUERY PLAN {sql}");
                let mut query = sqlx::query_as(sqlx::AssertSqlSafe(explain)).bind("a@example.org");
                if params == 2 {
                    query = query.bind(10_i64);
                }
                let rows: Vec<(i64, i64, i64, String)> =
                    query.fetch_all(store.pool()).await.expect("plan");
                rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
            }
        };
        let by_address = plan(sql.clone(), 1).await;
        assert!(
            by_address.contains("USING INDEX sqlite_autoindex_provider_events_1"),
            "{by_address}"
        );
        let prune = plan(prune_sql(DbKind::Sqlite), 2).await;
        assert!(
            prune.contains("SEARCH n USING INDEX sqlite_autoindex_provider_events_1"),
            "{prune}"
        );
    }

    /// A state DB migrated before the dedupe key started with the address: the migration gives
    /// every stored key that start, so a retried delivery of an event stored before it is still
    /// a duplicate, and on SQLite the event is found by its address. SQLite, and PostgreSQL at
    /// `MAILBRIDGE_TEST_PG` (default the CI server; skipped without one unless `CI` is set).
    #[tokio::test]
    async fn keys_stored_before_get_the_address_first() {
        use sqlx::Connection;
        const BEFORE: i64 = 20261213200500;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut stores = vec![(
            Store::open(
                &DbUrl::parse("sqlite://state.db", dir.path()).expect("url"),
                OpenMode::ReadWrite,
            )
            .await
            .expect("open"),
            None,
        )];
        let admin = std::env::var("MAILBRIDGE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        match sqlx::postgres::PgConnection::connect(&admin).await {
            Ok(mut conn) => {
                let name = format!("mbunit_keys_{:08x}", rand::random::<u32>());
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create database");
                let (base, _) = admin.rsplit_once('/').expect("a URL ending in /<database>");
                let url = DbUrl::parse(&format!("{base}/{name}"), dir.path()).expect("url");
                let store = Store::open(&url, OpenMode::ReadWrite).await.expect("open");
                stores.push((store, Some((conn, name))));
            }
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("SKIPPED on PostgreSQL: none at {admin}: {e}");
            }
            Err(e) => panic!("no PostgreSQL at {admin} and CI is set: {e}"),
        }
        for (store, pg) in stores {
            store.migrate_to(BEFORE).await.expect("older migrations");
            let tricky = event("a\u{1f}b@example.org", "unsubscribed");
            let plain = event("c@example.org", "cleaned");
            for e in [&tricky, &plain] {
                // The key as the release before this one made it: the new key after its address.
                let key = e.dedupe_key();
                let (_, old) = key.split_once('\u{1f}').expect("a separator");
                sqlx::query(
                    "INSERT INTO provider_events (dedupe_key, provider, list_id, event_type, email, fired_at, payload, received_at, verified)
                     VALUES ($1, 'mailchimp', 'l1', $2, $3, $4, '{}', $4, 1)",
                )
                .bind(old)
                .bind(&e.event_type)
                .bind(e.email.as_deref())
                .bind(&e.fired_at)
                .execute(store.pool())
                .await
                .expect("an event stored before");
            }
            store.migrate().await.expect("migrate");
            for e in [&tricky, &plain] {
                let stored: Vec<String> =
                    sqlx::query_scalar("SELECT dedupe_key FROM provider_events WHERE email = $1")
                        .bind(e.email.as_deref())
                        .fetch_all(store.pool())
                        .await
                        .expect("read");
                assert_eq!(stored, vec![e.dedupe_key()], "{:?}", store.kind());
                assert!(
                    !insert_event(store.pool(), e).await.expect("insert"),
                    "a retried delivery is a duplicate ({:?})",
                    store.kind()
                );
            }
            store.close().await;
            if let Some((mut conn, name)) = pg {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await;
            }
        }
    }
}
