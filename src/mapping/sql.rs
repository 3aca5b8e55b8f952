//! Writeback SQL with named parameters (`:member_key`), translated per driver into positional
//! placeholders. Values are always bound, never spliced into the SQL text.

use crate::config::DbKind;

/// The parameters a writeback statement may use.
pub const PARAMETERS: &[&str] = &[
    "member_key",
    "email",
    "new_email",
    "old_email",
    "reason",
    "occurred_at",
    "audience",
    "list_id",
];

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Param(String),
}

/// A parsed statement: text pieces and parameter references in order.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedSql {
    pieces: Vec<Piece>,
}

impl NamedSql {
    /// Parses `:name` parameters, skipping string literals, quoted identifiers, comments and
    /// PostgreSQL `::type` casts. Positional placeholders (`?`, `$1`) are refused.
    pub fn parse(sql: &str) -> Result<NamedSql, String> {
        let chars: Vec<char> = sql.chars().collect();
        let mut pieces = Vec::new();
        let mut text = String::new();
        // Whether anything but white space, comments and the final `;` was seen: a statement
        // that was commented out is empty, not a statement that does nothing.
        let mut code = false;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            match c {
                '\'' | '"' | '`' => {
                    let end = (i + 1..chars.len())
                        .find(|&j| chars[j] == c)
                        .ok_or_else(|| format!("unterminated {c} quote"))?;
                    code = true;
                    text.extend(&chars[i..=end]);
                    i = end + 1;
                }
                '-' if chars.get(i + 1) == Some(&'-') => {
                    let end = (i..chars.len()).find(|&j| chars[j] == '\n').unwrap_or(chars.len());
                    text.extend(&chars[i..end]);
                    i = end;
                }
                '/' if chars.get(i + 1) == Some(&'*') => {
                    let end = (i + 2..chars.len().saturating_sub(1))
                        .find(|&j| chars[j] == '*' && chars[j + 1] == '/')
                        .ok_or("unterminated /* comment")?;
                    text.extend(&chars[i..end + 2]);
                    i = end + 2;
                }
                ':' if chars.get(i + 1) == Some(&':') => {
                    code = true;
                    text.push_str("::");
                    i += 2;
                }
                ':' if chars.get(i + 1).is_some_and(|n| n.is_ascii_alphabetic() || *n == '_') => {
                    let start = i + 1;
                    let end = (start..chars.len())
                        .find(|&j| !(chars[j].is_ascii_alphanumeric() || chars[j] == '_'))
                        .unwrap_or(chars.len());
                    let name: String = chars[start..end].iter().collect();
                    if !PARAMETERS.contains(&name.as_str()) {
                        return Err(format!(
                            "unknown parameter `:{name}`: expected one of {}",
                            PARAMETERS.iter().map(|p| format!(":{p}")).collect::<Vec<_>>().join(", ")
                        ));
                    }
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Param(name));
                    code = true;
                    i = end;
                }
                '?' => return Err("positional `?` placeholders are not allowed: use named parameters such as :member_key".into()),
                '$' if chars.get(i + 1).is_some_and(char::is_ascii_digit) => {
                    return Err("positional `$n` placeholders are not allowed: use named parameters such as :member_key".into());
                }
                ';' if chars[i + 1..].iter().any(|c| !c.is_whitespace()) => {
                    return Err("only one statement is allowed".into());
                }
                _ => {
                    code |= !c.is_whitespace() && c != ';';
                    text.push(c);
                    i += 1;
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        if !code {
            return Err("the statement is empty (only white space, comments or `;`)".into());
        }
        Ok(NamedSql { pieces })
    }

    /// The parameter names used, each once, in order of first use.
    pub fn parameters(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.pieces {
            if let Piece::Param(n) = p
                && !out.contains(&n.as_str())
            {
                out.push(n);
            }
        }
        out
    }

    /// SQL for `kind` and the parameter names to bind, in bind order.
    pub fn to_positional(&self, kind: DbKind) -> (String, Vec<String>) {
        let mut sql = String::new();
        let mut binds: Vec<String> = Vec::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => sql.push_str(t),
                Piece::Param(name) => match kind {
                    DbKind::MySql => {
                        sql.push('?');
                        binds.push(name.clone());
                    }
                    DbKind::Postgres | DbKind::Sqlite => {
                        let idx = match binds.iter().position(|b| b == name) {
                            Some(i) => i + 1,
                            None => {
                                binds.push(name.clone());
                                binds.len()
                            }
                        };
                        sql.push_str(&format!("${idx}"));
                    }
                },
            }
        }
        (sql.trim().trim_end_matches(';').to_owned(), binds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_per_driver_and_reuses_postgres_numbers() {
        let s = NamedSql::parse(
            "UPDATE members SET email = :new_email, note = 'a :not_param' || :new_email WHERE id = :member_key",
        )
        .unwrap();
        let (pg, pg_binds) = s.to_positional(DbKind::Postgres);
        assert_eq!(
            pg,
            "UPDATE members SET email = $1, note = 'a :not_param' || $1 WHERE id = $2"
        );
        assert_eq!(pg_binds, ["new_email", "member_key"]);
        let (my, my_binds) = s.to_positional(DbKind::MySql);
        assert_eq!(
            my,
            "UPDATE members SET email = ?, note = 'a :not_param' || ? WHERE id = ?"
        );
        assert_eq!(my_binds, ["new_email", "new_email", "member_key"]);
        assert_eq!(s.parameters(), ["new_email", "member_key"]);
    }

    #[test]
    fn casts_comments_and_identifiers_are_not_parameters() {
        let s = NamedSql::parse(
            "UPDATE \"m:x\" SET t = :occurred_at::timestamp -- :nope\n WHERE id = :member_key /* :no */",
        )
        .unwrap();
        assert_eq!(s.parameters(), ["occurred_at", "member_key"]);
        let (pg, _) = s.to_positional(DbKind::Postgres);
        assert!(pg.contains("$1::timestamp"), "{pg}");
    }

    #[test]
    fn refuses_unknown_and_positional_parameters_and_multiple_statements() {
        assert!(
            NamedSql::parse("UPDATE m SET a = :bogus")
                .unwrap_err()
                .contains(":bogus")
        );
        assert!(NamedSql::parse("UPDATE m SET a = ?").is_err());
        assert!(NamedSql::parse("UPDATE m SET a = $1").is_err());
        assert!(NamedSql::parse("UPDATE m SET a = 1; DROP TABLE m").is_err());
        assert!(NamedSql::parse("UPDATE m SET a = 'x").is_err());
        assert!(NamedSql::parse("   ").is_err());
        // A statement that was commented out is refused, not run as nothing.
        for empty in ["-- UPDATE m SET a = :email", "/* off */ ;", ";"] {
            assert!(
                NamedSql::parse(empty).unwrap_err().contains("empty"),
                "{empty}"
            );
        }
        assert!(NamedSql::parse("UPDATE m SET a = 1;").is_ok());
    }
}
