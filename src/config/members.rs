//! `[members]`: the club's member database and the mapping file that reads it.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;
use super::db_url::DbUrl;
use super::read::{Loader, Raw};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMembers {
    url: Raw,
    mapping: Raw,
}

#[derive(Debug, Clone)]
pub struct MembersConfig {
    pub url: DbUrl,
    /// The mapping file, resolved against the config file's folder.
    pub mapping: PathBuf,
}

impl MembersConfig {
    pub(super) fn read(l: &Loader<'_>, raw: &RawMembers) -> Result<MembersConfig, ConfigError> {
        Ok(MembersConfig {
            url: l.db_url(&raw.url, "members.url")?,
            mapping: l.path(&raw.mapping, "members.mapping")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_refused, parse};

    #[test]
    fn the_mapping_is_found_beside_the_config() {
        let cfg = parse("[members]\nurl = \"sqlite://m.db\"\nmapping = \"maps/m.toml\"\n");
        assert_eq!(cfg.members.mapping, std::path::Path::new("maps/m.toml"));
        assert_eq!(cfg.members.url.to_string(), "sqlite://m.db");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_refused(
            "",
            &[
                (
                    "[members]\nurl = \"sqlite://m.db\"\nmapping = \"m.toml\"\nmappings = \"x\"\n",
                    "mb.toml: TOML parse error at line 4, column 1\n  |\n4 | mappings = \"x\"\n  | ^^^^^^^^\nunknown field `mappings`, expected `url` or `mapping`",
                ),
                (
                    "[members]\nurl = \"sqlite://m.db\"\nmapping = 1\n",
                    "mb.toml: TOML parse error at line 3, column 11\n  |\n3 | mapping = 1\n  |           ^\ninvalid type: integer `1`, expected a string",
                ),
                (
                    "[members]\nurl = \"sqlite://m.db\"\n",
                    "mb.toml: TOML parse error at line 1, column 1\n  |\n1 | [members]\n  | ^^^^^^^^^\nmissing field `mapping`",
                ),
                (
                    "[members]\nurl = \"sqlite://m.db\"\nmapping = \"\"\n",
                    "mb.toml:3: `members.mapping`: must not be empty",
                ),
                (
                    "[members]\nurl = \"http://x\"\nmapping = \"m\"\n",
                    "mb.toml:2: `members.url`: unsupported database `http`: expected sqlite://, postgres:// or mysql://",
                ),
                (
                    "[members]\nurl = \"sqlite://${X\"\nmapping = \"m\"\n",
                    "mb.toml:2: `members.url`: `${` at character 10 is not closed by `}` (write `$$` for a literal `$`)",
                ),
                (
                    "[members]\nurl = \"sqlite://${X-Y}\"\nmapping = \"m\"\n",
                    "mb.toml:2: `members.url`: `${…}` at character 10 is not a valid environment variable name: use letters, digits and `_` (write `$$` for a literal `$`)",
                ),
            ],
        );
    }
}
