//! Unit tests of the pure parts: validation, hashing and keys, the quarter-hour rule, HTML → text.

use chrono::TimeZone;

use super::*;
use crate::config::ProviderKind;

fn audience(defaults: bool) -> AudienceConfig {
    AudienceConfig {
        name: "newsletter".into(),
        provider: ProviderKind::Mailchimp,
        list_id: "l1".into(),
        max_archive_percent: 10.0,
        webhook_signing_secret: None,
        from_name: defaults.then(|| "Riverside Rowing".to_owned()),
        reply_to: defaults.then(|| Email::parse("secretary@club.example").unwrap()),
    }
}

fn request() -> PushRequest {
    PushRequest {
        audience: "newsletter".into(),
        subject: "Spring news".into(),
        html:
            "<h1>Spring</h1><p>Boats are <b>back</b>. <a href=\"https://club.example\">More</a></p>"
                .into(),
        ..PushRequest::default()
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 2, 0, 0).unwrap()
}

fn invalid_field(r: Result<CampaignSpec, CampaignError>) -> String {
    match r {
        Err(CampaignError::Invalid { field, message }) => format!("{field}: {message}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn a_good_request_takes_the_audience_defaults_and_derives_text() {
    let spec = validate(&request(), &audience(true)).unwrap();
    assert_eq!(spec.from_name, "Riverside Rowing");
    assert_eq!(spec.reply_to.as_str(), "secretary@club.example");
    assert!(spec.text.contains("Spring"), "{}", spec.text);
    assert!(spec.text.contains("back"), "{}", spec.text);
    assert!(!spec.text.contains("<b>"), "{}", spec.text);
    assert!(spec.text.contains("https://club.example"), "{}", spec.text);
}

#[test]
fn flags_override_the_defaults() {
    let r = PushRequest {
        from_name: Some("Regatta team".into()),
        reply_to: Some("regatta@club.example".into()),
        text: Some("Plain words".into()),
        ..request()
    };
    let spec = validate(&r, &audience(true)).unwrap();
    assert_eq!(spec.from_name, "Regatta team");
    assert_eq!(spec.reply_to.as_str(), "regatta@club.example");
    assert_eq!(spec.text, "Plain words");
}

#[test]
fn bad_input_is_refused_naming_the_field() {
    // (what is wrong, the request, whether the audience has sender defaults, how the error starts)
    let cases = [
        (
            "blank subject",
            PushRequest {
                subject: "  ".into(),
                ..request()
            },
            true,
            "subject: must not be empty",
        ),
        (
            "subject of 151 characters",
            PushRequest {
                subject: "é".repeat(151),
                ..request()
            },
            true,
            "subject: is 151 characters",
        ),
        (
            "blank html",
            PushRequest {
                html: " \n".into(),
                ..request()
            },
            true,
            "html: is empty",
        ),
        (
            "no from_name anywhere",
            request(),
            false,
            "from_name: missing",
        ),
        (
            "no reply_to anywhere",
            PushRequest {
                from_name: Some("X".into()),
                ..request()
            },
            false,
            "reply_to: missing",
        ),
        (
            "reply_to not an address",
            PushRequest {
                reply_to: Some("nope".into()),
                ..request()
            },
            true,
            "reply_to: `nope`",
        ),
        (
            "six test addresses",
            PushRequest {
                test_to: vec!["a@x.example".into(); 6],
                ..request()
            },
            true,
            "test_to: 6 addresses",
        ),
        (
            "test address not an address",
            PushRequest {
                test_to: vec!["bad".into()],
                ..request()
            },
            true,
            "test_to: `bad`",
        ),
    ];
    for (name, r, defaults, want) in cases {
        let e = invalid_field(validate(&r, &audience(defaults)));
        assert!(e.starts_with(want), "{name}: {e}");
    }
    // 150 characters are allowed.
    assert!(
        validate(
            &PushRequest {
                subject: "é".repeat(150),
                ..request()
            },
            &audience(true),
        )
        .is_ok()
    );
}

#[test]
fn schedules_must_be_future_quarter_hours_and_errors_name_the_nearest() {
    let ok = parse_schedule("2026-12-01T09:45:00Z").unwrap();
    assert_eq!(ok, Utc.with_ymd_and_hms(2026, 12, 1, 9, 45, 0).unwrap());
    // An offset is fine when the UTC time is a quarter hour.
    assert!(parse_schedule("2026-12-01T10:15:00+01:00").is_ok());
    // (the time given, what the error names)
    for (given, named) in [
        (
            "2026-12-01T09:07:00Z",
            "the nearest valid times are 2026-12-01T09:00:00Z and 2026-12-01T09:15:00Z",
        ),
        (
            "2026-12-01T09:15:30Z",
            "2026-12-01T09:15:00Z and 2026-12-01T09:30:00Z",
        ),
        (
            "2026-12-01T23:59:59Z",
            "2026-12-01T23:45:00Z and 2026-12-02T00:00:00Z",
        ),
    ] {
        let e = parse_schedule(given).unwrap_err().to_string();
        assert!(e.contains(named), "{given}: {e}");
    }
    let past = parse_schedule("2026-11-28T01:45:00Z").unwrap();
    let e = check_future(past, now()).unwrap_err().to_string();
    assert!(e.contains("not in the future"), "{e}");
    assert!(check_future(ok, now()).is_ok());
    let e = parse_schedule("next tuesday").unwrap_err().to_string();
    assert!(
        e.starts_with("schedule: `next tuesday` is not an RFC 3339 time"),
        "{e}"
    );
}

#[test]
fn the_key_follows_the_content_not_the_tests() {
    let a = audience(true);
    let base = validate(&request(), &a).unwrap();
    let with_tests = validate(
        &PushRequest {
            test_to: vec!["me@club.example".into()],
            no_sync: true,
            ..request()
        },
        &a,
    )
    .unwrap();
    assert_eq!(content_hash(&base), content_hash(&with_tests));
    let key = derived_key(&content_hash(&base));
    assert!(key.starts_with("auto-") && key.len() == 37, "{key}");
    assert!(validate_key(&key).is_ok());
    for changed in [
        PushRequest {
            subject: "Summer news".into(),
            ..request()
        },
        PushRequest {
            html: "<p>other</p>".into(),
            ..request()
        },
        PushRequest {
            segment: Some("juniors".into()),
            ..request()
        },
        PushRequest {
            schedule: Some("2026-12-01T09:00:00Z".into()),
            ..request()
        },
        PushRequest {
            from_name: Some("Other".into()),
            ..request()
        },
    ] {
        let spec = validate(&changed, &a).unwrap();
        assert_ne!(content_hash(&spec), content_hash(&base), "{changed:?}");
    }
}

#[test]
fn keys_are_checked() {
    assert!(validate_key("spring-2026.v1:send_1").is_ok());
    for bad in ["", "has space", "semi;colon", &"k".repeat(129), "ünï"] {
        assert!(validate_key(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn states_round_trip_and_only_handed_over_ones_are_final() {
    for s in [
        CampaignState::Draft,
        CampaignState::Tested,
        CampaignState::Scheduled,
        CampaignState::Sending,
        CampaignState::Sent,
        CampaignState::Failed,
    ] {
        assert_eq!(CampaignState::parse(s.as_str()), Some(s));
        assert_eq!(
            s.is_final(),
            matches!(
                s,
                CampaignState::Scheduled | CampaignState::Sending | CampaignState::Sent
            )
        );
    }
    assert_eq!(CampaignState::parse("creating"), None);
}
