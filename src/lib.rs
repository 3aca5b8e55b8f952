//! mailbridge: connects a club's member database to the newsletter services the club uses
//! (Mailchimp, Constant Contact) and to an SMTP relay. See `../shared/DESIGN.md` for the map.

pub mod simulator;
