//! The chain source: reads Lavarage V1/V2 and marginfi accounts over Solana
//! JSON-RPC and turns them into offers by the rules of `solana-sources.md`.
//!
//! Each program of the job is its own scope (`Program::source_tag()`), so a
//! job listing two programs applies two independent atomic overwrites.
//!
//! Per program:
//! - Lavarage: `getProgramAccounts` with memcmp on the Pool discriminator,
//!   then again on the NodeWallet discriminator; `getMultipleAccounts` for
//!   node wallets the scan missed, V2 quote mints and the node wallets'
//!   associated token accounts under both token programs.
//! - marginfi: `getProgramAccounts` with memcmp on the Bank discriminator and
//!   on the group at offset 41, `getAccountInfo` for the group, then the pair
//!   rule.
//!
//! Failure policy: a malformed *account* (short, wrong discriminator, wrong
//! owner) is skipped and counted in `chain_accounts_skipped_total{program,
//! reason}`; an item the rules cannot turn into an offer is counted in
//! `chain_offers_skipped_total{program,reason}`. A malformed *response*
//! (bad JSON, bad base64) fails the run as permanent with nothing written;
//! transport failures that outlast the client's retries are transient.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use offer_domain::MarginOffer;
use solana_sources::decode::DecodeError;
use solana_sources::lavarage::{self, Lookups, MintInfo, NodeWalletAccount, Version};
use solana_sources::marginfi;
use solana_sources::pubkey::{Pubkey, TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID};
use solana_sources::rpc::{AccountRef, RpcClient, RpcError, RpcOptions};

use crate::job::{ChainParams, JobSpec, Program, SourceParams, TimeWindow};
use crate::source::{ScopeSnapshot, Snapshot, Source, SourceError};
use crate::status::Progress;

/// Source-wide settings; job `chain_params` may override the RPC ones.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainOptions {
    pub rpc: RpcOptions,
    /// `max_open_ltv` of Lavarage pools whose layout has no `open_ltv`.
    pub default_open_ltv: f64,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions {
            rpc: RpcOptions::default(),
            default_open_ltv: lavarage::DEFAULT_OPEN_LTV,
        }
    }
}

pub struct ChainSource {
    endpoint: String,
    opts: ChainOptions,
}

impl ChainSource {
    /// Checks the endpoint now so a bad `--chain-endpoint` fails at start-up.
    pub fn new(endpoint: impl Into<String>, opts: ChainOptions) -> Result<Self, SourceError> {
        let endpoint = endpoint.into();
        RpcClient::new(&endpoint, opts.rpc.clone()).map_err(map_rpc)?;
        Ok(ChainSource { endpoint, opts })
    }

    fn client(&self, params: &ChainParams) -> Result<RpcClient, SourceError> {
        let mut rpc = self.opts.rpc.clone();
        if let Some(v2) = params.use_get_program_accounts_v2 {
            rpc.use_get_program_accounts_v2 = v2;
        }
        if let Some(t) = params.program_accounts_timeout {
            rpc.program_accounts_timeout = t;
        }
        if let Some(t) = params.rpc_timeout {
            rpc.request_timeout = t;
        }
        RpcClient::new(&self.endpoint, rpc).map_err(map_rpc)
    }
}

fn map_rpc(e: RpcError) -> SourceError {
    if e.is_transient() {
        SourceError::Transient(e.to_string())
    } else {
        SourceError::Permanent(e.to_string())
    }
}

fn skipped_account(program: Program, reason: &'static str) {
    metrics::counter!(
        "chain_accounts_skipped_total",
        "program" => program.source_tag(),
        "reason" => reason
    )
    .increment(1);
}

fn skipped_offer(program: Program, reason: &'static str) {
    metrics::counter!(
        "chain_offers_skipped_total",
        "program" => program.source_tag(),
        "reason" => reason
    )
    .increment(1);
}

fn skip_account(program: Program, key: &Pubkey, what: &str, e: &DecodeError) {
    tracing::warn!(program = program.source_tag(), account = %key, "skipping malformed {what}: {e}");
    skipped_account(program, e.reason());
}

#[async_trait]
impl Source for ChainSource {
    async fn fetch(
        &self,
        job: &JobSpec,
        _window: TimeWindow,
        progress: &Progress,
    ) -> Result<Snapshot, SourceError> {
        let SourceParams::Chain(params) = &job.params else {
            return Err(SourceError::Permanent(format!(
                "job {:?} is not a chain job",
                job.name
            )));
        };
        let client = self.client(params)?;
        let mut scopes = Vec::with_capacity(params.programs.len());
        for &program in &params.programs {
            progress.set_phase("fetching accounts");
            let offers = match program {
                Program::LavarageV1 => {
                    self.lavarage(&client, program, Version::V1, progress)
                        .await?
                }
                Program::LavarageV2 => {
                    self.lavarage(&client, program, Version::V2, progress)
                        .await?
                }
                Program::Marginfi => marginfi_offers(&client, params, progress).await?,
            };
            tracing::info!(
                job = %job.name,
                program = program.source_tag(),
                offers = offers.len(),
                "chain snapshot"
            );
            scopes.push(ScopeSnapshot {
                scope: program.source_tag().to_owned(),
                offers,
            });
        }
        Ok(Snapshot { scopes })
    }
}

impl ChainSource {
    async fn lavarage(
        &self,
        client: &RpcClient,
        program: Program,
        version: Version,
        progress: &Progress,
    ) -> Result<Vec<MarginOffer>, SourceError> {
        let program_id = version.program_id();
        // Accounts are decoded as the response is parsed: no raw copies.
        let mut pools = Vec::new();
        let fetched = client
            .for_each_program_account(&program_id, &lavarage::pool_filters(), |pubkey, account| {
                match owned(&account.owner, &program_id)
                    .and_then(|()| lavarage::decode_pool(version, account.data))
                {
                    Ok(p) => pools.push((*pubkey, p)),
                    Err(e) => skip_account(program, pubkey, "pool", &e),
                }
            })
            .await
            .map_err(map_rpc)?;
        progress.add_fetched(fetched);

        let mut lookups = Lookups::default();
        let fetched = client
            .for_each_program_account(
                &program_id,
                &lavarage::node_wallet_filters(),
                |pubkey, account| add_node_wallet(&mut lookups, program, version, pubkey, account),
            )
            .await
            .map_err(map_rpc)?;
        progress.add_fetched(fetched);
        // A node wallet the scan did not return (e.g. a provider's index
        // lagging) is asked for by address before its pools are skipped.
        let missing: Vec<Pubkey> = pools
            .iter()
            .map(|(_, p)| p.node_wallet)
            .filter(|k| !lookups.node_wallets.contains_key(k))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            let got = client
                .get_multiple_accounts(&missing)
                .await
                .map_err(map_rpc)?;
            for (k, a) in missing.iter().zip(got) {
                if let Some(a) = a {
                    add_node_wallet(&mut lookups, program, version, k, a.view());
                }
            }
        }

        if version == Version::V2 {
            let mints: Vec<Pubkey> = pools
                .iter()
                .map(|(_, p)| p.quote_mint())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let got = client
                .get_multiple_accounts(&mints)
                .await
                .map_err(map_rpc)?;
            for (k, a) in mints.iter().zip(got) {
                let Some(a) = a else { continue };
                if !is_token_program(&a.owner) {
                    skipped_account(program, "mint_wrong_owner");
                    continue;
                }
                match lavarage::decode_mint_decimals(&a.data) {
                    Ok(decimals) => {
                        lookups.mints.insert(
                            *k,
                            MintInfo {
                                decimals,
                                token_program: a.owner,
                            },
                        );
                    }
                    Err(e) => skip_account(program, k, "mint", &e),
                }
            }
            // Both token programs' ATAs: the quote mint may be Token-2022.
            let atas: Vec<Pubkey> = pools
                .iter()
                .flat_map(|(_, p)| lavarage::node_wallet_atas(&p.node_wallet, &p.quote_mint()))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let got = client.get_multiple_accounts(&atas).await.map_err(map_rpc)?;
            for (k, a) in atas.iter().zip(got) {
                let Some(a) = a else { continue };
                if !is_token_program(&a.owner) {
                    skipped_account(program, "token_account_wrong_owner");
                    continue;
                }
                match lavarage::decode_token_account(&a.data) {
                    Ok(t) => {
                        lookups.token_accounts.insert(*k, t);
                    }
                    Err(e) => skip_account(program, k, "token account", &e),
                }
            }
        }

        progress.set_phase("building offers");
        let (offers, skips) = lavarage::build_offers(&pools, &lookups, self.opts.default_open_ltv);
        for s in &skips {
            tracing::warn!(program = program.source_tag(), pool = %s.id, "pool skipped: {}", s.reason);
            skipped_offer(program, s.reason.label());
        }
        Ok(offers)
    }
}

fn is_token_program(k: &Pubkey) -> bool {
    *k == TOKEN_PROGRAM_ID || *k == TOKEN_2022_PROGRAM_ID
}

fn owned(owner: &Pubkey, program: &Pubkey) -> Result<(), DecodeError> {
    solana_sources::decode::check_owner(owner, program)
}

fn add_node_wallet(
    lookups: &mut Lookups,
    program: Program,
    version: Version,
    key: &Pubkey,
    account: AccountRef<'_>,
) {
    match owned(&account.owner, &version.program_id())
        .and_then(|()| lavarage::decode_node_wallet(version, account.data))
    {
        Ok(wallet) => {
            lookups.node_wallets.insert(
                *key,
                NodeWalletAccount {
                    wallet,
                    lamports: account.lamports,
                    data_len: account.data.len(),
                },
            );
        }
        Err(e) => skip_account(program, key, "node wallet", &e),
    }
}

async fn marginfi_offers(
    client: &RpcClient,
    params: &ChainParams,
    progress: &Progress,
) -> Result<Vec<MarginOffer>, SourceError> {
    let program = Program::Marginfi;
    let group_key: Pubkey = params
        .group
        .as_deref()
        .unwrap_or(Program::MARGINFI_MAIN_GROUP)
        .parse()
        .map_err(|e| SourceError::Permanent(format!("chain_params.group: {e}")))?;
    let filters = marginfi::bank_filters(&group_key);
    let mut banks = Vec::new();
    let fetched = client
        .for_each_program_account(&marginfi::PROGRAM_ID, &filters, |pubkey, account| {
            match marginfi::check_marginfi_owner(&account.owner)
                .and_then(|()| marginfi::decode_bank(account.data))
            {
                Ok(b) => banks.push((*pubkey, b)),
                Err(e) => skip_account(program, pubkey, "bank", &e),
            }
        })
        .await
        .map_err(map_rpc)?;
    progress.add_fetched(fetched);
    // The group's program fees enter every borrow APR: without a readable
    // group the rates would be wrong, so the run fails instead.
    let group = match client.get_account_info(&group_key).await.map_err(map_rpc)? {
        Some(a) => marginfi::check_marginfi_owner(&a.owner)
            .and_then(|()| marginfi::decode_group(&a.data))
            .map_err(|e| SourceError::Permanent(format!("marginfi group {group_key}: {e}")))?,
        None if banks.is_empty() => marginfi::Group::default(),
        None => {
            return Err(SourceError::Permanent(format!(
                "marginfi group {group_key} not found"
            )));
        }
    };
    progress.add_fetched(1);
    progress.set_phase("building offers");
    let (offers, skips) = marginfi::build_offers_in_group(&group_key, Some(&group), &banks);
    for s in &skips {
        tracing::info!(program = "marginfi", pair = %s.id, "pair skipped: {}", s.reason);
        skipped_offer(program, "invalid_ltv");
    }
    Ok(offers)
}

/// Deadlines a job's `chain_params` asked for, for logs and `/status`.
pub fn effective_timeouts(opts: &ChainOptions, params: &ChainParams) -> (Duration, Duration) {
    (
        params
            .program_accounts_timeout
            .unwrap_or(opts.rpc.program_accounts_timeout),
        params.rpc_timeout.unwrap_or(opts.rpc.request_timeout),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_params_override_rpc_options() {
        let params = ChainParams {
            programs: vec![Program::Marginfi],
            network: "mainnet".into(),
            group: None,
            use_get_program_accounts_v2: Some(true),
            program_accounts_timeout: Some(Duration::from_secs(300)),
            rpc_timeout: None,
        };
        let opts = ChainOptions::default();
        assert_eq!(
            effective_timeouts(&opts, &params),
            (Duration::from_secs(300), Duration::from_secs(30))
        );
        let src = ChainSource::new("http://127.0.0.1:1/", opts);
        let Ok(src) = src else {
            panic!("valid endpoint refused")
        };
        let Ok(c) = src.client(&params) else {
            panic!("client")
        };
        assert!(c.options().use_get_program_accounts_v2);
        assert!(ChainSource::new("not a url", ChainOptions::default()).is_err());
    }
}
