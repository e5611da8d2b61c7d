//! What the ETL knows of each program: the decoded accounts and the offers
//! last written, so an account change turns into the smallest write.

use std::collections::{BTreeSet, HashMap, HashSet};

use offer_domain::MarginOffer;
use solana_sources::decode::{DecodeError, check_owner};
use solana_sources::lavarage::{self, Lookups, MintInfo, NodeWalletAccount, Pool, Version};
use solana_sources::marginfi::{self, Bank, Group};
use solana_sources::pubkey::{TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID};
use solana_sources::rpc::{Account, RpcClient, RpcError};
use solana_sources::{Pubkey, rpc::Filter};

use crate::{Kind, Program, dropped};

/// Offers to write and ids to delete after a batch of account changes.
#[derive(Debug, Default)]
pub struct Plan {
    pub upserts: Vec<MarginOffer>,
    pub deletes: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

/// A closed account: no lamports, no data, or no longer the program's.
fn closed(account: &Account, program: &Pubkey) -> bool {
    account.lamports == 0 || account.data.is_empty() || account.owner != *program
}

pub enum State {
    Lavarage(LavarageState),
    Marginfi(MarginfiState),
}

impl State {
    pub fn new(program: Program, group: Pubkey) -> State {
        match program {
            Program::LavarageV1 => State::Lavarage(LavarageState::new(Version::V1)),
            Program::LavarageV2 => State::Lavarage(LavarageState::new(Version::V2)),
            Program::Marginfi => State::Marginfi(MarginfiState {
                group_key: group,
                group: None,
                banks: HashMap::new(),
                written: HashMap::new(),
                dirty: false,
            }),
        }
    }

    /// Records one account change; the offers are built by [`State::plan`].
    pub fn apply(&mut self, program: Program, kind: Kind, key: Pubkey, account: &Account) {
        match self {
            State::Lavarage(s) => s.apply(program, kind, key, account),
            State::Marginfi(s) => s.apply(key, account),
        }
    }

    /// The writes that bring the store to the current state, after fetching
    /// the lookups the changed offers need.
    pub async fn plan(&mut self, program: Program, rpc: &RpcClient) -> Result<Plan, RpcError> {
        match self {
            State::Lavarage(s) => s.plan(program, rpc).await,
            State::Marginfi(s) => Ok(s.plan()),
        }
    }

    /// Every offer of the scope, for a resync's scoped overwrite; afterwards
    /// these count as written.
    pub async fn all_offers(
        &mut self,
        program: Program,
        rpc: &RpcClient,
    ) -> Result<Vec<MarginOffer>, RpcError> {
        match self {
            State::Lavarage(s) => {
                s.dirty.extend(s.pools.keys().copied());
                s.written.clear();
            }
            State::Marginfi(s) => {
                s.dirty = true;
                s.written.clear();
            }
        }
        let plan = self.plan(program, rpc).await?;
        Ok(plan.upserts)
    }
}

/// The subscriptions (and resync scans) of a program: (kind, filters).
pub fn subscriptions(program: Program, group: &Pubkey) -> Vec<(Kind, Vec<Filter>)> {
    match program {
        Program::LavarageV1 | Program::LavarageV2 => vec![
            (Kind::Pool, lavarage::pool_filters()),
            (Kind::NodeWallet, lavarage::node_wallet_filters()),
        ],
        Program::Marginfi => vec![(Kind::Bank, marginfi::bank_filters(group))],
    }
}

pub struct LavarageState {
    version: Version,
    pools: HashMap<Pubkey, Pool>,
    lookups: Lookups,
    /// Pools whose offer must be rebuilt at the next plan.
    dirty: HashSet<Pubkey>,
    written: HashMap<String, MarginOffer>,
}

impl LavarageState {
    fn new(version: Version) -> Self {
        LavarageState {
            version,
            pools: HashMap::new(),
            lookups: Lookups::default(),
            dirty: HashSet::new(),
            written: HashMap::new(),
        }
    }

    fn apply(&mut self, program: Program, kind: Kind, key: Pubkey, account: &Account) {
        let program_id = self.version.program_id();
        match kind {
            Kind::Pool | Kind::Bank => {
                self.dirty.insert(key);
                if closed(account, &program_id) {
                    self.pools.remove(&key);
                    return;
                }
                match lavarage::decode_pool(self.version, &account.data) {
                    Ok(p) => {
                        self.pools.insert(key, p);
                    }
                    Err(e) => {
                        // No longer an offer: its offer goes.
                        self.pools.remove(&key);
                        not_an_offer(program, &key, &e);
                    }
                }
            }
            Kind::NodeWallet => {
                let decoded = if closed(account, &program_id) {
                    None
                } else {
                    match lavarage::decode_node_wallet(self.version, &account.data) {
                        Ok(w) => Some(w),
                        Err(e) => {
                            not_an_offer(program, &key, &e);
                            None
                        }
                    }
                };
                match decoded {
                    Some(wallet) => {
                        self.lookups.node_wallets.insert(
                            key,
                            NodeWalletAccount {
                                wallet,
                                lamports: account.lamports,
                                data_len: account.data.len(),
                            },
                        );
                    }
                    None => {
                        self.lookups.node_wallets.remove(&key);
                    }
                }
                let affected = self
                    .pools
                    .iter()
                    .filter(|(_, p)| p.node_wallet == key)
                    .map(|(k, _)| *k);
                self.dirty.extend(affected);
            }
        }
    }

    async fn plan(&mut self, program: Program, rpc: &RpcClient) -> Result<Plan, RpcError> {
        if self.dirty.is_empty() {
            return Ok(Plan::default());
        }
        self.fetch_lookups(program, rpc).await?;
        let mut plan = Plan::default();
        for key in std::mem::take(&mut self.dirty) {
            let id = key.to_string();
            let offer = match self.pools.get(&key) {
                Some(pool) => {
                    match lavarage::build_offer(
                        &key,
                        pool,
                        &self.lookups,
                        lavarage::DEFAULT_OPEN_LTV,
                    ) {
                        Ok(o) => Some(o),
                        Err(s) => {
                            tracing::warn!(program = program.source_tag(), pool = %key, "pool skipped: {}", s.reason);
                            dropped(program, s.reason.label());
                            None
                        }
                    }
                }
                None => None,
            };
            diff(&mut self.written, &mut plan, id, offer);
        }
        Ok(plan)
    }

    /// Node wallets the state lacks, V2 quote mints (cached: they never
    /// change decimals) and the node wallets' ATAs of dirty pools (always
    /// re-read: balances move without the pool changing).
    async fn fetch_lookups(&mut self, program: Program, rpc: &RpcClient) -> Result<(), RpcError> {
        let dirty_pools: Vec<Pool> = self
            .dirty
            .iter()
            .filter_map(|k| self.pools.get(k).cloned())
            .collect();
        let missing: Vec<Pubkey> = dirty_pools
            .iter()
            .map(|p| p.node_wallet)
            .filter(|k| !self.lookups.node_wallets.contains_key(k))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            let got = rpc.get_multiple_accounts(&missing).await?;
            for (k, a) in missing.iter().zip(got) {
                let Some(a) = a else { continue };
                if check_owner(&a.owner, &self.version.program_id()).is_err() {
                    continue;
                }
                match lavarage::decode_node_wallet(self.version, &a.data) {
                    Ok(wallet) => {
                        self.lookups.node_wallets.insert(
                            *k,
                            NodeWalletAccount {
                                wallet,
                                lamports: a.lamports,
                                data_len: a.data.len(),
                            },
                        );
                    }
                    Err(e) => not_an_offer(program, k, &e),
                }
            }
        }
        if self.version != Version::V2 {
            return Ok(());
        }
        let mints: Vec<Pubkey> = dirty_pools
            .iter()
            .map(Pool::quote_mint)
            .filter(|m| !self.lookups.mints.contains_key(m))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !mints.is_empty() {
            let got = rpc.get_multiple_accounts(&mints).await?;
            for (k, a) in mints.iter().zip(got) {
                let Some(a) = a else { continue };
                if !is_token_program(&a.owner) {
                    continue;
                }
                if let Ok(decimals) = lavarage::decode_mint_decimals(&a.data) {
                    self.lookups.mints.insert(
                        *k,
                        MintInfo {
                            decimals,
                            token_program: a.owner,
                        },
                    );
                }
            }
        }
        let atas: Vec<Pubkey> = dirty_pools
            .iter()
            .flat_map(|p| lavarage::node_wallet_atas(&p.node_wallet, &p.quote_mint()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !atas.is_empty() {
            let got = rpc.get_multiple_accounts(&atas).await?;
            for (k, a) in atas.iter().zip(got) {
                let token = a
                    .filter(|a| is_token_program(&a.owner))
                    .and_then(|a| lavarage::decode_token_account(&a.data).ok());
                match token {
                    Some(t) => {
                        self.lookups.token_accounts.insert(*k, t);
                    }
                    None => {
                        self.lookups.token_accounts.remove(k);
                    }
                }
            }
        }
        Ok(())
    }
}

pub struct MarginfiState {
    group_key: Pubkey,
    group: Option<Group>,
    banks: HashMap<Pubkey, Bank>,
    dirty: bool,
    written: HashMap<String, MarginOffer>,
}

impl MarginfiState {
    fn apply(&mut self, key: Pubkey, account: &Account) {
        self.dirty = true;
        if closed(account, &marginfi::PROGRAM_ID) {
            self.banks.remove(&key);
            return;
        }
        match marginfi::decode_bank(&account.data) {
            Ok(b) if b.group == self.group_key => {
                self.banks.insert(key, b);
            }
            Ok(_) => {
                self.banks.remove(&key);
            }
            Err(e) => {
                self.banks.remove(&key);
                not_an_offer(Program::Marginfi, &key, &e);
            }
        }
    }

    /// Sets the group (fees) read at a resync.
    pub fn set_group(&mut self, group: Option<Group>) {
        self.group = group;
        self.dirty = true;
    }

    pub fn group_key(&self) -> Pubkey {
        self.group_key
    }

    /// Rebuilds every pair (cheap next to a write) and writes the difference:
    /// a bank change can alter any pair it is part of.
    fn plan(&mut self) -> Plan {
        let mut plan = Plan::default();
        if !std::mem::take(&mut self.dirty) {
            return plan;
        }
        let banks: Vec<(Pubkey, Bank)> = self.banks.iter().map(|(k, b)| (*k, b.clone())).collect();
        let (offers, skips) =
            marginfi::build_offers_in_group(&self.group_key, self.group.as_ref(), &banks);
        for _ in &skips {
            dropped(Program::Marginfi, "invalid_ltv");
        }
        let mut fresh: HashMap<String, MarginOffer> =
            offers.into_iter().map(|o| (o.id.clone(), o)).collect();
        let gone: Vec<String> = self
            .written
            .keys()
            .filter(|id| !fresh.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            diff(&mut self.written, &mut plan, id, None);
        }
        let ids: Vec<String> = fresh.keys().cloned().collect();
        for id in ids {
            let offer = fresh.remove(&id);
            diff(&mut self.written, &mut plan, id, offer);
        }
        plan
    }
}

/// Adds to `plan` what turns `written[id]` into `offer`, and records it.
fn diff(
    written: &mut HashMap<String, MarginOffer>,
    plan: &mut Plan,
    id: String,
    offer: Option<MarginOffer>,
) {
    match offer {
        Some(o) => {
            if written.get(&id) != Some(&o) {
                written.insert(id, o.clone());
                plan.upserts.push(o);
            }
        }
        None => {
            if written.remove(&id).is_some() {
                plan.deletes.push(id);
            }
        }
    }
}

fn is_token_program(k: &Pubkey) -> bool {
    *k == TOKEN_PROGRAM_ID || *k == TOKEN_2022_PROGRAM_ID
}

fn not_an_offer(program: Program, key: &Pubkey, e: &DecodeError) {
    tracing::debug!(program = program.source_tag(), account = %key, "not an offer account: {e}");
    dropped(program, e.reason());
}
