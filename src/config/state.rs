//! `[state]`: mailbridge's own database (SQLite `mailbridge.db` beside the config when absent).

use serde::Deserialize;

use super::ConfigError;
use super::db_url::DbUrl;
use super::read::{Loader, Raw};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    url: Raw,
}

#[derive(Debug, Clone)]
pub struct StateConfig {
    pub url: DbUrl,
}

impl StateConfig {
    pub(super) fn read(l: &Loader<'_>, raw: Option<&RawState>) -> Result<StateConfig, ConfigError> {
        let url = match raw {
            Some(s) => l.db_url(&s.url, "state.url")?,
            None => DbUrl::parse("sqlite://mailbridge.db", l.base_dir()).map_err(|message| {
                ConfigError::Parse {
                    path: l.path.to_owned(),
                    message,
                }
            })?,
        };
        Ok(StateConfig { url })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{BASE, assert_refused, parse};

    #[test]
    fn defaults_to_a_sqlite_file_beside_the_config() {
        let cfg = parse(BASE);
        assert_eq!(cfg.state.url.to_string(), "sqlite://mailbridge.db");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused(
            BASE,
            &[
                (
                    "[state]\nurl = \"sqlite://s.db\"\nfile = \"x\"\n",
                    "mb.toml: TOML parse error at line 6, column 1\n  |\n6 | file = \"x\"\n  | ^^^^\nunknown field `file`, expected `url`",
                ),
                (
                    "[state]\nurl = 5\n",
                    "mb.toml: TOML parse error at line 5, column 7\n  |\n5 | url = 5\n  |       ^\ninvalid type: integer `5`, expected a string",
                ),
                (
                    "[state]\n",
                    "mb.toml: TOML parse error at line 4, column 1\n  |\n4 | [state]\n  | ^^^^^^^\nmissing field `url`",
                ),
                (
                    "[state]\nurl = \" \"\n",
                    "mb.toml:5: `state.url`: must not be empty",
                ),
                (
                    "[state]\nurl = \"oracle://x\"\n",
                    "mb.toml:5: `state.url`: unsupported database `oracle`: expected sqlite://, postgres:// or mysql://",
                ),
                (
                    "[state]\nurl = \"postgres:///db\"\n",
                    "mb.toml:5: `state.url`: the URL names no host",
                ),
                (
                    "[state]\nurl = \"sqlite://\"\n",
                    "mb.toml:5: `state.url`: the sqlite URL names no file",
                ),
                (
                    "[state]\nurl = \"state.db\"\n",
                    "mb.toml:5: `state.url`: expected a URL such as sqlite://file.db or postgres://host/db",
                ),
                (
                    "[state]\nurl = \"${NOPE}\"\n",
                    "mb.toml:5: `state.url`: environment variable NOPE is not set",
                ),
            ],
        );
    }
}
