//! Equality indexes of the in-memory store: field value → ids.

use offer_domain::{MarginOffer, OfferFilter, OfferType};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

type Ids = HashSet<Arc<str>>;

#[derive(Default)]
pub(crate) struct Indexes {
    offer_type: HashMap<OfferType, Ids>,
    collateral_token: HashMap<String, Ids>,
    borrow_token: HashMap<String, Ids>,
    liquidity_source: HashMap<String, Ids>,
    lender_address: HashMap<String, Ids>,
    source: HashMap<String, Ids>,
}

fn add<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Ids>, key: K, id: &Arc<str>) {
    map.entry(key).or_default().insert(id.clone());
}

fn drop_id<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Ids>, key: &K, id: &str) {
    if let Some(ids) = map.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            map.remove(key);
        }
    }
}

static EMPTY: std::sync::LazyLock<Ids> = std::sync::LazyLock::new(Ids::new);

impl Indexes {
    pub(crate) fn insert(&mut self, o: &MarginOffer, id: &Arc<str>) {
        add(&mut self.offer_type, o.offer_type, id);
        add(&mut self.collateral_token, o.collateral_token.clone(), id);
        add(&mut self.borrow_token, o.borrow_token.clone(), id);
        add(&mut self.liquidity_source, o.liquidity_source.clone(), id);
        if let Some(l) = &o.lender_address {
            add(&mut self.lender_address, l.clone(), id);
        }
        if let Some(s) = &o.source {
            add(&mut self.source, s.clone(), id);
        }
    }

    pub(crate) fn remove(&mut self, o: &MarginOffer, id: &str) {
        drop_id(&mut self.offer_type, &o.offer_type, id);
        drop_id(&mut self.collateral_token, &o.collateral_token, id);
        drop_id(&mut self.borrow_token, &o.borrow_token, id);
        drop_id(&mut self.liquidity_source, &o.liquidity_source, id);
        if let Some(l) = &o.lender_address {
            drop_id(&mut self.lender_address, l, id);
        }
        if let Some(s) = &o.source {
            drop_id(&mut self.source, s, id);
        }
    }

    /// The smallest id set that a filter's equality conditions allow, or
    /// `None` when the filter has no indexed condition (scan everything).
    pub(crate) fn narrowest(&self, f: &OfferFilter) -> Option<&Ids> {
        fn get<'a, K: std::hash::Hash + Eq>(m: &'a HashMap<K, Ids>, k: &K) -> &'a Ids {
            m.get(k).unwrap_or(&EMPTY)
        }
        let candidates = [
            f.offer_type.as_ref().map(|k| get(&self.offer_type, k)),
            f.collateral_token
                .as_ref()
                .map(|k| get(&self.collateral_token, k)),
            f.borrow_token.as_ref().map(|k| get(&self.borrow_token, k)),
            f.liquidity_source
                .as_ref()
                .map(|k| get(&self.liquidity_source, k)),
            f.lender_address
                .as_ref()
                .map(|k| get(&self.lender_address, k)),
            f.source.as_ref().map(|k| get(&self.source, k)),
        ];
        candidates.into_iter().flatten().min_by_key(|ids| ids.len())
    }
}
