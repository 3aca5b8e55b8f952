use std::path::Path;

use chrono::{Duration, TimeZone};

use super::*;
use crate::mapping::Mapping;
use crate::store::contacts::{ContactState, StoredHash};
use crate::sync::plan;

use Decision::{Hold as H, KeepStatus, Push};
use SubscriptionStatus::{Cleaned, Pending, Subscribed, Unsubscribed};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap()
}
fn before() -> DateTime<Utc> {
    t0() - Duration::minutes(1)
}
fn after() -> DateTime<Utc> {
    t0() + Duration::minutes(1)
}

fn mark(kind: &str, at: Option<DateTime<Utc>>) -> ProviderMark {
    ProviderMark {
        event_type: kind.to_owned(),
        occurred_at: at,
    }
}

/// The consent rule as a table: the inputs of one member and what may be pushed.
#[test]
fn the_consent_rule() {
    let unsub = mark("unsubscribed", Some(t0()));
    let unsub_undated = mark("unsubscribed", None);
    let pending = mark("pending", Some(t0()));
    let subscribed = mark("subscribed", Some(t0()));
    let cleaned = mark("cleaned", Some(t0()));
    let complained = mark("complained", Some(t0()));
    let given_at = |t| Evidence {
        consent_at: Some(t),
        withheld_seen_at: None,
    };
    let seen_withheld_at = |t| Evidence {
        consent_at: None,
        withheld_seen_at: Some(t),
    };
    let both_later = Evidence {
        consent_at: Some(after()),
        withheld_seen_at: Some(after()),
    };
    let none = Evidence::default();
    let case = |mark, remote, evidence| Case {
        refused_address: false,
        suppressed: false,
        mark,
        remote,
        evidence,
    };
    let rows: Vec<(&str, Case<'_>, Decision)> = vec![
        (
            "new member",
            case(None, None, none),
            Push(WriteStatus::Subscribed),
        ),
        (
            "synced member",
            case(None, Some(Subscribed), none),
            Push(WriteStatus::Subscribed),
        ),
        (
            "subscribed again at the provider",
            case(Some(&subscribed), Some(Subscribed), none),
            Push(WriteStatus::Subscribed),
        ),
        (
            "pending contact",
            case(None, Some(Pending), none),
            KeepStatus,
        ),
        (
            "pending at the provider, no contact",
            case(Some(&pending), None, none),
            KeepStatus,
        ),
        // Opt-outs without evidence: a profile edit gives none (updated_at is no input at all).
        (
            "unsubscribed, no evidence",
            case(Some(&unsub), Some(Unsubscribed), none),
            H(Hold::Unsubscribed),
        ),
        (
            "unsubscribed, no contact, no evidence",
            case(Some(&unsub), None, none),
            H(Hold::Unsubscribed),
        ),
        (
            "unsubscribed, contact still subscribed",
            case(Some(&unsub), Some(Subscribed), none),
            H(Hold::Unsubscribed),
        ),
        (
            "unsubscribed after the pending push",
            case(Some(&unsub), Some(Pending), none),
            H(Hold::Unsubscribed),
        ),
        // (a) consent_at.
        (
            "consent_at later",
            case(Some(&unsub), Some(Unsubscribed), given_at(after())),
            Push(WriteStatus::Pending),
        ),
        (
            "consent_at earlier",
            case(Some(&unsub), Some(Unsubscribed), given_at(before())),
            H(Hold::Unsubscribed),
        ),
        (
            "consent_at at the same instant",
            case(Some(&unsub), Some(Unsubscribed), given_at(t0())),
            H(Hold::Unsubscribed),
        ),
        (
            "consent_at later, no contact",
            case(Some(&unsub), None, given_at(after())),
            Push(WriteStatus::Pending),
        ),
        // (b) seen withheld after the opt-out, given now.
        (
            "seen withheld later",
            case(Some(&unsub), Some(Unsubscribed), seen_withheld_at(after())),
            Push(WriteStatus::Pending),
        ),
        (
            "seen withheld earlier",
            case(Some(&unsub), Some(Unsubscribed), seen_withheld_at(before())),
            H(Hold::Unsubscribed),
        ),
        (
            "seen withheld later, no contact",
            case(Some(&unsub), None, seen_withheld_at(after())),
            Push(WriteStatus::Pending),
        ),
        // Opt-outs no evidence can follow.
        (
            "unsubscribe of unknown time",
            case(Some(&unsub_undated), Some(Unsubscribed), both_later),
            H(Hold::Unsubscribed),
        ),
        (
            "unsubscribed contact, no event",
            case(None, Some(Unsubscribed), both_later),
            H(Hold::Unsubscribed),
        ),
        (
            "unsubscribed contact, later pending event",
            case(Some(&pending), Some(Unsubscribed), both_later),
            H(Hold::Unsubscribed),
        ),
        (
            "unsubscribed contact, later subscribed event",
            case(Some(&subscribed), Some(Unsubscribed), both_later),
            H(Hold::Unsubscribed),
        ),
        // Never again, whatever the evidence.
        (
            "cleaned",
            case(Some(&cleaned), Some(Subscribed), both_later),
            H(Hold::Cleaned),
        ),
        (
            "complained",
            case(Some(&complained), Some(Unsubscribed), both_later),
            H(Hold::Cleaned),
        ),
        (
            "cleaned contact",
            case(None, Some(Cleaned), both_later),
            H(Hold::Cleaned),
        ),
        (
            "suppressed",
            Case {
                suppressed: true,
                ..case(Some(&unsub), Some(Unsubscribed), both_later)
            },
            H(Hold::Cleaned),
        ),
        (
            "suppressed new member",
            Case {
                suppressed: true,
                ..case(None, None, none)
            },
            H(Hold::Cleaned),
        ),
        (
            "refused address",
            Case {
                refused_address: true,
                ..case(None, Some(Subscribed), none)
            },
            H(Hold::RefusedAddress),
        ),
    ];
    let mut wrong = Vec::new();
    for (name, case, want) in &rows {
        let got = rule(case);
        if got != *want {
            wrong.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Re-consent is never pushed as `subscribed`.
    for (name, case, _) in &rows {
        if case.mark.is_some_and(|m| m.event_type == "unsubscribed")
            || case.remote == Some(Unsubscribed)
        {
            assert_ne!(rule(case), Push(WriteStatus::Subscribed), "{name}");
        }
    }
}

fn key(k: &str) -> MemberKey {
    MemberKey::parse(k).unwrap()
}

fn seen(consent: Consent, seen_at: DateTime<Utc>, withheld_at: DateTime<Utc>) -> SeenConsent {
    SeenConsent {
        consent,
        seen_at,
        withheld_at,
    }
}

/// One row of the observation table: a member's stored observation, what the row says now,
/// and what the run records.
struct Seen {
    name: &'static str,
    before: Option<SeenConsent>,
    key: &'static str,
    now: Consent,
    email: Option<&'static str>,
    records: Option<SeenConsent>,
}

/// What a real run records about the consent column, as a table.
#[test]
fn what_a_run_records() {
    use Consent::{Given, Withheld};
    let now = t0() + Duration::days(1);
    let long_ago = t0() - Duration::days(30);
    let mut facts = ConsentFacts::default();
    for (email, at) in [
        ("row@x.org", Some(t0())),
        ("stored@x.org", Some(t0())),
        ("undated@x.org", None),
    ] {
        facts.marks.insert(email.into(), mark("unsubscribed", at));
    }
    facts
        .held
        .insert(key("7"), ("stored@x.org".into(), Unsubscribed));
    let row = |name, before, key, now, email, records| Seen {
        name,
        before,
        key,
        now,
        email,
        records,
    };
    let rows = [
        row(
            "given, never seen withheld",
            None,
            "1",
            Given,
            Some("a@x.org"),
            None,
        ),
        row(
            "given, as last recorded",
            Some(seen(Given, long_ago, long_ago)),
            "1",
            Given,
            Some("a@x.org"),
            None,
        ),
        row(
            "given after withheld",
            Some(seen(Withheld, after(), after())),
            "1",
            Given,
            Some("row@x.org"),
            Some(seen(Given, now, after())),
        ),
        row(
            "withheld, first time",
            None,
            "1",
            Withheld,
            Some("a@x.org"),
            Some(seen(Withheld, now, now)),
        ),
        row(
            "withheld after given",
            Some(seen(Given, long_ago, long_ago)),
            "1",
            Withheld,
            Some("a@x.org"),
            Some(seen(Withheld, now, now)),
        ),
        row(
            "still withheld, no opt-out since",
            Some(seen(Withheld, long_ago, long_ago)),
            "1",
            Withheld,
            Some("a@x.org"),
            None,
        ),
        row(
            "still withheld, seen after the opt-out",
            Some(seen(Withheld, after(), after())),
            "1",
            Withheld,
            Some("row@x.org"),
            None,
        ),
        row(
            "still withheld, unsubscribed since (row's address)",
            Some(seen(Withheld, before(), before())),
            "1",
            Withheld,
            Some("row@x.org"),
            Some(seen(Withheld, now, now)),
        ),
        row(
            "still withheld, unsubscribed since (provider's address)",
            Some(seen(Withheld, before(), before())),
            "7",
            Withheld,
            None,
            Some(seen(Withheld, now, now)),
        ),
        row(
            "still withheld, unsubscribed at the same instant",
            Some(seen(Withheld, t0(), t0())),
            "1",
            Withheld,
            Some("row@x.org"),
            Some(seen(Withheld, now, now)),
        ),
        row(
            "still withheld, unsubscribe of unknown time",
            Some(seen(Withheld, before(), before())),
            "1",
            Withheld,
            Some("undated@x.org"),
            None,
        ),
    ];
    for r in rows {
        facts.seen.clear();
        if let Some(b) = r.before {
            facts.seen.insert(key(r.key), b);
        }
        assert_eq!(
            facts.observe(&key(r.key), r.now, || r.email.map(str::to_owned), now),
            r.records,
            "{}",
            r.name
        );
    }
}

struct Fixture {
    source: CompiledSource,
    audience: CompiledAudience,
}

fn fixture() -> Fixture {
    let text = include_str!("../../../mappings/members.toml").replace(
        "consent = \"newsletter\"",
        "consent = \"newsletter\"\nconsent_at = \"consent_at\"",
    );
    let m = Mapping::from_str(Path::new("m.toml"), &text).unwrap();
    // The reference schema with `consent_at`.
    let cols: Vec<String> = crate::mapping::SHIPPED_COLUMNS
        .iter()
        .chain(&["consent_at"])
        .map(|s| s.to_string())
        .collect();
    Fixture {
        source: m.compile_source(&cols).unwrap(),
        audience: m
            .compile_audience(m.audience("newsletter").unwrap(), &cols)
            .unwrap(),
    }
}

fn row(id: i64, email: &str, updated_at: &str, consent_at: Option<&str>) -> Vec<Value> {
    vec![
        Value::Int(id),
        Value::Text(email.into()),
        Value::Text("Ann".into()),
        Value::Text("Lee".into()),
        Value::Text("full".into()),
        Value::Bool(true),
        Value::Text("ok".into()),
        Value::Text(updated_at.into()),
        consent_at.map_or(Value::Null, |c| Value::Text(c.into())),
    ]
}

fn opted_out(k: &str, email: &str) -> Action {
    Action::Skip {
        member_key: Some(key(k)),
        email: Some(email.into()),
        reason: SkipReason::OptedOut(Unsubscribed),
    }
}

fn facts_with_unsubscribed(k: &str, email: &str) -> ConsentFacts {
    let mut facts = ConsentFacts::default();
    facts
        .marks
        .insert(email.into(), mark("unsubscribed", Some(t0())));
    facts.held.insert(key(k), (email.into(), Unsubscribed));
    facts
}

/// The rule applied to the diff's actions for member rows: what the plan and the push see.
#[test]
fn judging_member_rows() {
    let f = fixture();
    let judge = |facts: &ConsentFacts, action: Action, row: &[Value]| {
        facts.judge(action, None, row, &f.source, &f.audience)
    };
    let facts = facts_with_unsubscribed("3", "m3@x.org");

    // A profile edit after the unsubscribe: updated_at far later, still held.
    let edited = row(3, "m3@x.org", "2099-01-01 00:00:00", None);
    assert_eq!(
        judge(&facts, opted_out("3", "m3@x.org"), &edited),
        Judged::Other(opted_out("3", "m3@x.org"))
    );
    // consent_at later than the unsubscribe: pending, as an update of the same contact.
    match judge(
        &facts,
        opted_out("3", "m3@x.org"),
        &row(
            3,
            "m3@x.org",
            "2026-01-01 00:00:00",
            Some("2026-05-01 12:01:00"),
        ),
    ) {
        Judged::Push(plan::Push {
            contact,
            create: false,
            previous_email: None,
            status: Some(WriteStatus::Pending),
        }) => assert_eq!(contact.member_key.as_str(), "3"),
        other => panic!("{other:?}"),
    }
    // consent_at earlier, or unreadable: held.
    for c in ["2026-05-01 11:59:00", "not a time"] {
        assert_eq!(
            judge(
                &facts,
                opted_out("3", "m3@x.org"),
                &row(3, "m3@x.org", "2099-01-01 00:00:00", Some(c))
            ),
            Judged::Other(opted_out("3", "m3@x.org")),
            "{c}"
        );
    }
    // Seen withheld after the unsubscribe, given now: pending.
    let mut seen_facts = facts_with_unsubscribed("3", "m3@x.org");
    seen_facts
        .seen
        .insert(key("3"), seen(Consent::Withheld, after(), after()));
    assert!(matches!(
        judge(&seen_facts, opted_out("3", "m3@x.org"), &edited),
        Judged::Push(plan::Push {
            status: Some(WriteStatus::Pending),
            ..
        })
    ));
    // ... but only at the address that unsubscribed.
    assert_eq!(
        judge(
            &seen_facts,
            opted_out("3", "m3@x.org"),
            &row(3, "new@x.org", "2099-01-01 00:00:00", None)
        ),
        Judged::Other(opted_out("3", "m3@x.org"))
    );

    // A member with no contact row yet whose address unsubscribed: held without evidence,
    // pending with it; a plan records both as the diff's kinds of action.
    let mut no_contact = ConsentFacts::default();
    no_contact
        .marks
        .insert("m5@x.org".into(), mark("unsubscribed", Some(t0())));
    let r5 = row(5, "m5@x.org", "2099-01-01 00:00:00", None);
    let create = || {
        Action::Create(
            f.audience
                .render(key("5"), f.source.email(&r5).unwrap(), &r5)
                .unwrap(),
        )
    };
    let held = judge(&no_contact, create(), &r5);
    assert!(
        matches!(&held, Judged::Other(Action::Skip { reason: SkipReason::OptedOut(Unsubscribed), member_key: Some(k), .. }) if k.as_str() == "5"),
        "{held:?}"
    );
    no_contact
        .seen
        .insert(key("5"), seen(Consent::Withheld, after(), after()));
    let pushed = judge(&no_contact, create(), &r5);
    assert!(
        matches!(
            &pushed,
            Judged::Push(plan::Push {
                create: true,
                status: Some(WriteStatus::Pending),
                ..
            })
        ),
        "{pushed:?}"
    );

    // Suppressed: held as cleaned, whatever the evidence.
    no_contact
        .suppressed
        .insert("m5@x.org".into(), "hard_bounce".into());
    assert!(matches!(
        judge(&no_contact, create(), &r5),
        Judged::Other(Action::Skip {
            reason: SkipReason::OptedOut(Cleaned),
            ..
        })
    ));

    // Unchanged, archives and other skips pass through.
    assert_eq!(
        judge(&facts, Action::Unchanged, &edited),
        Judged::Other(Action::Unchanged)
    );
}

#[test]
fn consent_at_values() {
    let at = |y, mo, d, h, mi| Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap();
    for (value, want) in [
        ("2026-05-01 12:01:00", Some(at(2026, 5, 1, 12, 1))),
        ("2026-05-01T12:01:00Z", Some(at(2026, 5, 1, 12, 1))),
        ("2026-05-01T14:01:00+02:00", Some(at(2026, 5, 1, 12, 1))),
        // A date is its first instant: the day of an unsubscribe is not after it.
        ("2026-05-01", Some(at(2026, 5, 1, 0, 0))),
        (" 2026-05-02 ", Some(at(2026, 5, 2, 0, 0))),
        ("yes", None),
        ("", None),
        ("01/05/2026", None),
    ] {
        assert_eq!(consent_time(value), want, "{value:?}");
    }
}

#[test]
fn contacts_pending_or_unsubscribed_are_the_held_ones() {
    let contact = |email: &str, remote_status| ContactState {
        email: email.into(),
        content_hash: StoredHash::from_hex(""),
        remote_status,
    };
    let mut facts = ConsentFacts::default();
    let mut held = |k: &str, c: Option<ContactState>| {
        let k = key(k);
        facts.hold_row(c.as_ref().map(|c| (&k, c)));
        let mut held: Vec<(String, String, SubscriptionStatus)> = facts
            .held
            .iter()
            .map(|(k, (e, s))| (k.to_string(), e.clone(), *s))
            .collect();
        held.sort_by(|a, b| a.0.cmp(&b.0));
        held
    };
    assert_eq!(held("1", Some(contact("a@x.org", Subscribed))), []);
    assert_eq!(
        held("2", Some(contact("b@x.org", Unsubscribed))),
        [("2".to_owned(), "b@x.org".to_owned(), Unsubscribed)]
    );
    assert_eq!(
        held("3", Some(contact("c@x.org", Pending))),
        [("3".to_owned(), "c@x.org".to_owned(), Pending)],
        "only the row's own contact"
    );
    assert_eq!(held("4", Some(contact("d@x.org", Cleaned))), []);
    assert_eq!(
        held("5", Some(contact("e@x.org", SubscriptionStatus::Archived))),
        []
    );
    assert_eq!(held("6", None), []);
}
