//! Config files written from parts: `[state]`, `[members]` (with the shipped mapping unless told
//! otherwise), `[providers.mailchimp]`, one `[[audiences]]` named `newsletter`, `[server]` and
//! `[relay]`, each with extra lines where a test needs them.

use std::path::{Path, PathBuf};

use super::db;

/// The parts of a `mailbridge.toml`; [`ConfigFile::text`] renders them in the usual order.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    pub state_url: String,
    pub members_url: String,
    pub mapping: PathBuf,
    /// A mapping's text, written as `members.toml` beside the config (and used instead of
    /// `mapping`).
    pub mapping_text: Option<String>,
    /// `[providers.mailchimp]`: the API key, the base URL (none: the real API) and extra lines.
    pub mailchimp: Option<(String, Option<String>, String)>,
    /// `[[audiences]]` `newsletter` on this list id, with extra lines before `list_id`.
    pub audience: Option<(String, String)>,
    /// Lines after `list_id` in the audience.
    pub audience_extra: String,
    /// `[server]` lines.
    pub server: Option<String>,
    /// `[relay]` lines (after `from`).
    pub relay: Option<String>,
    /// Sections appended as written (`[bounces.imap]`, say).
    pub extra: String,
}

impl ConfigFile {
    pub fn new(state_url: impl Into<String>, members_url: impl Into<String>) -> Self {
        Self {
            state_url: state_url.into(),
            members_url: members_url.into(),
            mapping: db::shipped_mapping(),
            mapping_text: None,
            mailchimp: None,
            audience: None,
            audience_extra: String::new(),
            server: None,
            relay: None,
            extra: String::new(),
        }
    }

    pub fn mapping(mut self, mapping: &Path) -> Self {
        self.mapping = mapping.to_owned();
        self
    }

    /// The mapping `text`, written as `members.toml` beside the config.
    pub fn mapping_text(mut self, text: String) -> Self {
        self.mapping_text = Some(text);
        self
    }

    /// `[providers.mailchimp]` with `api_key`, `base_url` (when given) and `extra` lines.
    pub fn mailchimp(mut self, api_key: &str, base_url: Option<&str>, extra: &str) -> Self {
        self.mailchimp = Some((api_key.into(), base_url.map(str::to_owned), extra.into()));
        self
    }

    /// More lines for `[providers.mailchimp]`.
    pub fn mailchimp_extra(mut self, lines: &str) -> Self {
        if let Some((_, _, extra)) = self.mailchimp.as_mut() {
            extra.push_str(lines);
        }
        self
    }

    /// The `newsletter` audience on Mailchimp list `list_id`; `before` goes before `list_id`.
    pub fn audience(mut self, list_id: &str, before: &str) -> Self {
        self.audience = Some((list_id.into(), before.into()));
        self
    }

    pub fn audience_extra(mut self, lines: &str) -> Self {
        self.audience_extra = lines.into();
        self
    }

    pub fn server(mut self, lines: &str) -> Self {
        self.server = Some(lines.into());
        self
    }

    pub fn relay(mut self, lines: &str) -> Self {
        self.relay = Some(lines.into());
        self
    }

    /// Sections appended to the file as written.
    pub fn extra(mut self, sections: &str) -> Self {
        self.extra.push_str(sections);
        self
    }

    pub fn text(&self) -> String {
        let mut s = format!(
            "[state]\nurl = \"{}\"\n\n[members]\nurl = \"{}\"\nmapping = \"{}\"\n",
            self.state_url,
            self.members_url,
            self.mapping.display()
        );
        if let Some((key, base, extra)) = &self.mailchimp {
            s.push_str(&format!("\n[providers.mailchimp]\napi_key = \"{key}\"\n"));
            if let Some(base) = base {
                s.push_str(&format!("base_url = \"{base}\"\n"));
            }
            s.push_str(extra);
        }
        if let Some((list, before)) = &self.audience {
            s.push_str(&format!(
                "\n[[audiences]]\nname = \"newsletter\"\nprovider = \"mailchimp\"\n{before}list_id = \"{list}\"\n{}",
                self.audience_extra
            ));
        }
        if let Some(lines) = &self.server {
            s.push_str(&format!("\n[server]\n{lines}"));
        }
        if let Some(lines) = &self.relay {
            s.push_str(&format!(
                "\n[relay]\nfrom = \"Riverside Rowing Club <club@club.example>\"\n{lines}"
            ));
        }
        s.push_str(&self.extra);
        s
    }

    /// Writes `dir/mailbridge.toml` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        self.write_as(dir, "mailbridge.toml")
    }

    /// Writes `dir/name` and returns its path.
    pub fn write_as(&self, dir: &Path, name: &str) -> PathBuf {
        let mut file = self.clone();
        if let Some(text) = &self.mapping_text {
            file.mapping = dir.join("members.toml");
            std::fs::write(&file.mapping, text).expect("write the test mapping");
        }
        let path = dir.join(name);
        std::fs::write(&path, file.text()).expect("write the test config");
        path
    }
}
