//! mailbridge: connects a club's member database to the newsletter services the club uses
//! (Mailchimp, Constant Contact) and to an SMTP relay. See `../shared/DESIGN.md` for the map.

pub mod app;
pub mod bounces;
pub mod campaigns;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db_tls;
pub mod demo;
pub mod domain;
pub mod events;
pub mod http;
pub mod mapping;
pub mod process;
pub mod progress;
pub mod providers;
pub mod relay;
pub mod retention;
pub mod simulator;
pub mod source;
pub mod store;
pub mod sync;

/// `e` and its causes, outermost first, joined by ": " (what `{:#}` prints for an
/// `anyhow::Error`), for logs and stored error texts: an error whose cause is its `source`
/// says little on its own ("state database query failed (claim outbox messages)").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
