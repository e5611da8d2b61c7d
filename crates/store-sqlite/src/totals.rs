//! The `total` of a listing, remembered between pages.
//!
//! Counting the matches of a broad filter reads every matching index entry
//! (a million on an unfiltered book), while the page itself is an index
//! range read that stops at the limit; so following page tokens would cost
//! a full count per page. A count stays exact while (a) no write commits,
//! i.e. the revision is unchanged, and (b) no counted offer expires, i.e.
//! `now` has not passed the earliest `expires_at` among the counted rows.
//! Entries are checked against both on every use, so a hit is the count a
//! fresh query would return.

use offer_domain::{ListQuery, Revision, StoreResult, Timestamp};
use parking_lot::Mutex;
use std::collections::HashMap;

/// More distinct filters than this in use at once empties the cache: the
/// bound keeps memory flat under arbitrary queries, and refilling is cheap.
const MAX_ENTRIES: usize = 1024;

#[derive(Clone, Copy)]
struct Cached {
    revision: Revision,
    total: i64,
    /// The count is exact while `now <= valid_through` (nanoseconds).
    valid_through: i64,
}

#[derive(Default)]
pub(crate) struct TotalCache {
    entries: Mutex<HashMap<String, Cached>>,
}

/// What selects the counted rows: everything but sort and paging. The
/// serialisation of the domain's own types, so two queries share a key
/// only when they select the same rows.
fn key(query: &ListQuery) -> Option<String> {
    serde_json::to_string(&(&query.filter, query.include_expired, query.active_only)).ok()
}

impl TotalCache {
    /// The cached total of `query` at `revision` and `now`, or `count()`'s,
    /// which returns the count and the earliest `expires_at` among the
    /// counted rows (None: none expires).
    pub(crate) fn get_or_count(
        &self,
        query: &ListQuery,
        revision: Revision,
        now: Timestamp,
        count: impl FnOnce() -> StoreResult<(i64, Option<i64>)>,
    ) -> StoreResult<i64> {
        let key = key(query);
        if let Some(key) = &key
            && let Some(hit) = self.entries.lock().get(key).copied()
            && hit.revision == revision
            && now.as_nanos() <= hit.valid_through
        {
            return Ok(hit.total);
        }
        let (total, earliest_expiry) = count()?;
        // With expired offers included, time changes nothing.
        let valid_through = match earliest_expiry {
            Some(at) if !query.include_expired => at,
            _ => i64::MAX,
        };
        if let Some(key) = key {
            let mut entries = self.entries.lock();
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(
                key,
                Cached {
                    revision,
                    total,
                    valid_through,
                },
            );
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::cell::Cell;

    fn counting(
        calls: &Cell<u32>,
        result: (i64, Option<i64>),
    ) -> impl FnOnce() -> StoreResult<(i64, Option<i64>)> + '_ {
        move || {
            calls.set(calls.get() + 1);
            Ok(result)
        }
    }

    #[test]
    fn a_count_is_reused_only_at_the_same_revision_before_the_next_expiry() {
        let cache = TotalCache::default();
        let q = ListQuery::default();
        let calls = Cell::new(0);
        let at = Timestamp::from_nanos;
        assert_eq!(
            cache
                .get_or_count(&q, 1, at(10), counting(&calls, (5, Some(20))))
                .unwrap(),
            5
        );
        assert_eq!(
            cache
                .get_or_count(&q, 1, at(20), counting(&calls, (9, None)))
                .unwrap(),
            5
        );
        assert_eq!(calls.get(), 1);
        // Past the earliest expiry: recounted.
        assert_eq!(
            cache
                .get_or_count(&q, 1, at(21), counting(&calls, (4, None)))
                .unwrap(),
            4
        );
        assert_eq!(calls.get(), 2);
        // A new revision: recounted.
        assert_eq!(
            cache
                .get_or_count(&q, 2, at(21), counting(&calls, (6, None)))
                .unwrap(),
            6
        );
        assert_eq!(calls.get(), 3);
        // Another filter has its own entry.
        let mut other = q.clone();
        other.filter.borrow_token = Some("USDC".into());
        assert_eq!(
            cache
                .get_or_count(&other, 2, at(21), counting(&calls, (1, None)))
                .unwrap(),
            1
        );
        assert_eq!(
            cache
                .get_or_count(&q, 2, at(22), counting(&calls, (0, None)))
                .unwrap(),
            6
        );
        assert_eq!(calls.get(), 4);
    }
}
