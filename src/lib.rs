//! mailbridge: connects a club's member database to the newsletter services the club uses
//! (Mailchimp, Constant Contact) and to an SMTP relay. See `../shared/DESIGN.md` for the map.

pub mod campaigns;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod events;
pub mod http;
pub mod mapping;
pub mod progress;
pub mod providers;
pub mod relay;
pub mod simulator;
pub mod source;
pub mod store;
pub mod sync;
