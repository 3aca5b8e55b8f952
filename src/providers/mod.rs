//! Provider clients and what they share. [`retry`] is the one place that classifies failed calls
//! and backs off; [`mailchimp`] is the Mailchimp Marketing API client. Each provider is a folder:
//! client, private wire types, tests.

pub mod mailchimp;
pub mod retry;
