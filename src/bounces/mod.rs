//! Bounce mail: parsing and classifying what comes back (DSNs, MTA bounce texts, ARF complaints,
//! auto-replies) into a [`BounceReport`], and applying it to the outbox, the suppression list and
//! the member database.
//!
//! [`parse`] is pure (no config, no database): `mailbridge bounce parse` prints its answer.

pub mod ingest;
mod report;

pub use report::{BounceKind, BounceReport, Reason, Recipient};

/// Parses and classifies one raw message (RFC 5322 bytes, any line endings). Never panics: a
/// message that cannot be read is a [`BounceKind::NotBounce`] with the reason.
pub fn parse(raw: &[u8]) -> BounceReport {
    let _ = raw;
    BounceReport::not_bounce("the bounce parser is not built yet")
}
