use super::*;
use crate::domain::Value;
use proptest::prelude::*;

const SHIPPED: &str = include_str!("../../mappings/members.toml");

fn columns() -> Vec<String> {
    SHIPPED_COLUMNS.iter().map(|s| s.to_string()).collect()
}

fn row(id: i64, email: &str, membership: &str, newsletter: bool, status: &str) -> Vec<Value> {
    vec![
        Value::Int(id),
        Value::Text(email.into()),
        Value::Text("Ann".into()),
        Value::Text("Smith".into()),
        Value::Text(membership.into()),
        Value::Bool(newsletter),
        Value::Text(status.into()),
        Value::Text("2026-01-01 10:00:00".into()),
    ]
}

#[test]
fn shipped_mapping_loads_and_renders_the_reference_schema() {
    let m = Mapping::from_str(Path::new("mappings/members.toml"), SHIPPED).unwrap();
    let a = m.audience("newsletter").unwrap();
    assert_eq!(a.key_field, "MBRKEY");
    assert_eq!(
        a.owned_tags().into_iter().collect::<Vec<_>>(),
        ["family", "full", "junior", "lapsed"]
    );
    let src = m.compile_source(&columns()).unwrap();
    let aud = m.compile_audience(a, &columns()).unwrap();
    let r = row(7, " Ann@Example.org ", "junior", true, "ok");
    assert_eq!(aud.select(&src, &r), Selection::In);
    let c = aud
        .render(src.member_key(&r).unwrap(), src.email(&r).unwrap(), &r)
        .unwrap();
    assert_eq!(c.email.as_str(), "ann@example.org");
    assert_eq!(c.merge_fields["FNAME"], FieldValue::Text("Ann".into()));
    assert_eq!(c.merge_fields["MTYPE"], FieldValue::Text("junior".into()));
    assert_eq!(c.merge_fields["MBRKEY"], FieldValue::Text("7".into()));
    assert_eq!(c.tags.iter().collect::<Vec<_>>(), ["junior"]);
    assert!(m.writeback.unsubscribed.is_some() && m.writeback.email_changed.is_some());
}

#[test]
fn shipped_mapping_selects_per_the_reference_rules() {
    let m = Mapping::from_str(Path::new("m.toml"), SHIPPED).unwrap();
    let src = m.compile_source(&columns()).unwrap();
    let aud = m
        .compile_audience(m.audience("newsletter").unwrap(), &columns())
        .unwrap();
    // (who, membership, newsletter, email_status, the selection)
    for (name, membership, newsletter, status, want) in [
        ("lapsed", "lapsed", true, "ok", Selection::NotInAudience),
        (
            "unsubscribed status",
            "full",
            true,
            "unsubscribed",
            Selection::NotInAudience,
        ),
        ("no consent", "family", false, "ok", Selection::NoConsent),
        ("family with consent", "family", true, "ok", Selection::In),
    ] {
        let r = row(1, "a@b.co", membership, newsletter, status);
        assert_eq!(aud.select(&src, &r), want, "{name}");
    }
    // Integer 0/1 (SQLite, MySQL) and text consent read the same way.
    let mut r = row(1, "a@b.co", "full", true, "ok");
    r[5] = Value::Int(1);
    assert_eq!(aud.select(&src, &r), Selection::In);
    r[5] = Value::Int(0);
    assert_eq!(aud.select(&src, &r), Selection::NoConsent);
    r[5] = Value::Null;
    assert_eq!(aud.select(&src, &r), Selection::NoConsent);
}

#[test]
fn every_shipped_mapping_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Mapping::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1);
}

fn err(text: &str) -> String {
    Mapping::from_str(Path::new("bad.toml"), text)
        .unwrap_err()
        .to_string()
}

const MIN: &str = r#"
[source]
query = "SELECT id, email, ok FROM members"
key = "id"
email = "email"
consent = "ok"
"#;

#[test]
fn errors_name_file_line_key_and_expectation() {
    // (what is wrong, the mapping, what the error must name)
    let cases: [(&str, String, &[&str]); 9] = [
        (
            "two conditions in one where",
            format!(
                "{MIN}\n[audiences.news]\nwhere = [{{ column = \"x\", equals = 1, in = [2] }}]\n"
            ),
            &["bad.toml:9", "audiences.news.where[0]", "exactly one"],
        ),
        (
            "lower-case merge tag",
            format!(
                "{MIN}\n[[audiences.news.merge_fields]]\ntag = \"fname\"\ncolumn = \"first_name\"\n"
            ),
            &["merge_fields[0].tag", "upper-case"],
        ),
        (
            "unknown merge field type",
            format!(
                "{MIN}\n[[audiences.news.merge_fields]]\ntag = \"AGE\"\ncolumn = \"age\"\ntype = \"integer\"\n"
            ),
            &["merge_fields[0].type", "integer"],
        ),
        (
            "tags from a column without values",
            format!("{MIN}\n[[audiences.news.tags]]\nfrom_column = \"membership\"\n"),
            &["tags[0].values"],
        ),
        (
            "writeback without :member_key",
            format!(
                "{MIN}\n[writeback]\nunsubscribed = \"UPDATE members SET ok = 0 WHERE id = :id\"\n"
            ),
            &["writeback.unsubscribed", ":id"],
        ),
        (
            "email_changed without :new_email",
            format!(
                "{MIN}\n[writeback]\nemail_changed = \"UPDATE members SET email = :email WHERE id = :member_key\"\n"
            ),
            &["must use :new_email"],
        ),
        (
            "key not an identifier",
            MIN.replace("key = \"id\"", "key = \"id; drop\""),
            &["source.key"],
        ),
        (
            "query not a SELECT",
            MIN.replace("SELECT id", "DELETE id"),
            &["source.query", "SELECT"],
        ),
        (
            "unknown key",
            format!("{MIN}\nsurprise = 1\n"),
            &["surprise", "line"],
        ),
    ];
    for (name, text, named) in &cases {
        let e = err(text);
        for part in *named {
            assert!(e.contains(part), "{name}: `{part}` not in: {e}");
        }
    }
}

#[test]
fn missing_columns_are_named_with_the_key() {
    let m = Mapping::from_str(Path::new("m.toml"), SHIPPED).unwrap();
    let mut cols = columns();
    cols.retain(|c| c != "first_name");
    let e = m
        .compile_audience(m.audience("newsletter").unwrap(), &cols)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("audiences.newsletter.merge_fields[0].column") && e.contains("first_name"),
        "{e}"
    );
    let e = m.audience("members").unwrap_err().to_string();
    assert!(
        e.contains("[audiences.members]") && e.contains("newsletter"),
        "{e}"
    );
}

#[test]
fn consent_at_is_an_optional_checked_column() {
    let text = MIN.replace(
        "consent = \"ok\"",
        "consent = \"ok\"\nconsent_at = \"ok_since\"",
    );
    let m = Mapping::from_str(Path::new("m.toml"), &text).unwrap();
    assert_eq!(m.source.consent_at.as_deref(), Some("ok_since"));
    assert!(
        m.referenced_columns()
            .contains(&("source.consent_at".to_owned(), "ok_since".to_owned()))
    );
    let cols: Vec<String> = ["id", "email", "ok", "ok_since"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let src = m.compile_source(&cols).unwrap();
    let row = [
        Value::Int(1),
        Value::Text("a@b.co".into()),
        Value::Bool(true),
        Value::Text("2026-03-04 05:06:07".into()),
    ];
    assert_eq!(src.consent_at(&row).as_deref(), Some("2026-03-04 05:06:07"));
    assert_eq!(
        src.consent_at(
            &row[..3]
                .iter()
                .cloned()
                .chain([Value::Null])
                .collect::<Vec<_>>()
        ),
        None
    );
    // Not mapped: no value, whatever the row holds.
    let plain = Mapping::from_str(Path::new("m.toml"), MIN).unwrap();
    assert_eq!(plain.compile_source(&cols).unwrap().consent_at(&row), None);
    // A missing column is named with its key; a bad name is refused at load.
    let e = m.compile_source(&cols[..3]).unwrap_err().to_string();
    assert!(
        e.contains("source.consent_at") && e.contains("ok_since"),
        "{e}"
    );
    let e = err(&text.replace("\"ok_since\"", "\"ok since\""));
    assert!(e.contains("source.consent_at"), "{e}");
    // The shipped mapping documents the key in a comment; uncommented, it loads.
    let shipped = SHIPPED.replace("# consent_at = ", "consent_at = ");
    assert_ne!(shipped, SHIPPED, "the shipped mapping shows consent_at");
    let m = Mapping::from_str(Path::new("m.toml"), &shipped).unwrap();
    assert_eq!(m.source.consent_at.as_deref(), Some("newsletter_since"));
}

#[test]
fn number_and_date_fields_render_or_report() {
    let text = format!(
        "{MIN}\n[[audiences.a.merge_fields]]\ntag = \"AGE\"\ncolumn = \"age\"\ntype = \"number\"\n[[audiences.a.merge_fields]]\ntag = \"JOINED\"\ncolumn = \"joined\"\ntype = \"date\"\n[[audiences.a.merge_fields]]\ntag = \"BDAY\"\ncolumn = \"joined\"\ntype = \"birthday\"\n"
    );
    let m = Mapping::from_str(Path::new("m.toml"), &text).unwrap();
    let cols: Vec<String> = ["id", "email", "ok", "age", "joined"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let aud = m.compile_audience(m.audience("a").unwrap(), &cols).unwrap();
    let key = crate::domain::MemberKey::from_int(1);
    let email = crate::domain::Email::parse("a@b.co").unwrap();
    let good = vec![
        Value::Int(1),
        Value::Text("a@b.co".into()),
        Value::Bool(true),
        Value::Text(" 42 ".into()),
        Value::Text("2001-02-03 00:00:00".into()),
    ];
    let c = aud.render(key.clone(), email.clone(), &good).unwrap();
    assert_eq!(c.merge_fields["AGE"], FieldValue::Number(42.0));
    assert_eq!(
        c.merge_fields["JOINED"],
        FieldValue::Text("2001-02-03".into())
    );
    assert_eq!(c.merge_fields["BDAY"], FieldValue::Text("02/03".into()));
    let mut bad = good.clone();
    bad[3] = Value::Text("forty".into());
    let e = aud.render(key.clone(), email.clone(), &bad).unwrap_err();
    assert_eq!(e.code(), "invalid_field");
    assert!(
        e.to_string().contains("AGE") && e.to_string().contains("forty"),
        "{e}"
    );
    let mut bad = good;
    bad[4] = Value::Text("03/02/2001".into());
    assert!(
        aud.render(key, email, &bad)
            .unwrap_err()
            .to_string()
            .contains("JOINED")
    );
}

proptest! {
    /// The hash depends on content, not on the order merge fields and tags are declared in.
    #[test]
    fn content_hash_is_stable_across_declaration_order(
        fields in proptest::collection::btree_map("[A-Z]{1,8}", "[a-zA-Z0-9 ]{0,12}", 0..6),
        tags in proptest::collection::btree_set("[a-z]{1,6}", 0..5),
        seed in any::<u64>(),
    ) {
        let columns: Vec<String> = ["id", "email", "ok"].iter().map(|s| s.to_string())
            .chain(fields.keys().map(|k| format!("c_{k}")))
            .chain(tags.iter().map(|t| format!("t_{t}")))
            .collect();
        let decl = |order: &[(String, String)], tag_order: &[String]| {
            let mut text = format!("{MIN}\n[audiences.a]\n");
            for (tag, _) in order {
                text.push_str(&format!("\n[[audiences.a.merge_fields]]\ntag = \"{tag}\"\ncolumn = \"c_{tag}\"\n"));
            }
            for t in tag_order {
                text.push_str(&format!("\n[[audiences.a.tags]]\nname = \"{t}\"\nwhen = {{ column = \"t_{t}\", equals = true }}\n"));
            }
            text
        };
        let forward: Vec<(String, String)> = fields.clone().into_iter().collect();
        let mut shuffled = forward.clone();
        let mut tag_fwd: Vec<String> = tags.iter().cloned().collect();
        let mut tag_shuf = tag_fwd.clone();
        let n = shuffled.len().max(1);
        shuffled.rotate_left((seed as usize) % n);
        shuffled.reverse();
        let tn = tag_shuf.len().max(1);
        tag_shuf.rotate_left((seed as usize / 7) % tn);
        tag_fwd.sort();
        let row: Vec<Value> = [Value::Int(1), Value::Text("x@y.zz".into()), Value::Bool(true)].into_iter()
            .chain(fields.values().map(|v| Value::Text(v.clone())))
            .chain(tags.iter().map(|_| Value::Bool(true)))
            .collect();
        let hash = |text: String| {
            let m = Mapping::from_str(Path::new("p.toml"), &text).unwrap();
            let a = m.compile_audience(m.audience("a").unwrap(), &columns).unwrap();
            a.render(crate::domain::MemberKey::from_int(1), crate::domain::Email::parse("x@y.zz").unwrap(), &row).unwrap().content_hash()
        };
        let h1 = hash(decl(&forward, &tag_fwd));
        let h2 = hash(decl(&shuffled, &tag_shuf));
        prop_assert_eq!(&h1, &h2);
        // and the same input always gives the same hash
        prop_assert_eq!(h1, hash(decl(&forward, &tag_fwd)));
    }

    /// The digest a resync takes from the row is the rendered contact's, byte for byte, for
    /// every field type and value kind; it is `None` exactly when rendering fails.
    #[test]
    fn the_row_digest_is_the_rendered_contacts(
        fields in proptest::collection::vec(
            (
                prop_oneof![Just("text"), Just("number"), Just("date"), Just("birthday"),
                            Just("phone"), Just("url"), Just("zip")],
                prop_oneof![
                    Just(Value::Null),
                    any::<i64>().prop_map(Value::Int),
                    any::<f64>().prop_map(Value::Float),
                    any::<bool>().prop_map(Value::Bool),
                    "[ a-zA-Z0-9.-]{0,14}".prop_map(Value::Text),
                    Just(Value::Text(" 2026-02-03 10:00 ".into())),
                    Just(Value::Text(" 12.5 ".into())),
                ],
            ),
            0..6,
        ),
        group in prop_oneof![Just(Value::Null), Just(Value::Text("junior".into())),
                             Just(Value::Text("full".into())), Just(Value::Text("other".into()))],
        fixed_tag in any::<bool>(),
        text_key in any::<bool>(),
    ) {
        let mut text = format!("{MIN}\n[audiences.a]\n");
        for (i, (kind, _)) in fields.iter().enumerate() {
            text.push_str(&format!(
                "\n[[audiences.a.merge_fields]]\ntag = \"F{}\"\ncolumn = \"c{i}\"\ntype = \"{kind}\"\n",
                // tags sort otherwise than the columns are declared
                (b'Z' - i as u8) as char
            ));
        }
        text.push_str("\n[[audiences.a.tags]]\nfrom_column = \"grp\"\nvalues = [\"junior\", \"full\"]\nprefix = \"g-\"\n");
        text.push_str("\n[[audiences.a.tags]]\nname = \"fixed\"\nwhen = { column = \"flag\", equals = true }\n");
        let columns: Vec<String> = ["id", "email", "ok", "grp", "flag"].iter().map(|s| s.to_string())
            .chain((0..fields.len()).map(|i| format!("c{i}")))
            .collect();
        let key = if text_key { Value::Text(" M-17 ".into()) } else { Value::Int(42) };
        let row: Vec<Value> = [key, Value::Text("Ann@Example.org".into()), Value::Bool(true),
                group, Value::Bool(fixed_tag)].into_iter()
            .chain(fields.iter().map(|(_, v)| v.clone()))
            .collect();
        let m = Mapping::from_str(Path::new("p.toml"), &text).unwrap();
        let src = m.compile_source(&columns).unwrap();
        let aud = m.compile_audience(m.audience("a").unwrap(), &columns).unwrap();
        let (key, email) = (src.member_key(&row).unwrap(), src.email(&row).unwrap());
        let digest = aud.digest(&key, &email, &row);
        match aud.render(key, email, &row) {
            Ok(c) => prop_assert_eq!(digest, Some(c.content_digest())),
            Err(_) => prop_assert_eq!(digest, None),
        }
    }

    #[test]
    fn content_hash_changes_when_a_value_changes(a in "[a-z]{1,10}", b in "[a-z]{1,10}") {
        prop_assume!(a != b);
        let text = format!("{MIN}\n[[audiences.a.merge_fields]]\ntag = \"F\"\ncolumn = \"f\"\n");
        let m = Mapping::from_str(Path::new("p.toml"), &text).unwrap();
        let cols: Vec<String> = ["id", "email", "ok", "f"].iter().map(|s| s.to_string()).collect();
        let aud = m.compile_audience(m.audience("a").unwrap(), &cols).unwrap();
        let h = |v: &str| aud.render(crate::domain::MemberKey::from_int(1), crate::domain::Email::parse("x@y.zz").unwrap(),
            &[Value::Int(1), Value::Text("x@y.zz".into()), Value::Bool(true), Value::Text(v.into())]).unwrap().content_hash();
        prop_assert_ne!(h(&a), h(&b));
    }
}
