//! The change log's compact form of an offer: one BLOB per change.
//!
//! Nothing filters change rows in SQL by offer fields (subscriptions filter
//! in Rust after `changes_since`), so the offer need not be spread over
//! columns: one value binds, stores and reads far cheaper than sixteen.
//!
//! Layout (version 1): a version byte, then the fields in declaration order.
//! Strings are a LEB128 length and UTF-8 bytes; floats 8 bytes little
//! endian (by bits, so every value round-trips); an `Option` is a 0/1 byte
//! then the value; `term_days` 4 bytes and timestamps 8 bytes little endian.
//! Offer type and interest model are their wire strings.

use offer_domain::{InterestModel, MarginOffer, OfferType, Timestamp};

const VERSION: u8 = 1;

/// Appends the encoding of `o` to `out`.
pub(crate) fn encode_offer(o: &MarginOffer, out: &mut Vec<u8>) {
    out.push(VERSION);
    put_str(out, &o.id);
    put_str(out, o.offer_type.as_str());
    put_str(out, &o.collateral_token);
    put_str(out, &o.borrow_token);
    put_f64(out, o.available_borrow_amount);
    put_f64(out, o.max_open_ltv);
    put_f64(out, o.liquidation_ltv);
    put_f64(out, o.interest_rate);
    put_str(out, o.interest_model.as_str());
    put_opt(out, o.term_days, |out, d| {
        out.extend_from_slice(&d.to_le_bytes());
    });
    put_str(out, &o.liquidity_source);
    put_opt(out, o.lender_address.as_deref(), put_str);
    for t in [
        o.last_borrowed_timestamp,
        o.created_timestamp,
        o.updated_timestamp,
    ] {
        put_opt(out, t, |out, t| out.extend_from_slice(&t.0.to_le_bytes()));
    }
    put_opt(out, o.source.as_deref(), put_str);
}

/// Decodes what [`encode_offer`] wrote; a malformed value is an error
/// naming what was wrong, never a panic.
pub(crate) fn decode_offer(bytes: &[u8]) -> Result<MarginOffer, String> {
    let mut r = Reader { bytes };
    let version = r.u8()?;
    if version != VERSION {
        return Err(format!("unknown offer encoding version {version}"));
    }
    let id = r.string()?;
    let offer_type = r.str()?;
    let offer_type = offer_type
        .parse::<OfferType>()
        .map_err(|()| format!("offer_type {offer_type:?} is not valid"))?;
    let collateral_token = r.string()?;
    let borrow_token = r.string()?;
    let available_borrow_amount = r.f64()?;
    let max_open_ltv = r.f64()?;
    let liquidation_ltv = r.f64()?;
    let interest_rate = r.f64()?;
    let interest_model = r.str()?;
    let interest_model = interest_model
        .parse::<InterestModel>()
        .map_err(|()| format!("interest_model {interest_model:?} is not valid"))?;
    let term_days = r.opt(|r| Ok(i32::from_le_bytes(r.array()?)))?;
    let liquidity_source = r.string()?;
    let lender_address = r.opt(Reader::string)?;
    let mut timestamp = || r.opt(|r| Ok(Timestamp(i64::from_le_bytes(r.array()?))));
    let last_borrowed_timestamp = timestamp()?;
    let created_timestamp = timestamp()?;
    let updated_timestamp = timestamp()?;
    let source = r.opt(Reader::string)?;
    if !r.bytes.is_empty() {
        return Err(format!("{} trailing bytes", r.bytes.len()));
    }
    Ok(MarginOffer {
        id,
        offer_type,
        collateral_token,
        borrow_token,
        available_borrow_amount,
        max_open_ltv,
        liquidation_ltv,
        interest_rate,
        interest_model,
        term_days,
        liquidity_source,
        lender_address,
        last_borrowed_timestamp,
        created_timestamp,
        updated_timestamp,
        source,
    })
}

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        // Truncation intended: the low seven bits, continuation bit set.
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_f64(out: &mut Vec<u8>, x: f64) {
    out.extend_from_slice(&x.to_bits().to_le_bytes());
}

fn put_opt<T>(out: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put(out, v);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!(
                "truncated: {n} bytes wanted, {} left",
                self.bytes.len()
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn f64(&mut self) -> Result<f64, String> {
        Ok(f64::from_bits(u64::from_le_bytes(self.array()?)))
    }

    fn len(&mut self) -> Result<usize, String> {
        let mut n: usize = 0;
        for shift in (0..usize::BITS).step_by(7) {
            let b = self.u8()?;
            n |= usize::from(b & 0x7f)
                .checked_shl(shift)
                .ok_or("length overflows")?;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("length overflows".into())
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|e| format!("string is not UTF-8: {e}"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.str().map(str::to_owned)
    }

    fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            tag => Err(format!("option tag {tag} is not 0 or 1")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn full() -> MarginOffer {
        let mut o = MarginOffer::example("ünïcode-id-".repeat(20));
        o.term_days = Some(-3);
        o.lender_address = Some("lender".into());
        o.last_borrowed_timestamp = Some(Timestamp(i64::MIN));
        o.created_timestamp = Some(Timestamp(7));
        o.updated_timestamp = Some(Timestamp(i64::MAX));
        o.source = Some(String::new());
        o.available_borrow_amount = -0.0;
        o.interest_rate = f64::MIN_POSITIVE;
        o
    }

    fn sparse() -> MarginOffer {
        let mut o = MarginOffer::example("x");
        o.term_days = None;
        o.lender_address = None;
        o.last_borrowed_timestamp = None;
        o.created_timestamp = None;
        o.updated_timestamp = None;
        o.source = None;
        o
    }

    #[test]
    fn offers_round_trip_bit_for_bit() {
        for o in [full(), sparse()] {
            let mut buf = Vec::new();
            encode_offer(&o, &mut buf);
            let back = decode_offer(&buf).unwrap();
            assert_eq!(back, o);
            assert_eq!(
                back.available_borrow_amount.to_bits(),
                o.available_borrow_amount.to_bits()
            );
        }
    }

    #[test]
    fn malformed_values_are_errors() {
        let mut buf = Vec::new();
        encode_offer(&full(), &mut buf);
        // Every proper prefix is truncated; nothing panics.
        for n in 0..buf.len() {
            assert!(decode_offer(&buf[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut trailing = buf.clone();
        trailing.push(0);
        assert!(decode_offer(&trailing).unwrap_err().contains("trailing"));
        let mut version = buf.clone();
        version[0] = 9;
        assert!(decode_offer(&version).unwrap_err().contains("version"));
        let endless_length = [
            VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        assert!(decode_offer(&endless_length).is_err());
    }

    fn offer_strategy() -> impl Strategy<Value = MarginOffer> {
        let text = || proptest::string::string_regex("[a-zA-Z0-9 é€]{0,40}").unwrap();
        let time = || proptest::option::of(any::<i64>().prop_map(Timestamp));
        (
            (
                text(),
                0..3usize,
                text(),
                text(),
                any::<f64>(),
                any::<f64>(),
            ),
            (any::<f64>(), any::<f64>(), any::<bool>()),
            (
                proptest::option::of(any::<i32>()),
                text(),
                proptest::option::of(text()),
            ),
            (time(), time(), time(), proptest::option::of(text())),
        )
            .prop_map(|(a, b, c, d)| MarginOffer {
                id: a.0,
                offer_type: OfferType::ALL[a.1],
                collateral_token: a.2,
                borrow_token: a.3,
                available_borrow_amount: a.4,
                max_open_ltv: a.5,
                liquidation_ltv: b.0,
                interest_rate: b.1,
                interest_model: if b.2 {
                    InterestModel::Fixed
                } else {
                    InterestModel::Floating
                },
                term_days: c.0,
                liquidity_source: c.1,
                lender_address: c.2,
                last_borrowed_timestamp: d.0,
                created_timestamp: d.1,
                updated_timestamp: d.2,
                source: d.3,
            })
    }

    /// Floats compared by bits, so NaN payloads and -0.0 count too.
    fn same(a: &MarginOffer, b: &MarginOffer) -> bool {
        let bits = |o: &MarginOffer| {
            [
                o.available_borrow_amount,
                o.max_open_ltv,
                o.liquidation_ltv,
                o.interest_rate,
            ]
            .map(f64::to_bits)
        };
        let without_floats = |o: &MarginOffer| MarginOffer {
            available_borrow_amount: 0.0,
            max_open_ltv: 0.0,
            liquidation_ltv: 0.0,
            interest_rate: 0.0,
            ..o.clone()
        };
        bits(a) == bits(b) && without_floats(a) == without_floats(b)
    }

    proptest! {
        #[test]
        fn any_offer_round_trips(o in offer_strategy()) {
            let mut buf = Vec::new();
            encode_offer(&o, &mut buf);
            let back = decode_offer(&buf).unwrap();
            prop_assert!(same(&back, &o), "{back:?} != {o:?}");
        }

        /// Arbitrary bytes, and encodings with one byte changed, decode to
        /// an offer or an error; never a panic.
        #[test]
        fn any_bytes_decode_or_fail(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            o in offer_strategy(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let _ = decode_offer(&bytes);
            let mut buf = Vec::new();
            encode_offer(&o, &mut buf);
            let i = at.index(buf.len());
            buf[i] = byte;
            let _ = decode_offer(&buf);
        }
    }
}
