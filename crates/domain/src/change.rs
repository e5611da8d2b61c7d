//! Revisions and change records: what the change stream replays.

use crate::offer::MarginOffer;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// The store's write counter. Every committed write call that changes
/// something takes the next revision; all its changes carry it.
pub type Revision = i64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChangeType {
    Created,
    Updated,
    Deleted,
    /// Created or changed by an overwrite (deletions by one are `Deleted`).
    Overwritten,
}

impl ChangeType {
    /// The wire enum value of `MarginOfferChange.ChangeType`.
    pub fn wire_value(self) -> i32 {
        match self {
            ChangeType::Created => 1,
            ChangeType::Updated => 2,
            ChangeType::Deleted => 3,
            ChangeType::Overwritten => 4,
        }
    }

    pub fn from_wire_value(v: i32) -> Option<Self> {
        Some(match v {
            1 => ChangeType::Created,
            2 => ChangeType::Updated,
            3 => ChangeType::Deleted,
            4 => ChangeType::Overwritten,
            _ => return None,
        })
    }
}

/// One change to one offer, as recorded in the change log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub revision: Revision,
    pub change_type: ChangeType,
    /// The new state, or for `Deleted` the last stored state.
    pub offer: MarginOffer,
    pub timestamp: Timestamp,
    /// Who wrote: `api`, `backfiller`, `etl` or a caller-supplied name.
    pub origin: String,
    /// One id per write call; all changes of a call share it.
    pub operation_id: String,
}

/// Who is writing, carried into every change record of the write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteContext {
    pub origin: String,
    /// Empty lets the store assign one.
    pub operation_id: String,
}

impl WriteContext {
    pub fn new(origin: impl Into<String>) -> Self {
        WriteContext {
            origin: origin.into(),
            operation_id: String::new(),
        }
    }
}

impl Default for WriteContext {
    fn default() -> Self {
        WriteContext::new("api")
    }
}
