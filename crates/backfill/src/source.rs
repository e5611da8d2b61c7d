//! What a liquidity source is to the engine.

use crate::job::{JobSpec, SourceKind, TimeWindow};
use crate::status::Progress;
use async_trait::async_trait;
use offer_domain::MarginOffer;
use std::collections::HashMap;
use std::sync::Arc;

/// The complete current offers of one scope.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScopeSnapshot {
    /// The scope's source tag; the engine stamps it on every offer's `source`
    /// (except for archive restores, whose offers keep their own).
    pub scope: String,
    pub offers: Vec<MarginOffer>,
}

/// Everything one fetch produced: one scope per program of a chain job, one
/// for an off-chain job. Each scope is applied as its own atomic overwrite.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub scopes: Vec<ScopeSnapshot>,
}

impl Snapshot {
    pub fn single(scope: impl Into<String>, offers: Vec<MarginOffer>) -> Self {
        Snapshot {
            scopes: vec![ScopeSnapshot {
                scope: scope.into(),
                offers,
            }],
        }
    }

    pub fn offer_count(&self) -> usize {
        self.scopes.iter().map(|s| s.offers.len()).sum()
    }
}

/// Why a fetch failed, and whether trying again can help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Rate limits, 5xx, connection resets, timeouts.
    #[error("transient source error: {0}")]
    Transient(String),
    /// Bad data, decoding or configuration problems: retrying cannot help.
    #[error("{0}")]
    Permanent(String),
}

impl SourceError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Transient(_))
    }
}

/// Fetches a job's complete snapshot.
///
/// Implementations report what they fetch through `progress` so `/status`
/// can show it while the run is going.
#[async_trait]
pub trait Source: Send + Sync {
    async fn fetch(
        &self,
        job: &JobSpec,
        window: TimeWindow,
        progress: &Progress,
    ) -> Result<Snapshot, SourceError>;
}

/// The source serving each kind of job.
#[derive(Clone, Default)]
pub struct SourceRegistry {
    sources: HashMap<SourceKind, Arc<dyn Source>>,
}

impl SourceRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, kind: SourceKind, source: Arc<dyn Source>) -> Self {
        self.register(kind, source);
        self
    }

    pub fn register(&mut self, kind: SourceKind, source: Arc<dyn Source>) {
        self.sources.insert(kind, source);
    }

    pub fn get(&self, kind: SourceKind) -> Option<&Arc<dyn Source>> {
        self.sources.get(&kind)
    }
}
