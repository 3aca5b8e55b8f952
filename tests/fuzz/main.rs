//! Fuzz targets for every decoder of outside input (issue 24): proptest over arbitrary bytes and
//! over mutations of the seed corpus in `tests/fixtures/fuzz/<target>/`. Each target asserts
//! properties that can fail, not only "does not panic".
//!
//! `MAILBRIDGE_FUZZ_CASES=20000 cargo test --release --test fuzz` runs a longer session; see
//! `tests/fixtures/fuzz/README.md`.
//!
//! Adding a target: put a few realistic seeds in `tests/fixtures/fuzz/<name>/`, then
//!
//! ```ignore
//! #[test]
//! fn name() {
//!     fuzz("name", |input| {
//!         let _ = decode(input); // then prop_assert! what must hold
//!         Ok(())
//!     });
//! }
//! ```

mod bounce;
mod bounce_ingest;
mod constant_contact;
mod env;
mod harness;
mod render;
mod sql;
mod verp;
mod webhook;

use harness::{fuzz, fuzz_with};

#[test]
fn env_expansion() {
    fuzz("env_expansion", env::check_value);
}

#[test]
fn config_file() {
    fuzz("config_file", env::check_config_file);
}

#[test]
fn writeback_sql() {
    fuzz("writeback_sql", sql::check);
}

#[test]
fn verp_decode() {
    fuzz("verp", verp::check_decode);
}

#[test]
fn verp_seeds_are_what_their_names_say() {
    verp::check_seed_names();
}

#[test]
fn verp_round_trip() {
    fuzz_with(
        "verp_round_trip",
        verp::ids_and_domains(),
        verp::check_round_trip,
    );
}

#[test]
fn message_render() {
    fuzz("message_render", render::check_json);
}

#[test]
fn message_render_fields() {
    fuzz_with(
        "message_render_fields",
        render::messages(),
        render::check_message,
    );
}

#[test]
fn mailchimp_form() {
    fuzz("mailchimp_form", webhook::check_mailchimp_form);
}

#[test]
fn mandrill_json() {
    fuzz("mandrill_json", webhook::check_mandrill_json);
}

#[test]
fn constant_contact_error() {
    fuzz("constant_contact_error", constant_contact::check_error_body);
}

#[test]
fn bounce_parse() {
    fuzz("bounce_parse", bounce::check_parse);
}

#[test]
fn bounce_ingest() {
    // Each case is two ingests with their SQLite commits: a fifth of the cases.
    harness::fuzz_costly("bounce_ingest", 5, bounce_ingest::check);
}
