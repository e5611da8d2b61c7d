//! Synthetic books with a realistic shape, shared by the benchmarks and
//! load tests: a few hundred mints, Zipf-distributed token pairs (a handful
//! of pairs hold most offers, as on real venues), three offer types and ten
//! sources. Deterministic for a given seed, so runs compare like with like.

use offer_domain::{InterestModel, MarginOffer, OfferType, Timestamp};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

pub const MINTS: usize = 300;
pub const SOURCES: usize = 10;

/// The borrow token most offers use; a selective-but-large filter value.
pub fn popular_borrow_token() -> String {
    mint(0)
}

pub fn mint(i: usize) -> String {
    format!("Mint{i:03}")
}

/// `n` valid offers with ids `offer-000000...`, created over the past 30 days.
pub fn book(n: usize, seed: u64) -> Vec<MarginOffer> {
    let mut rng = SmallRng::seed_from_u64(seed);
    // MINTS is small and positive, so these parameters are always valid.
    let zipf = Zipf::new(MINTS as f64, 1.1).ok();
    let pick = |rng: &mut SmallRng| -> usize {
        zipf.as_ref()
            .map_or(0, |z| (z.sample(rng) as usize).saturating_sub(1))
            .min(MINTS - 1)
    };
    let now = Timestamp::now().as_nanos();
    (0..n)
        .map(|i| {
            let borrow = pick(&mut rng);
            let mut collateral = pick(&mut rng);
            if collateral == borrow {
                collateral = (collateral + 1) % MINTS;
            }
            let open: f64 = rng.random_range(0.3..0.85);
            MarginOffer {
                id: format!("offer-{i:07}"),
                offer_type: OfferType::ALL[rng.random_range(0..3)],
                collateral_token: mint(collateral),
                borrow_token: mint(borrow),
                available_borrow_amount: rng.random_range(0.0..1_000_000.0),
                max_open_ltv: open,
                liquidation_ltv: (open + rng.random_range(0.02..0.14)).min(1.0),
                interest_rate: rng.random_range(0.0..0.4),
                interest_model: if rng.random_bool(0.7) {
                    InterestModel::Floating
                } else {
                    InterestModel::Fixed
                },
                term_days: rng.random_bool(0.2).then(|| rng.random_range(30..365)),
                liquidity_source: ["lavarage", "marginfi", "partner"][rng.random_range(0..3)]
                    .into(),
                lender_address: rng
                    .random_bool(0.5)
                    .then(|| format!("Lender{:04}", rng.random_range(0..5000))),
                last_borrowed_timestamp: None,
                created_timestamp: Some(Timestamp::from_nanos(
                    now - rng.random_range(0..30 * 86_400) * 1_000_000_000,
                )),
                updated_timestamp: None,
                source: Some(format!("source-{}", rng.random_range(0..SOURCES))),
            }
        })
        .collect()
}
