//! Domain types parsed once at the edge: [`Email`], [`MemberKey`], [`Consent`],
//! [`SubscriptionStatus`]. Raw strings do not travel past the module that read them.

mod consent;
mod email;
mod member_key;
mod status;

pub use consent::Consent;
pub use email::{Email, EmailError};
pub use member_key::MemberKey;
pub use status::SubscriptionStatus;
