//! The mapping's writeback SQL: `:named` parameters rewritten into each driver's placeholders.

use mailbridge::config::DbKind;
use mailbridge::mapping::NamedSql;
use mailbridge::mapping::sql::PARAMETERS;
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;

use crate::harness::text;

#[derive(Debug, PartialEq)]
enum Tok {
    Text(String),
    Param(String),
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Code,
    Quoted(char),
    LineComment,
    BlockComment,
}

/// The statement as the spec reads it, written as a state machine independent of the parser:
/// quotes (`'`, `"`, `` ` ``), `--` and `/* */` comments are copied verbatim; outside them `::` is
/// a cast, `:name` a parameter (one of [`PARAMETERS`]), `?` and `$<digit>` are refused, and `;` may
/// only be followed by white space. A statement with nothing but white space, comments and `;`
/// is empty. `Err` carries a word the real error must contain.
fn model(sql: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut toks = Vec::new();
    let mut text = String::new();
    let mut state = State::Code;
    let mut code = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match state {
            State::Quoted(q) => {
                text.push(c);
                if c == q {
                    state = State::Code;
                }
                i += 1;
            }
            State::LineComment => {
                if c == '\n' {
                    state = State::Code;
                    continue;
                }
                text.push(c);
                i += 1;
            }
            State::BlockComment => {
                text.push(c);
                if c == '*' && next == Some('/') {
                    text.push('/');
                    state = State::Code;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            State::Code => match (c, next) {
                ('\'' | '"' | '`', _) => {
                    state = State::Quoted(c);
                    code = true;
                    text.push(c);
                    i += 1;
                }
                ('-', Some('-')) => {
                    state = State::LineComment;
                    text.push_str("--");
                    i += 2;
                }
                ('/', Some('*')) => {
                    state = State::BlockComment;
                    text.push_str("/*");
                    i += 2;
                }
                (':', Some(':')) => {
                    code = true;
                    text.push_str("::");
                    i += 2;
                }
                (':', Some(n)) if n.is_ascii_alphabetic() || n == '_' => {
                    let name: String = chars[i + 1..]
                        .iter()
                        .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                        .collect();
                    if !PARAMETERS.contains(&name.as_str()) {
                        return Err(format!(":{name}"));
                    }
                    if !text.is_empty() {
                        toks.push(Tok::Text(std::mem::take(&mut text)));
                    }
                    i += 1 + name.chars().count();
                    toks.push(Tok::Param(name));
                    code = true;
                }
                ('?', _) => return Err("positional".into()),
                ('$', Some(d)) if d.is_ascii_digit() => return Err("positional".into()),
                (';', _) => {
                    if chars[i + 1..].iter().any(|c| !c.is_whitespace()) {
                        return Err("one statement".into());
                    }
                    text.push(c);
                    i += 1;
                }
                _ => {
                    code |= !c.is_whitespace();
                    text.push(c);
                    i += 1;
                }
            },
        }
    }
    match state {
        State::Quoted(_) => return Err("unterminated".into()),
        State::BlockComment => return Err("unterminated".into()),
        State::Code | State::LineComment => {}
    }
    if !code {
        return Err("empty".into());
    }
    if !text.is_empty() {
        toks.push(Tok::Text(text));
    }
    Ok(toks)
}

/// The SQL the model expects for `kind`: parameters in the driver's form, text unchanged.
fn expected(toks: &[Tok], kind: DbKind) -> (String, Vec<String>) {
    let mut sql = String::new();
    let mut binds: Vec<String> = Vec::new();
    for t in toks {
        match t {
            Tok::Text(s) => sql.push_str(s),
            Tok::Param(p) if kind == DbKind::MySql => {
                sql.push('?');
                binds.push(p.clone());
            }
            Tok::Param(p) => {
                let n = match binds.iter().position(|b| b == p) {
                    Some(n) => n + 1,
                    None => {
                        binds.push(p.clone());
                        binds.len()
                    }
                };
                sql.push_str(&format!("${n}"));
            }
        }
    }
    (sql.trim().trim_end_matches(';').to_owned(), binds)
}

pub fn check(input: &[u8]) -> TestCaseResult {
    let sql = text(input);
    let parsed = NamedSql::parse(&sql);
    let model = model(&sql);
    match (&parsed, &model) {
        (Ok(named), Ok(toks)) => {
            let names: Vec<&str> = toks
                .iter()
                .filter_map(|t| match t {
                    Tok::Param(p) => Some(p.as_str()),
                    Tok::Text(_) => None,
                })
                .collect();
            for kind in [DbKind::MySql, DbKind::Postgres, DbKind::Sqlite] {
                let (got_sql, got_binds) = named.to_positional(kind);
                let (want_sql, want_binds) = expected(toks, kind);
                prop_assert_eq!(&got_sql, &want_sql, "{:?} for {:?}", sql, kind);
                prop_assert_eq!(&got_binds, &want_binds, "{:?} for {:?}", sql, kind);
                if kind == DbKind::MySql {
                    // One placeholder per reference outside literals and comments.
                    prop_assert_eq!(got_binds.len(), names.len());
                }
            }
            let mut distinct: Vec<&str> = Vec::new();
            for n in names {
                if !distinct.contains(&n) {
                    distinct.push(n);
                }
            }
            prop_assert_eq!(named.parameters(), distinct);
        }
        (Err(e), Err(why)) => {
            prop_assert!(!e.is_empty());
            prop_assert!(
                e.contains(why.as_str()),
                "{:?}: error {:?} should say {:?}",
                sql,
                e,
                why
            );
        }
        (Ok(named), Err(why)) => {
            prop_assert!(
                false,
                "{sql:?} was accepted ({named:?}), expected an error: {why}"
            )
        }
        (Err(e), Ok(toks)) => {
            prop_assert!(false, "{sql:?} was refused ({e}), expected {toks:?}")
        }
    }
    Ok(())
}
