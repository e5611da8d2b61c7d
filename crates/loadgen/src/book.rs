//! The synthetic book: a few hundred base58 mints, Zipf-distributed
//! (collateral, borrow) pairs, three offer types and ten sources.
//!
//! Offer `i` depends only on `(seed, i)`, so any offer can be rebuilt without
//! holding the book in memory (a million offers are generated one source at
//! a time) and `get` knows which ids exist.

use offer_domain::{InterestModel, MarginOffer, OfferType, Timestamp};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// Distinct mints; a few hundred, as on a real venue.
pub const MINTS: usize = 300;
/// Sources of the main book; offer `i` belongs to source `i % SOURCES`.
pub const SOURCES: usize = 10;
/// Zipf exponent of token popularity: a handful of mints carry most offers.
const ZIPF_EXPONENT: f64 = 1.1;
const LENDERS: u64 = 5_000;
const LIQUIDITY_SOURCES: [&str; SOURCES] = [
    "marginfi", "kamino", "solend", "drift", "lavarage", "mango", "jupiter", "save", "francium",
    "partner",
];

/// The shape of a book, fixed by its seed.
#[derive(Clone, Debug)]
pub struct Book {
    pub seed: u64,
    pub offers: usize,
    mints: Vec<String>,
    zipf: Zipf<f64>,
    /// Creation times are spread over the 30 days before this instant.
    now: Timestamp,
}

impl Book {
    pub fn new(seed: u64, offers: usize) -> anyhow::Result<Book> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mints = (0..MINTS)
            .map(|_| base58(&rng.random::<[u8; 32]>()))
            .collect();
        Ok(Book {
            seed,
            offers,
            mints,
            zipf: Zipf::new(MINTS as f64, ZIPF_EXPONENT)?,
            now: Timestamp::now(),
        })
    }

    pub fn mint(&self, rank: usize) -> &str {
        &self.mints[rank % MINTS]
    }

    /// A mint by popularity: rank 0 most often.
    pub fn popular_mint(&self, rng: &mut impl Rng) -> &str {
        self.mint(self.zipf_rank(rng))
    }

    fn zipf_rank(&self, rng: &mut impl Rng) -> usize {
        (self.zipf.sample(rng) as usize)
            .saturating_sub(1)
            .min(MINTS - 1)
    }

    pub fn source_name(source: usize) -> String {
        format!("loadgen-{source}")
    }

    pub fn id(i: usize) -> String {
        format!("lg-{i:08}")
    }

    /// Offer `i` of the main book.
    pub fn offer(&self, i: usize) -> MarginOffer {
        self.offer_in(i, &Book::source_name(i % SOURCES), &Book::id(i), 0)
    }

    /// Offer `i` of an extra scope (`source`), with ids `prefix-i`; each
    /// `version` gives every offer a different rate and amount, so writing
    /// version `v + 1` over version `v` changes every offer.
    pub fn scope_offer(&self, source: &str, i: usize, version: u64) -> MarginOffer {
        self.offer_in(i, source, &format!("{source}-{i:08}"), version)
    }

    /// The offers of source `source` of the main book, in id order.
    pub fn source_offers(&self, source: usize) -> impl Iterator<Item = MarginOffer> + '_ {
        (source..self.offers)
            .step_by(SOURCES)
            .map(move |i| self.offer(i))
    }

    fn offer_in(&self, i: usize, source: &str, id: &str, version: u64) -> MarginOffer {
        let mut rng = SmallRng::seed_from_u64(
            self.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ fnv(source),
        );
        let borrow = self.zipf_rank(&mut rng);
        let mut collateral = self.zipf_rank(&mut rng);
        if collateral == borrow {
            collateral = (collateral + 1) % MINTS;
        }
        let offer_type = match rng.random_range(0..100) {
            0..60 => OfferType::V1,
            60..85 => OfferType::BP,
            _ => OfferType::LV,
        };
        // LTVs in steps of 5 %, rates in basis points: real books are full
        // of ties, which exercise the id tie-break of every sort.
        let open = f64::from(rng.random_range(6u8..=17)) * 0.05;
        let liquidation = (open + f64::from(rng.random_range(1u8..=3)) * 0.025).min(0.99);
        let rate_bp = rng.random_range(50u32..=4_000) + (version % 97) as u32;
        // Log-uniform amounts, 10 .. 10 000 000 units, rounded to cents.
        let amount =
            (10f64.powf(rng.random_range(1.0..7.0)) * (1.0 + (version % 13) as f64 * 0.01) * 100.0)
                .round()
                / 100.0;
        let term_days = rng
            .random_bool(0.4)
            .then(|| [7, 14, 30, 90, 180][rng.random_range(0..5)]);
        let created_secs_ago = rng.random_range(0..30 * 86_400i64);
        MarginOffer {
            id: id.to_owned(),
            offer_type,
            collateral_token: self.mint(collateral).to_owned(),
            borrow_token: self.mint(borrow).to_owned(),
            available_borrow_amount: amount,
            max_open_ltv: open,
            liquidation_ltv: liquidation,
            interest_rate: f64::from(rate_bp) / 10_000.0,
            interest_model: if term_days.is_some() {
                InterestModel::Fixed
            } else {
                InterestModel::Floating
            },
            term_days,
            liquidity_source: LIQUIDITY_SOURCES[(fnv(source) as usize) % SOURCES].to_owned(),
            lender_address: rng.random_bool(0.7).then(|| {
                let lender = rng.random_range(0..LENDERS);
                base58(&SmallRng::seed_from_u64(lender).random::<[u8; 32]>())
            }),
            last_borrowed_timestamp: None,
            created_timestamp: Some(Timestamp::from_nanos(
                self.now.as_nanos() - created_secs_ago * 1_000_000_000,
            )),
            updated_timestamp: None,
            source: Some(source.to_owned()),
        }
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

const BASE58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Base58 (Bitcoin alphabet) of a 32-byte key, like a Solana address.
pub fn base58(bytes: &[u8]) -> String {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    // Little-endian base-58 digits.
    let mut digits: Vec<u8> = Vec::with_capacity(bytes.len() * 138 / 100 + 1);
    for &b in &bytes[zeros..] {
        let mut carry = u32::from(b);
        for d in &mut digits {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let mut out = String::with_capacity(zeros + digits.len());
    out.extend(std::iter::repeat_n('1', zeros));
    out.extend(digits.iter().rev().map(|d| BASE58[*d as usize] as char));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use offer_domain::validate::validate_offer;

    #[test]
    fn base58_matches_known_vectors() {
        assert_eq!(base58(&[0u8; 32]), "11111111111111111111111111111111");
        assert_eq!(base58(b"hello world"), "StV1DL6CwTryKyV");
        assert_eq!(base58(&[0, 0, 1]), "112");
    }

    #[test]
    fn offers_are_valid_deterministic_and_skewed() {
        let book = Book::new(7, 20_000).unwrap();
        let again = Book::new(7, 20_000).unwrap();
        let mut top_pair = std::collections::HashMap::new();
        for i in 0..book.offers {
            let o = book.offer(i);
            assert!(
                validate_offer(o.clone()).is_ok(),
                "offer {i} invalid: {o:?}"
            );
            let mut rebuilt = again.offer(i);
            rebuilt.created_timestamp = o.created_timestamp;
            assert_eq!(o, rebuilt);
            *top_pair.entry(o.borrow_token).or_insert(0usize) += 1;
        }
        assert!(top_pair.len() > 100, "only {} borrow mints", top_pair.len());
        let most = top_pair.values().max().copied().unwrap_or(0);
        assert!(most > book.offers / 10, "most popular mint has {most}");
        assert_eq!(book.source_offers(3).count(), 2_000);
        assert!(validate_offer(book.scope_offer("x", 5, 9)).is_ok());
        assert_ne!(
            book.scope_offer("x", 5, 1).interest_rate,
            book.scope_offer("x", 5, 2).interest_rate
        );
    }
}
