//! Lossless conversions between the generated `marginoffer.v1` messages and
//! the domain, and between `StoreError` and `tonic::Status`.
//!
//! Direction conventions:
//! - `*_from_pb` parse wire input. They never panic; a bad value becomes a
//!   [`FieldError`] naming the wire field (`offer_type`, `filter.offer_type`, ...).
//! - `*_to_pb` cannot fail: every domain value has a wire form.
//!
//! Presence is kept wherever the wire has it (`optional` fields and message
//! fields), so domain -> proto -> domain is the identity.

use crate::pb;
use offer_domain::{
    BulkError, BulkOutcome, Change, ChangeType, ErrorCode, FieldError, InterestModel, ListPage,
    ListQuery, MarginOffer, OfferFilter, OfferPatch, OfferType, OverwriteFilter, OverwriteOutcome,
    OverwriteRequest, SortField, SortOrder, Stats, StatsQuery, StoreError, Timestamp,
};
use std::collections::HashMap;
use tonic::{Code, Status};

// ---------------------------------------------------------------- numbers

/// Counts travel as `int32` on the wire; saturate rather than wrap.
pub fn count_to_pb(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A negative count from a peer is nonsense; treat it as zero rather than fail.
pub fn count_from_pb(n: i32) -> usize {
    usize::try_from(n).unwrap_or(0)
}

// ---------------------------------------------------------------- timestamps

pub fn timestamp_to_pb(t: Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = t.to_parts();
    prost_types::Timestamp { seconds, nanos }
}

pub fn timestamp_from_pb(t: &prost_types::Timestamp, field: &str) -> Result<Timestamp, FieldError> {
    Timestamp::from_parts(t.seconds, t.nanos).ok_or_else(|| {
        FieldError::new(
            field,
            format!(
                "timestamp out of range (seconds={}, nanos={}); supported years are 1677..2262",
                t.seconds, t.nanos
            ),
        )
    })
}

fn opt_ts_from_pb(
    t: Option<&prost_types::Timestamp>,
    field: &str,
) -> Result<Option<Timestamp>, FieldError> {
    t.map(|t| timestamp_from_pb(t, field)).transpose()
}

fn opt_ts_to_pb(t: Option<Timestamp>) -> Option<prost_types::Timestamp> {
    t.map(timestamp_to_pb)
}

// ---------------------------------------------------------------- offers

pub fn offer_to_pb(o: MarginOffer) -> pb::MarginOffer {
    pb::MarginOffer {
        id: o.id,
        offer_type: o.offer_type.as_str().to_owned(),
        collateral_token: o.collateral_token,
        borrow_token: o.borrow_token,
        available_borrow_amount: o.available_borrow_amount,
        max_open_ltv: o.max_open_ltv,
        liquidation_ltv: o.liquidation_ltv,
        interest_rate: o.interest_rate,
        interest_model: o.interest_model.as_str().to_owned(),
        term_days: o.term_days,
        liquidity_source: o.liquidity_source,
        lender_address: o.lender_address,
        last_borrowed_timestamp: opt_ts_to_pb(o.last_borrowed_timestamp),
        created_timestamp: opt_ts_to_pb(o.created_timestamp),
        updated_timestamp: opt_ts_to_pb(o.updated_timestamp),
        source: o.source,
    }
}

/// A complete offer. Numbers are passed through untouched: range checks are
/// the store's validation, so every path reports them alike.
pub fn offer_from_pb(p: pb::MarginOffer) -> Result<MarginOffer, FieldError> {
    offer_from_pb_or_back(p).map_err(|(_, e)| e)
}

/// The items of a bulk write (`BulkCreateOrUpdate`, `BulkOverwrite`), every
/// string moved out of the wire message: no per-item allocation. When an
/// item does not convert, returns the item errors as the store would report
/// them and converts nothing: with `validate_all` every failing item in
/// order, including validation failures of the items that did convert; else
/// the first.
pub fn bulk_offers_from_pb(
    items: Vec<pb::MarginOffer>,
    validate_all: bool,
) -> Result<Vec<MarginOffer>, Vec<BulkError>> {
    let mut offers = BulkOffers::new(validate_all);
    offers.push(items);
    offers.finish()
}

/// [`bulk_offers_from_pb`] over items arriving in several messages (the
/// chunks of `OverwriteMarginOffersStream`): each message is converted as it
/// arrives and its wire form dropped, so a large request is never held twice.
/// Indexes count across messages; [`BulkOffers::finish`] gives what
/// `bulk_offers_from_pb` gives for all the items in one message.
#[derive(Debug)]
pub struct BulkOffers {
    validate_all: bool,
    /// How many items were pushed: the index of the next one.
    next_index: usize,
    state: BulkState,
}

#[derive(Debug)]
enum BulkState {
    Converting(Vec<MarginOffer>),
    /// An item did not parse: from here on only errors are kept. `complete`
    /// once no later item can add one (the first error, without `validate_all`).
    Failed {
        errors: Vec<BulkError>,
        complete: bool,
    },
}

impl BulkOffers {
    pub fn new(validate_all: bool) -> Self {
        BulkOffers {
            validate_all,
            next_index: 0,
            state: BulkState::Converting(Vec::new()),
        }
    }

    /// Converts the next items, consuming their wire form.
    pub fn push(&mut self, items: Vec<pb::MarginOffer>) {
        let first_index = self.next_index;
        self.next_index += items.len();
        let mut items = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| (first_index + i, item));
        if let BulkState::Converting(offers) = &mut self.state {
            offers.reserve(items.len());
            match convert_until_failure(offers, &mut items, self.validate_all) {
                None => return,
                Some(failed) => self.state = failed,
            }
        }
        if let BulkState::Failed { errors, complete } = &mut self.state
            && !*complete
        {
            let rest = items.map(|(i, item)| match offer_from_pb_or_back(item) {
                Ok(o) => {
                    let failure = check_offer(&o).err();
                    (i, o.id, failure)
                }
                Err((id, e)) => (i, id, Some(e)),
            });
            *complete = collect_errors(errors, rest, self.validate_all);
        }
    }

    /// The converted offers, or the item errors of the whole request.
    pub fn finish(self) -> Result<Vec<MarginOffer>, Vec<BulkError>> {
        match self.state {
            BulkState::Converting(offers) => Ok(offers),
            BulkState::Failed { errors, .. } => Err(errors),
        }
    }
}

/// Converts `items` into `offers` until one does not parse; then the errors
/// so far (the converted offers are validated only now, the slow path where
/// ids are copied into errors) as the failed state.
fn convert_until_failure(
    offers: &mut Vec<MarginOffer>,
    items: &mut impl Iterator<Item = (usize, pb::MarginOffer)>,
    validate_all: bool,
) -> Option<BulkState> {
    for (index, item) in items {
        match offer_from_pb_or_back(item) {
            Ok(offer) => offers.push(offer),
            Err((id, err)) => {
                let mut errors = Vec::new();
                let converted = offers.iter().enumerate().map(|(i, o)| {
                    let failure = check_offer(o).err();
                    (i, o.id.as_str().to_owned(), failure)
                });
                let failing = std::iter::once((index, id, Some(err)));
                let complete = collect_errors(&mut errors, converted.chain(failing), validate_all);
                return Some(BulkState::Failed { errors, complete });
            }
        }
    }
    None
}

/// Appends the failures of `items`; true once the first is in and
/// `validate_all` is off, i.e. no later item can add one.
fn collect_errors(
    errors: &mut Vec<BulkError>,
    items: impl Iterator<Item = (usize, String, Option<FieldError>)>,
    validate_all: bool,
) -> bool {
    for (index, id, failure) in items {
        if let Some(e) = failure {
            errors.push(BulkError::invalid(index, &id, &e));
            if !validate_all {
                return true;
            }
        }
    }
    false
}

/// Whether the store would accept the offer, without moving it.
fn check_offer(o: &MarginOffer) -> Result<(), FieldError> {
    offer_domain::validate::validate_offer(o.clone()).map(drop)
}

/// [`offer_from_pb`] that gives the id back on failure, so it can name the
/// failing item without a copy of every id up front.
fn offer_from_pb_or_back(p: pb::MarginOffer) -> Result<MarginOffer, (String, FieldError)> {
    let parsed = (|| {
        Ok((
            OfferType::parse_field(&p.offer_type, "offer_type")?,
            InterestModel::parse_field(&p.interest_model, "interest_model")?,
            opt_ts_from_pb(
                p.last_borrowed_timestamp.as_ref(),
                "last_borrowed_timestamp",
            )?,
            opt_ts_from_pb(p.created_timestamp.as_ref(), "created_timestamp")?,
            opt_ts_from_pb(p.updated_timestamp.as_ref(), "updated_timestamp")?,
        ))
    })();
    let (offer_type, interest_model, last_borrowed, created, updated) = match parsed {
        Ok(v) => v,
        Err(e) => return Err((p.id, e)),
    };
    Ok(MarginOffer {
        offer_type,
        interest_model,
        last_borrowed_timestamp: last_borrowed,
        created_timestamp: created,
        updated_timestamp: updated,
        id: p.id,
        collateral_token: p.collateral_token,
        borrow_token: p.borrow_token,
        available_borrow_amount: p.available_borrow_amount,
        max_open_ltv: p.max_open_ltv,
        liquidation_ltv: p.liquidation_ltv,
        interest_rate: p.interest_rate,
        term_days: p.term_days,
        liquidity_source: p.liquidity_source,
        lender_address: p.lender_address,
        source: p.source,
    })
}

/// A required message field (`offer` of the single-offer requests).
pub fn required_offer_from_pb(p: Option<pb::MarginOffer>) -> Result<MarginOffer, FieldError> {
    offer_from_pb(p.ok_or_else(|| FieldError::new("offer", "is required"))?)
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn non_zero(v: f64) -> Option<f64> {
    // Bitwise: -0.0 is not the proto3 default and so counts as present.
    (v.to_bits() != 0).then_some(v)
}

/// A `BulkUpdate` item as a patch: proto3 defaults of the non-optional
/// fields (empty string, 0) mean "absent"; `optional` fields keep presence.
pub fn patch_from_pb(p: pb::MarginOffer) -> Result<OfferPatch, FieldError> {
    Ok(OfferPatch {
        offer_type: non_empty(p.offer_type)
            .map(|s| OfferType::parse_field(&s, "offer_type"))
            .transpose()?,
        interest_model: non_empty(p.interest_model)
            .map(|s| InterestModel::parse_field(&s, "interest_model"))
            .transpose()?,
        last_borrowed_timestamp: opt_ts_from_pb(
            p.last_borrowed_timestamp.as_ref(),
            "last_borrowed_timestamp",
        )?,
        created_timestamp: opt_ts_from_pb(p.created_timestamp.as_ref(), "created_timestamp")?,
        id: p.id,
        collateral_token: non_empty(p.collateral_token),
        borrow_token: non_empty(p.borrow_token),
        available_borrow_amount: non_zero(p.available_borrow_amount),
        max_open_ltv: non_zero(p.max_open_ltv),
        liquidation_ltv: non_zero(p.liquidation_ltv),
        interest_rate: non_zero(p.interest_rate),
        term_days: p.term_days,
        liquidity_source: non_empty(p.liquidity_source),
        lender_address: p.lender_address,
        source: p.source,
    })
}

/// The wire form of a patch. Absent non-optional fields become proto3
/// defaults; note that a present `Some(0.0)` or `Some("")` is therefore
/// indistinguishable from absent on the wire (a limit of the protocol).
pub fn patch_to_pb(p: OfferPatch) -> pb::MarginOffer {
    pb::MarginOffer {
        id: p.id,
        offer_type: p
            .offer_type
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        collateral_token: p.collateral_token.unwrap_or_default(),
        borrow_token: p.borrow_token.unwrap_or_default(),
        available_borrow_amount: p.available_borrow_amount.unwrap_or(0.0),
        max_open_ltv: p.max_open_ltv.unwrap_or(0.0),
        liquidation_ltv: p.liquidation_ltv.unwrap_or(0.0),
        interest_rate: p.interest_rate.unwrap_or(0.0),
        interest_model: p
            .interest_model
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default(),
        term_days: p.term_days,
        liquidity_source: p.liquidity_source.unwrap_or_default(),
        lender_address: p.lender_address,
        last_borrowed_timestamp: opt_ts_to_pb(p.last_borrowed_timestamp),
        created_timestamp: opt_ts_to_pb(p.created_timestamp),
        updated_timestamp: None,
        source: p.source,
    }
}

// ---------------------------------------------------------------- filters

pub fn overwrite_filter_to_pb(f: &OverwriteFilter) -> pb::OverwriteFilter {
    pb::OverwriteFilter {
        offer_type: f.offer_type.map(|t| t.as_str().to_owned()),
        collateral_token: f.collateral_token.clone(),
        borrow_token: f.borrow_token.clone(),
        lender_address: f.lender_address.clone(),
        liquidity_source: f.liquidity_source.clone(),
        source: f.source.clone(),
        created_after: opt_ts_to_pb(f.created_after),
        created_before: opt_ts_to_pb(f.created_before),
        updated_after: opt_ts_to_pb(f.updated_after),
        updated_before: opt_ts_to_pb(f.updated_before),
    }
}

/// Field errors are prefixed `filter.` because the filter is always nested.
pub fn overwrite_filter_from_pb(f: pb::OverwriteFilter) -> Result<OverwriteFilter, FieldError> {
    Ok(OverwriteFilter {
        offer_type: f
            .offer_type
            .as_deref()
            .map(|s| OfferType::parse_field(s, "filter.offer_type"))
            .transpose()?,
        created_after: opt_ts_from_pb(f.created_after.as_ref(), "filter.created_after")?,
        created_before: opt_ts_from_pb(f.created_before.as_ref(), "filter.created_before")?,
        updated_after: opt_ts_from_pb(f.updated_after.as_ref(), "filter.updated_after")?,
        updated_before: opt_ts_from_pb(f.updated_before.as_ref(), "filter.updated_before")?,
        collateral_token: f.collateral_token,
        borrow_token: f.borrow_token,
        lender_address: f.lender_address,
        liquidity_source: f.liquidity_source,
        source: f.source,
    })
}

pub fn opt_overwrite_filter_from_pb(
    f: Option<pb::OverwriteFilter>,
) -> Result<Option<OverwriteFilter>, FieldError> {
    f.map(overwrite_filter_from_pb).transpose()
}

// ---------------------------------------------------------------- listing

/// An `optional string` enum selector: absent or empty means "not given"
/// (some proto3 clients send "" for unset strings).
fn opt_enum<T>(
    s: Option<String>,
    parse: impl FnOnce(&str) -> Result<T, FieldError>,
) -> Result<Option<T>, FieldError> {
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(v) => parse(v).map(Some),
    }
}

pub fn list_query_from_pb(r: pb::ListMarginOffersRequest) -> Result<ListQuery, FieldError> {
    let filter = OfferFilter {
        offer_type: opt_enum(r.offer_type, |s| OfferType::parse_field(s, "offer_type"))?,
        interest_model: opt_enum(r.interest_model, |s| {
            InterestModel::parse_field(s, "interest_model")
        })?,
        collateral_token: r.collateral_token,
        borrow_token: r.borrow_token,
        liquidity_source: r.liquidity_source,
        lender_address: r.lender_address,
        source: r.source,
        min_borrow_amount: r.min_borrow_amount,
        max_borrow_amount: r.max_borrow_amount,
        min_interest_rate: r.min_interest_rate,
        max_interest_rate: r.max_interest_rate,
        min_max_open_ltv: r.min_max_open_ltv,
        max_max_open_ltv: r.max_max_open_ltv,
        created_after: opt_ts_from_pb(r.created_after.as_ref(), "created_after")?,
        created_before: opt_ts_from_pb(r.created_before.as_ref(), "created_before")?,
        updated_after: opt_ts_from_pb(r.updated_after.as_ref(), "updated_after")?,
        updated_before: opt_ts_from_pb(r.updated_before.as_ref(), "updated_before")?,
    };
    Ok(ListQuery {
        filter,
        sort_by: opt_enum(r.sort_by, SortField::parse)?.unwrap_or_default(),
        sort_order: opt_enum(r.sort_order, SortOrder::parse)?.unwrap_or_default(),
        limit: r.limit,
        offset: r.offset,
        include_expired: r.include_expired,
        active_only: r.active_only,
        page_token: r.page_token,
    })
}

pub fn list_query_to_pb(q: &ListQuery) -> pb::ListMarginOffersRequest {
    let f = &q.filter;
    pb::ListMarginOffersRequest {
        limit: q.limit,
        offset: q.offset,
        sort_by: Some(q.sort_by.as_str().to_owned()),
        sort_order: Some(q.sort_order.as_str().to_owned()),
        offer_type: f.offer_type.map(|t| t.as_str().to_owned()),
        collateral_token: f.collateral_token.clone(),
        borrow_token: f.borrow_token.clone(),
        interest_model: f.interest_model.map(|m| m.as_str().to_owned()),
        liquidity_source: f.liquidity_source.clone(),
        lender_address: f.lender_address.clone(),
        source: f.source.clone(),
        min_borrow_amount: f.min_borrow_amount,
        max_borrow_amount: f.max_borrow_amount,
        min_interest_rate: f.min_interest_rate,
        max_interest_rate: f.max_interest_rate,
        created_after: opt_ts_to_pb(f.created_after),
        created_before: opt_ts_to_pb(f.created_before),
        include_expired: q.include_expired,
        active_only: q.active_only,
        updated_after: opt_ts_to_pb(f.updated_after),
        updated_before: opt_ts_to_pb(f.updated_before),
        min_max_open_ltv: f.min_max_open_ltv,
        max_max_open_ltv: f.max_max_open_ltv,
        page_token: q.page_token.clone(),
    }
}

pub fn list_page_to_pb(p: ListPage) -> pb::ListMarginOffersResponse {
    pb::ListMarginOffersResponse {
        offers: p.offers.into_iter().map(offer_to_pb).collect(),
        total: p.total,
        limit: p.limit,
        offset: p.offset,
        has_more: p.has_more,
        next_offset: p.next_offset,
        revision: p.revision,
        next_page_token: p.next_page_token,
    }
}

pub fn list_page_from_pb(r: pb::ListMarginOffersResponse) -> Result<ListPage, FieldError> {
    Ok(ListPage {
        offers: offers_from_pb(r.offers, "offers")?,
        total: r.total,
        limit: r.limit,
        offset: r.offset,
        has_more: r.has_more,
        next_offset: r.next_offset,
        revision: r.revision,
        next_page_token: r.next_page_token,
    })
}

/// Offers of a response; the error names the item (`offers[3].offer_type`).
pub fn offers_from_pb(
    offers: Vec<pb::MarginOffer>,
    field: &str,
) -> Result<Vec<MarginOffer>, FieldError> {
    offers
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            offer_from_pb(o)
                .map_err(|e| FieldError::new(format!("{field}[{i}].{}", e.field), e.message))
        })
        .collect()
}

// ---------------------------------------------------------------- bulk outcomes

pub fn bulk_error_to_pb(e: BulkError) -> pb::BulkError {
    pb::BulkError {
        index: count_to_pb(e.index),
        id: e.id,
        error: e.message,
        code: e.code.as_str().to_owned(),
    }
}

/// Unknown codes from a newer peer degrade to `INTERNAL` rather than fail.
pub fn bulk_error_from_pb(e: pb::BulkError) -> BulkError {
    BulkError {
        index: count_from_pb(e.index),
        id: e.id,
        message: e.error,
        code: ErrorCode::parse(&e.code).unwrap_or(ErrorCode::Internal),
    }
}

pub fn bulk_outcome_to_pb(o: BulkOutcome) -> pb::BulkOperationResponse {
    pb::BulkOperationResponse {
        success_count: count_to_pb(o.success_count),
        failure_count: count_to_pb(o.failure_count),
        errors: o.errors.into_iter().map(bulk_error_to_pb).collect(),
        processed_ids: o.processed_ids,
        revision: o.revision,
    }
}

pub fn bulk_outcome_from_pb(r: pb::BulkOperationResponse) -> BulkOutcome {
    BulkOutcome {
        success_count: count_from_pb(r.success_count),
        failure_count: count_from_pb(r.failure_count),
        errors: r.errors.into_iter().map(bulk_error_from_pb).collect(),
        processed_ids: r.processed_ids,
        revision: r.revision,
    }
}

pub fn overwrite_outcome_to_pb(o: OverwriteOutcome) -> pb::BulkOverwriteResponse {
    pb::BulkOverwriteResponse {
        deleted_count: count_to_pb(o.deleted_ids.len()),
        created_count: count_to_pb(o.created_ids.len()),
        updated_count: count_to_pb(o.updated_ids.len()),
        unchanged_count: count_to_pb(o.unchanged_count),
        deleted_ids: o.deleted_ids,
        created_ids: o.created_ids,
        updated_ids: o.updated_ids,
        errors: o.errors.into_iter().map(bulk_error_to_pb).collect(),
        revision: o.revision,
    }
}

/// The counts are derived from the id lists on the way out, so the id lists
/// are authoritative on the way back.
pub fn overwrite_outcome_from_pb(r: pb::BulkOverwriteResponse) -> OverwriteOutcome {
    OverwriteOutcome {
        created_ids: r.created_ids,
        updated_ids: r.updated_ids,
        deleted_ids: r.deleted_ids,
        unchanged_count: count_from_pb(r.unchanged_count),
        errors: r.errors.into_iter().map(bulk_error_from_pb).collect(),
        revision: r.revision,
    }
}

pub fn overwrite_request_to_pb(r: OverwriteRequest) -> pb::BulkOverwriteMarginOffersRequest {
    pb::BulkOverwriteMarginOffersRequest {
        offers: r.offers.into_iter().map(offer_to_pb).collect(),
        filter: r.filter.as_ref().map(overwrite_filter_to_pb),
        validate_all: r.validate_all,
        dry_run: r.dry_run,
    }
}

// ---------------------------------------------------------------- stats

pub fn stats_query_to_pb(q: &StatsQuery) -> pb::GetMarginOfferStatsRequest {
    pb::GetMarginOfferStatsRequest {
        filter: q.filter.as_ref().map(overwrite_filter_to_pb),
        include_expired: q.include_expired,
    }
}

pub fn stats_query_from_pb(r: pb::GetMarginOfferStatsRequest) -> Result<StatsQuery, FieldError> {
    Ok(StatsQuery {
        filter: opt_overwrite_filter_from_pb(r.filter)?,
        include_expired: r.include_expired,
    })
}

pub fn stats_to_pb(s: Stats) -> pb::GetMarginOfferStatsResponse {
    pb::GetMarginOfferStatsResponse {
        total: s.total,
        by_offer_type: s.by_offer_type.into_iter().collect(),
        liquidity_by_borrow_token: s.liquidity_by_borrow_token.into_iter().collect(),
        revision: s.revision,
    }
}

pub fn stats_from_pb(r: pb::GetMarginOfferStatsResponse) -> Stats {
    Stats {
        total: r.total,
        by_offer_type: r.by_offer_type.into_iter().collect(),
        liquidity_by_borrow_token: r.liquidity_by_borrow_token.into_iter().collect(),
        revision: r.revision,
    }
}

// ---------------------------------------------------------------- changes

pub fn change_type_to_pb(t: ChangeType) -> pb::margin_offer_change::ChangeType {
    use pb::margin_offer_change::ChangeType as P;
    match t {
        ChangeType::Created => P::Created,
        ChangeType::Updated => P::Updated,
        ChangeType::Deleted => P::Deleted,
        ChangeType::Overwritten => P::Overwritten,
    }
}

pub fn change_to_pb(c: Change) -> pb::MarginOfferChange {
    pb::MarginOfferChange {
        change_type: change_type_to_pb(c.change_type) as i32,
        offer: Some(offer_to_pb(c.offer)),
        timestamp: Some(timestamp_to_pb(c.timestamp)),
        source: c.origin,
        operation_id: c.operation_id,
        metadata: HashMap::new(),
        revision: c.revision,
    }
}

/// A change record from the stream. `UNKNOWN` (the subscription marker) and
/// unknown values are refused: they carry no change.
pub fn change_from_pb(c: pb::MarginOfferChange) -> Result<Change, FieldError> {
    let change_type = ChangeType::from_wire_value(c.change_type).ok_or_else(|| {
        FieldError::new(
            "change_type",
            format!("not a change record (value {})", c.change_type),
        )
    })?;
    Ok(Change {
        revision: c.revision,
        change_type,
        offer: offer_from_pb(
            c.offer
                .ok_or_else(|| FieldError::new("offer", "is required"))?,
        )?,
        timestamp: match c.timestamp {
            Some(t) => timestamp_from_pb(&t, "timestamp")?,
            None => Timestamp(0),
        },
        origin: c.source,
        operation_id: c.operation_id,
    })
}

// ---------------------------------------------------------------- errors

/// The wire code name of a status (as used in metrics labels and BulkError.code).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

const NOT_FOUND_PREFIX: &str = "margin offer not found: ";
const ALREADY_EXISTS_PREFIX: &str = "margin offer already exists: ";

/// The status of the contract's code table. `INVALID_ARGUMENT` messages
/// start with `field: ` so any client can tell which field was refused.
pub fn status_from_error(e: &StoreError) -> Status {
    match e {
        StoreError::InvalidArgument(f) => Status::invalid_argument(f.to_string()),
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        StoreError::OutOfRange { .. } => Status::out_of_range(e.to_string()),
        StoreError::ResourceExhausted(m) => Status::resource_exhausted(m.clone()),
        StoreError::Unauthenticated(m) => Status::unauthenticated(m.clone()),
        StoreError::Unavailable(m) => Status::unavailable(m.clone()),
        StoreError::DeadlineExceeded(m) => Status::deadline_exceeded(m.clone()),
        StoreError::Internal(m) => Status::internal(m.clone()),
    }
}

pub fn status_from_field_error(e: &FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A field name as the server writes them: `offer_type`, `filter.source`,
/// `offers[3].id`.
fn looks_like_field(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'))
}

fn parse_field_error(message: &str) -> FieldError {
    match message.split_once(": ") {
        Some((field, rest)) if looks_like_field(field) => FieldError::new(field, rest),
        // A server that does not follow the `field: ...` convention.
        _ => FieldError::new("request", message),
    }
}

/// `revision R is older than ...; oldest retained revision is O`.
fn parse_out_of_range(message: &str) -> (i64, i64) {
    let requested = message
        .strip_prefix("revision ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let oldest = message
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (requested, oldest)
}

/// The inverse of [`status_from_error`]; codes outside the contract's table
/// map to the nearest variant.
pub fn error_from_status(s: &Status) -> StoreError {
    let m = s.message();
    match s.code() {
        Code::InvalidArgument => StoreError::InvalidArgument(parse_field_error(m)),
        Code::NotFound => StoreError::NotFound {
            id: m.strip_prefix(NOT_FOUND_PREFIX).unwrap_or(m).to_owned(),
        },
        Code::AlreadyExists => StoreError::AlreadyExists {
            id: m
                .strip_prefix(ALREADY_EXISTS_PREFIX)
                .unwrap_or(m)
                .to_owned(),
        },
        Code::OutOfRange => {
            let (requested, oldest) = parse_out_of_range(m);
            StoreError::OutOfRange { requested, oldest }
        }
        Code::ResourceExhausted => StoreError::ResourceExhausted(m.to_owned()),
        Code::Unauthenticated | Code::PermissionDenied => StoreError::Unauthenticated(m.to_owned()),
        // Connection-level failures surface as these; all are worth a retry.
        Code::Unavailable | Code::Cancelled | Code::Aborted => {
            StoreError::Unavailable(m.to_owned())
        }
        Code::DeadlineExceeded => StoreError::DeadlineExceeded(m.to_owned()),
        code => StoreError::Internal(if m.is_empty() {
            code_name(code).to_owned()
        } else {
            m.to_owned()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn ts() -> impl Strategy<Value = Timestamp> {
        any::<i64>().prop_map(Timestamp)
    }

    fn text() -> impl Strategy<Value = String> {
        ".{0,12}"
    }

    prop_compose! {
        fn domain_offer()(
            id in text(),
            offer_type in prop::sample::select(OfferType::ALL.to_vec()),
            collateral_token in text(),
            borrow_token in text(),
            nums in any::<[f64; 4]>(),
            interest_model in prop::sample::select(vec![InterestModel::Fixed, InterestModel::Floating]),
            term_days in any::<Option<i32>>(),
            liquidity_source in text(),
            lender_address in prop::option::of(text()),
            tss in (prop::option::of(ts()), prop::option::of(ts()), prop::option::of(ts())),
            source in prop::option::of(text()),
        ) -> MarginOffer {
            MarginOffer {
                id, offer_type, collateral_token, borrow_token,
                available_borrow_amount: nums[0], max_open_ltv: nums[1],
                liquidation_ltv: nums[2], interest_rate: nums[3],
                interest_model, term_days, liquidity_source, lender_address,
                last_borrowed_timestamp: tss.0, created_timestamp: tss.1,
                updated_timestamp: tss.2, source,
            }
        }
    }

    /// Equality that treats NaN payloads bitwise (MarginOffer's PartialEq is f64 `==`).
    fn same(a: &MarginOffer, b: &MarginOffer) -> bool {
        a.same_content(b)
            && a.created_timestamp == b.created_timestamp
            && a.updated_timestamp == b.updated_timestamp
    }

    fn overwrite_filter() -> impl Strategy<Value = OverwriteFilter> {
        (
            prop::option::of(prop::sample::select(OfferType::ALL.to_vec())),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::array::uniform4(prop::option::of(ts())),
        )
            .prop_map(|(t, c, b, l, ls, s, ts)| OverwriteFilter {
                offer_type: t,
                collateral_token: c,
                borrow_token: b,
                lender_address: l,
                liquidity_source: ls,
                source: s,
                created_after: ts[0],
                created_before: ts[1],
                updated_after: ts[2],
                updated_before: ts[3],
            })
    }

    fn list_query() -> impl Strategy<Value = ListQuery> {
        (
            overwrite_filter(),
            prop::option::of(prop::sample::select(vec![
                InterestModel::Fixed,
                InterestModel::Floating,
            ])),
            prop::array::uniform6(prop::option::of(-1e9f64..1e9)),
            prop::sample::select(SortField::ALL.to_vec()),
            any::<bool>(),
            (any::<i32>(), any::<i32>(), any::<bool>(), any::<bool>()),
            prop::option::of(text()),
        )
            .prop_map(
                |(f, im, r, sort_by, asc, (limit, offset, ie, ao), page_token)| {
                    let mut filter = f.as_offer_filter();
                    filter.interest_model = im;
                    filter.min_borrow_amount = r[0];
                    filter.max_borrow_amount = r[1];
                    filter.min_interest_rate = r[2];
                    filter.max_interest_rate = r[3];
                    filter.min_max_open_ltv = r[4];
                    filter.max_max_open_ltv = r[5];
                    ListQuery {
                        filter,
                        sort_by,
                        sort_order: if asc { SortOrder::Asc } else { SortOrder::Desc },
                        limit,
                        offset,
                        include_expired: ie,
                        active_only: ao,
                        page_token,
                    }
                },
            )
    }

    fn pb_ts() -> impl Strategy<Value = prost_types::Timestamp> {
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos })
    }

    prop_compose! {
        fn pb_offer()(
            strs in prop::array::uniform6(prop_oneof![
                Just("V1".to_owned()), Just("fixed".to_owned()), Just(String::new()), ".{0,8}"
            ]),
            nums in any::<[f64; 4]>(),
            term_days in any::<Option<i32>>(),
            opts in (prop::option::of(text()), prop::option::of(text())),
            tss in prop::array::uniform3(prop::option::of(pb_ts())),
        ) -> pb::MarginOffer {
            pb::MarginOffer {
                id: strs[0].clone(), offer_type: strs[1].clone(),
                collateral_token: strs[2].clone(), borrow_token: strs[3].clone(),
                available_borrow_amount: nums[0], max_open_ltv: nums[1],
                liquidation_ltv: nums[2], interest_rate: nums[3],
                interest_model: strs[4].clone(), term_days,
                liquidity_source: strs[5].clone(), lender_address: opts.0,
                last_borrowed_timestamp: tss[0], created_timestamp: tss[1],
                updated_timestamp: tss[2], source: opts.1,
            }
        }
    }

    proptest! {
        #[test]
        fn offer_round_trips_through_proto_and_bytes(o in domain_offer()) {
            let p = offer_to_pb(o.clone());
            let back = offer_from_pb(p.clone()).expect("valid");
            prop_assert!(same(&o, &back), "{o:?} != {back:?}");
            // On the wire proto3 elides a default double, and prost counts
            // -0.0 as the default: expect it back as 0.0 (stores canonicalise
            // -0.0 to 0.0 anyway).
            let decoded = pb::MarginOffer::decode(p.encode_to_vec().as_slice()).expect("decode");
            let back = offer_from_pb(decoded).expect("valid");
            let mut expected = o;
            for v in [
                &mut expected.available_borrow_amount,
                &mut expected.max_open_ltv,
                &mut expected.liquidation_ltv,
                &mut expected.interest_rate,
            ] {
                if *v == 0.0 {
                    *v = 0.0;
                }
            }
            prop_assert!(same(&expected, &back), "{expected:?} != {back:?}");
        }

        #[test]
        fn patch_of_an_offer_survives_the_wire(o in domain_offer()) {
            // Present non-default values survive; the wire cannot carry a present default.
            let patch = OfferPatch::from(o);
            let back = patch_from_pb(patch_to_pb(patch.clone())).expect("valid");
            prop_assert_eq!(back.offer_type, patch.offer_type);
            prop_assert_eq!(back.term_days, patch.term_days);
            prop_assert_eq!(back.lender_address, patch.lender_address);
            prop_assert_eq!(back.source, patch.source);
            prop_assert_eq!(back.created_timestamp, patch.created_timestamp);
            prop_assert_eq!(back.collateral_token, patch.collateral_token.filter(|s| !s.is_empty()));
        }

        #[test]
        fn overwrite_filter_round_trips(f in overwrite_filter()) {
            prop_assert_eq!(overwrite_filter_from_pb(overwrite_filter_to_pb(&f)), Ok(f));
        }

        #[test]
        fn list_query_round_trips(q in list_query()) {
            prop_assert_eq!(list_query_from_pb(list_query_to_pb(&q)), Ok(q));
        }

        #[test]
        fn arbitrary_proto_offers_never_panic(p in pb_offer()) {
            let _ = offer_from_pb(p.clone());
            let _ = patch_from_pb(p.clone());
            let _ = change_from_pb(pb::MarginOfferChange { offer: Some(p), change_type: 1, ..Default::default() });
        }

        #[test]
        fn arbitrary_list_requests_never_panic(
            strs in prop::array::uniform4(prop::option::of(".{0,10}")),
            tss in prop::array::uniform4(prop::option::of(pb_ts())),
            limit in any::<i32>(),
        ) {
            let r = pb::ListMarginOffersRequest {
                sort_by: strs[0].clone(), sort_order: strs[1].clone(),
                offer_type: strs[2].clone(), interest_model: strs[3].clone(),
                created_after: tss[0], created_before: tss[1],
                updated_after: tss[2], updated_before: tss[3],
                limit, ..Default::default()
            };
            let _ = list_query_from_pb(r);
        }

        #[test]
        fn arbitrary_bytes_never_panic_decoding(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(p) = pb::MarginOffer::decode(bytes.as_slice()) {
                let _ = offer_from_pb(p);
            }
            if let Ok(r) = pb::ListMarginOffersRequest::decode(bytes.as_slice()) {
                let _ = list_query_from_pb(r);
            }
            if let Ok(f) = pb::OverwriteFilter::decode(bytes.as_slice()) {
                let _ = overwrite_filter_from_pb(f);
            }
        }

        #[test]
        fn arbitrary_statuses_never_panic(code in 0i32..20, msg in ".{0,40}") {
            let _ = error_from_status(&Status::new(Code::from_i32(code), msg));
        }

        #[test]
        fn bulk_outcome_round_trips(
            ids in prop::collection::vec(text(), 0..5),
            errs in prop::collection::vec((0usize..100_000, text(), text()), 0..5),
            rev in any::<i64>(),
        ) {
            let o = BulkOutcome {
                success_count: ids.len(),
                failure_count: errs.len(),
                errors: errs.iter().map(|(i, id, m)| BulkError {
                    index: *i, id: id.clone(), message: m.clone(), code: ErrorCode::NotFound,
                }).collect(),
                processed_ids: ids.clone(),
                revision: rev,
            };
            prop_assert_eq!(bulk_outcome_from_pb(bulk_outcome_to_pb(o.clone())), o);
            let w = OverwriteOutcome {
                created_ids: ids.clone(), updated_ids: ids.clone(), deleted_ids: ids,
                unchanged_count: 7, errors: vec![], revision: rev,
            };
            prop_assert_eq!(overwrite_outcome_from_pb(overwrite_outcome_to_pb(w.clone())), w);
        }
    }

    #[test]
    fn enum_errors_name_their_fields() {
        let mut p = offer_to_pb(MarginOffer::example("a"));
        p.offer_type = "XX".into();
        assert_eq!(
            offer_from_pb(p.clone()).map_err(|e| e.field),
            Err("offer_type".into())
        );
        p.offer_type = "LV".into();
        p.interest_model = "weird".into();
        assert_eq!(
            offer_from_pb(p.clone()).map_err(|e| e.field),
            Err("interest_model".into())
        );
        p.interest_model = "fixed".into();
        p.created_timestamp = Some(prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        });
        assert_eq!(
            offer_from_pb(p).map_err(|e| e.field),
            Err("created_timestamp".into())
        );
        let f = pb::OverwriteFilter {
            offer_type: Some("nope".into()),
            ..Default::default()
        };
        assert_eq!(
            overwrite_filter_from_pb(f).map_err(|e| e.field),
            Err("filter.offer_type".into())
        );
        for (req, field) in [
            (
                pb::ListMarginOffersRequest {
                    sort_by: Some("bogus".into()),
                    ..Default::default()
                },
                "sort_by",
            ),
            (
                pb::ListMarginOffersRequest {
                    sort_order: Some("up".into()),
                    ..Default::default()
                },
                "sort_order",
            ),
            (
                pb::ListMarginOffersRequest {
                    interest_model: Some("x".into()),
                    ..Default::default()
                },
                "interest_model",
            ),
        ] {
            assert_eq!(
                list_query_from_pb(req).map_err(|e| e.field),
                Err(field.to_owned())
            );
        }
    }

    #[test]
    fn absent_sort_means_defaults() {
        let q = list_query_from_pb(pb::ListMarginOffersRequest::default()).expect("valid");
        assert_eq!(q, ListQuery::default());
    }

    #[test]
    fn partial_patch_treats_defaults_as_absent() {
        let p = pb::MarginOffer {
            id: "x".into(),
            interest_rate: 0.1,
            ..Default::default()
        };
        let patch = patch_from_pb(p).expect("valid");
        assert_eq!(
            patch,
            OfferPatch {
                id: "x".into(),
                interest_rate: Some(0.1),
                ..Default::default()
            }
        );
    }

    #[test]
    fn every_error_survives_the_status_round_trip() {
        for e in [
            StoreError::invalid("offer_type", "must be V1, BP or LV, got \"x\""),
            StoreError::invalid("filter.source", "bad: really"),
            StoreError::NotFound { id: "a: b".into() },
            StoreError::AlreadyExists { id: "x".into() },
            StoreError::OutOfRange {
                requested: 3,
                oldest: 17,
            },
            StoreError::ResourceExhausted("too many".into()),
            StoreError::Unauthenticated("no token".into()),
            StoreError::Unavailable("db down".into()),
            StoreError::DeadlineExceeded("slow".into()),
            StoreError::Internal("boom".into()),
        ] {
            assert_eq!(error_from_status(&status_from_error(&e)), e);
        }
        assert_eq!(
            error_from_status(&Status::invalid_argument("no field here")),
            StoreError::invalid("request", "no field here")
        );
    }

    #[test]
    fn change_round_trips() {
        let c = Change {
            revision: 9,
            change_type: ChangeType::Overwritten,
            offer: MarginOffer::example("a"),
            timestamp: Timestamp(123),
            origin: "backfiller".into(),
            operation_id: "op".into(),
        };
        assert_eq!(change_from_pb(change_to_pb(c.clone())), Ok(c));
    }

    #[test]
    fn bulk_items_convert_without_copies_and_fail_as_the_store_reports() {
        let good = |id: &str| offer_to_pb(MarginOffer::example(id));
        let mut invalid = good("b");
        invalid.max_open_ltv = 2.0;
        let mut unparsable = good("c");
        unparsable.offer_type = "XX".into();
        let items = vec![good("a"), invalid, unparsable, good("d")];

        let errors = |validate_all| match bulk_offers_from_pb(items.clone(), validate_all) {
            Err(errors) => errors
                .into_iter()
                .map(|e| (e.index, e.id, e.code))
                .collect::<Vec<_>>(),
            Ok(_) => Vec::new(),
        };
        assert_eq!(
            errors(true),
            vec![
                (1, "b".to_owned(), ErrorCode::InvalidArgument),
                (2, "c".to_owned(), ErrorCode::InvalidArgument)
            ]
        );
        assert_eq!(
            errors(false),
            vec![(1, "b".to_owned(), ErrorCode::InvalidArgument)]
        );
        let first_unparsable = vec![items[2].clone(), items[0].clone()];
        assert!(matches!(
            bulk_offers_from_pb(first_unparsable, false).err().as_deref(),
            Some([e]) if e.index == 0 && e.id == "c" && e.message.contains("offer_type")
        ));

        let all_good = vec![good("a"), good("d")];
        let expected: Vec<MarginOffer> = all_good
            .iter()
            .cloned()
            .map(offer_from_pb)
            .collect::<Result<_, _>>()
            .expect("valid");
        assert_eq!(bulk_offers_from_pb(all_good, false).ok(), Some(expected));
    }

    #[test]
    fn bulk_items_pushed_in_pieces_convert_and_fail_as_in_one_message() {
        let good = |id: &str| offer_to_pb(MarginOffer::example(id));
        let mut invalid = good("b");
        invalid.max_open_ltv = 2.0;
        let mut unparsable = good("c");
        unparsable.offer_type = "XX".into();
        let mut unparsable_too = good("e");
        unparsable_too.interest_model = "?".into();
        let sets = [
            vec![good("a"), invalid, unparsable, good("d"), unparsable_too],
            vec![good("a"), good("d"), good("f")],
        ];
        for items in sets {
            for validate_all in [false, true] {
                let whole = bulk_offers_from_pb(items.clone(), validate_all);
                // Every split into two pieces, and one message per item.
                for cut in 0..=items.len() {
                    let mut pieces = BulkOffers::new(validate_all);
                    pieces.push(items[..cut].to_vec());
                    pieces.push(items[cut..].to_vec());
                    assert_eq!(pieces.finish(), whole, "cut at {cut}");
                }
                let mut singles = BulkOffers::new(validate_all);
                for item in &items {
                    singles.push(vec![item.clone()]);
                }
                assert_eq!(singles.finish(), whole);
            }
        }
    }
}
