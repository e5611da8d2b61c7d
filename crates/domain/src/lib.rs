//! The margin-offer book's domain: what an offer is, what makes one valid,
//! how offers are queried, and the pure planning of every kind of write.
//!
//! Layout:
//! - [`offer`]: `MarginOffer`, its enums, partial patches and content equality.
//! - [`time`]: the nanosecond `Timestamp` every layer shares.
//! - [`error`]: `StoreError`, the one error type every backend and the gRPC
//!   client return, and `FieldError`, a validation failure naming its field.
//! - [`validate`]: the validation rules of `semantics.md`.
//! - [`query`]: list queries, filters, sorting, expiry, keyset page tokens.
//! - [`write`]: bulk and overwrite planning shared by all backends, so each
//!   backend only loads rows and applies a plan.
//! - [`change`]: revisions and change records for the change stream.
//! - [`json`]: offers as JSON with wire field names (feeds, `offersctl`).
//!
//! Architecture invariant: this crate does no I/O and knows nothing of gRPC,
//! SQL or HTTP.

pub mod change;
pub mod error;
pub mod json;
pub mod offer;
pub mod query;
pub mod time;
pub mod validate;
pub mod write;

pub use change::{Change, ChangeType, Revision, WriteContext};
pub use error::{BulkError, ErrorCode, FieldError, StoreError, StoreResult};
pub use offer::{InterestModel, MarginOffer, OfferPatch, OfferType};
pub use query::{
    ListPage, ListQuery, OfferFilter, OverwriteFilter, SortField, SortOrder, Stats, StatsQuery,
};
pub use time::Timestamp;
pub use write::{
    BulkCreateOptions, BulkDeleteOptions, BulkOutcome, BulkUpdateOptions, BulkUpsertOptions,
    OverwriteOutcome, OverwriteRequest,
};
