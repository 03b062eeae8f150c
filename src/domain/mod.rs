//! Validated value types of the bid-opening domain.

pub mod record;
mod summary;
mod uscc;

pub use summary::{BidSummary, SummaryError};
pub use uscc::{Uscc, UsccError};
