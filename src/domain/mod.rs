//! Domain types parsed once at the edge: [`Email`], [`MemberKey`], [`Consent`],
//! [`SubscriptionStatus`], a member row's column [`Value`], and what runs share: run ids and the
//! per-member [`ReportError`]. Raw strings do not travel past the module that read them.

mod consent;
mod email;
mod member_key;
mod run;
mod status;
mod time;
mod value;

pub use consent::Consent;
pub use email::{AddressPrefix, Email, EmailError};
pub use member_key::MemberKey;
pub use run::{ReportError, new_run_id};
pub use status::{SubscriptionStatus, WriteStatus};
pub use time::parse_time;
pub use value::Value;
