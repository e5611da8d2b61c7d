//! SQL text shared by the SQL backends (SQLite, PostgreSQL).
//!
//! Both backends store offers in the same columns and select them with the
//! same filters, keyset conditions and ordering; only the placeholder style
//! (`?` or `$n`) and the driver's value type differ. Builders here produce
//! text plus [`SqlValue`] parameters, which each backend converts to its
//! driver's type, so the rules of the domain's `OfferFilter::matches` and
//! `compare_keys` are translated to SQL exactly once.

use offer_domain::query::SortValue;
use offer_domain::{OfferFilter, SortField, SortOrder, Timestamp};

/// The offer columns, in the order the backends read them; a macro so hot
/// statements can be `concat!`-ed at compile time.
#[macro_export]
macro_rules! offer_cols {
    () => {
        "id, offer_type, collateral_token, borrow_token, available_borrow_amount, \
         max_open_ltv, liquidation_ltv, interest_rate, interest_model, term_days, \
         liquidity_source, lender_address, last_borrowed_timestamp, created_timestamp, \
         updated_timestamp, source"
    };
}

pub const OFFER_COLS: &str = offer_cols!();

/// How many columns [`OFFER_COLS`] names.
pub const OFFER_COL_COUNT: usize = 16;

/// A bound value of a generated statement.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue {
    Real(f64),
    Integer(i64),
    Text(String),
}

/// How parameters are written in the statement text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placeholders {
    /// `?` (SQLite): parameters bind in order.
    #[default]
    Question,
    /// `$1`, `$2`, ... (PostgreSQL).
    Numbered,
}

/// A WHERE clause under construction: SQL text and the values it binds.
/// Only fixed fragments and column names from the domain's enums go into
/// the text; every value is a parameter.
#[derive(Clone, Debug, Default)]
pub struct Where {
    style: Placeholders,
    clauses: Vec<String>,
    pub params: Vec<SqlValue>,
}

impl Where {
    pub fn new(style: Placeholders) -> Self {
        Where {
            style,
            ..Default::default()
        }
    }

    /// The placeholder for the next parameter to be bound.
    pub fn next_placeholder(&self) -> String {
        match self.style {
            Placeholders::Question => "?".to_owned(),
            Placeholders::Numbered => format!("${}", self.params.len() + 1),
        }
    }

    /// Appends a value bound after the clause's own (LIMIT, OFFSET, ...)
    /// and returns its placeholder.
    pub fn bind(&mut self, value: SqlValue) -> String {
        let p = self.next_placeholder();
        self.params.push(value);
        p
    }

    /// Adds `clause`, whose `?` marks are the `values` in order.
    fn push(&mut self, clause: &str, values: impl IntoIterator<Item = SqlValue>) {
        let text = match self.style {
            Placeholders::Question => {
                self.params.extend(values);
                clause.to_owned()
            }
            Placeholders::Numbered => {
                let mut out = String::with_capacity(clause.len() + 8);
                let mut values = values.into_iter();
                for ch in clause.chars() {
                    if ch == '?' {
                        out.push_str(&self.next_placeholder());
                        if let Some(v) = values.next() {
                            self.params.push(v);
                        }
                    } else {
                        out.push(ch);
                    }
                }
                out
            }
        };
        self.clauses.push(text);
    }

    /// ` WHERE a AND b`, or nothing.
    pub fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// The conditions of [`OfferFilter::matches`].
    pub fn filter(&mut self, f: &OfferFilter) {
        let text = |s: &String| SqlValue::Text(s.clone());
        if let Some(t) = f.offer_type {
            self.push("offer_type = ?", [SqlValue::Text(t.as_str().into())]);
        }
        if let Some(v) = &f.collateral_token {
            self.push("collateral_token = ?", [text(v)]);
        }
        if let Some(v) = &f.borrow_token {
            self.push("borrow_token = ?", [text(v)]);
        }
        if let Some(m) = f.interest_model {
            self.push("interest_model = ?", [SqlValue::Text(m.as_str().into())]);
        }
        if let Some(v) = &f.liquidity_source {
            self.push("liquidity_source = ?", [text(v)]);
        }
        if let Some(v) = &f.lender_address {
            self.push("lender_address = ?", [text(v)]);
        }
        if let Some(v) = &f.source {
            self.push("source = ?", [text(v)]);
        }
        let real = |clause, v: Option<f64>, w: &mut Where| {
            if let Some(v) = v {
                w.push(clause, [SqlValue::Real(v)]);
            }
        };
        real("available_borrow_amount >= ?", f.min_borrow_amount, self);
        real("available_borrow_amount <= ?", f.max_borrow_amount, self);
        real("interest_rate >= ?", f.min_interest_rate, self);
        real("interest_rate <= ?", f.max_interest_rate, self);
        real("max_open_ltv >= ?", f.min_max_open_ltv, self);
        real("max_open_ltv <= ?", f.max_max_open_ltv, self);
        let time = |clause, v: Option<Timestamp>, w: &mut Where| {
            if let Some(v) = v {
                w.push(clause, [SqlValue::Integer(v.as_nanos())]);
            }
        };
        time("created_timestamp >= ?", f.created_after, self);
        time("created_timestamp <= ?", f.created_before, self);
        time("updated_timestamp >= ?", f.updated_after, self);
        time("updated_timestamp <= ?", f.updated_before, self);
    }

    /// Hides offers expired at `now` (`MarginOffer::is_expired`).
    pub fn not_expired(&mut self, now: Timestamp) {
        self.push(
            "(expires_at IS NULL OR expires_at >= ?)",
            [SqlValue::Integer(now.as_nanos())],
        );
    }

    pub fn active_only(&mut self) {
        self.push("available_borrow_amount > 0", []);
    }

    /// Rows strictly after `(key, id)` in the listing order.
    pub fn after(&mut self, by: SortField, order: SortOrder, key: &SortValue, id: &str) {
        let value = match (field_kind(by), key) {
            (Kind::Number, SortValue::Number(v)) => SqlValue::Real(*v),
            (Kind::Time, SortValue::Time(v)) => SqlValue::Integer(*v),
            (Kind::Text, SortValue::Text(v)) => SqlValue::Text(v.clone()),
            (kind, key) => {
                // A key of another kind (only a hand-made token can carry
                // one) compares by kind rank in the domain's order: either
                // every row is after it or none is.
                let row_after = match order {
                    SortOrder::Asc => kind.rank() > kind_of(key).rank(),
                    SortOrder::Desc => kind.rank() < kind_of(key).rank(),
                };
                if !row_after {
                    // Valid in both dialects (PostgreSQL wants a boolean).
                    self.push("1 = 0", []);
                }
                return;
            }
        };
        let (op, op_or_equal) = match order {
            SortOrder::Asc => (">", ">="),
            SortOrder::Desc => ("<", "<="),
        };
        // The column name comes from the domain's fixed set, never from input.
        let col = by.as_str();
        // Equivalent to `col > ? OR (col = ? AND id > ?)` (sort columns are
        // NOT NULL), but the leading range lets both planners seek an index
        // on `col` to the page start in either direction instead of
        // filtering every earlier row; the OR only drops the ties before it.
        let clause = format!("{col} {op_or_equal} ? AND ({col} {op} ? OR id > ?)");
        self.push(
            &clause,
            [value.clone(), value, SqlValue::Text(id.to_owned())],
        );
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Time,
    Text,
}

impl Kind {
    /// The order of kinds in `SortValue`'s comparison.
    fn rank(self) -> u8 {
        match self {
            Kind::Number => 0,
            Kind::Time => 1,
            Kind::Text => 2,
        }
    }
}

fn kind_of(v: &SortValue) -> Kind {
    match v {
        SortValue::Number(_) => Kind::Number,
        SortValue::Time(_) => Kind::Time,
        SortValue::Text(_) => Kind::Text,
    }
}

fn field_kind(by: SortField) -> Kind {
    match by {
        SortField::CreatedTimestamp | SortField::UpdatedTimestamp => Kind::Time,
        SortField::InterestRate
        | SortField::AvailableBorrowAmount
        | SortField::MaxOpenLtv
        | SortField::LiquidationLtv => Kind::Number,
        SortField::OfferType
        | SortField::CollateralToken
        | SortField::BorrowToken
        | SortField::Id => Kind::Text,
    }
}

/// `ORDER BY` for a listing: the sort column, then id ascending.
pub fn order_by(by: SortField, order: SortOrder) -> String {
    let dir = match order {
        SortOrder::Asc => "ASC",
        SortOrder::Desc => "DESC",
    };
    // as_str() is the column name, from a closed set.
    format!(" ORDER BY {} {dir}, id ASC", by.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_placeholders_count_across_clauses() {
        let mut w = Where::new(Placeholders::Numbered);
        let f = OfferFilter {
            borrow_token: Some("USDC".into()),
            min_interest_rate: Some(0.1),
            ..Default::default()
        };
        w.filter(&f);
        w.after(
            SortField::InterestRate,
            SortOrder::Desc,
            &SortValue::Number(0.2),
            "x",
        );
        let limit = w.bind(SqlValue::Integer(10));
        assert_eq!(
            w.sql(),
            " WHERE borrow_token = $1 AND interest_rate >= $2 AND \
             interest_rate <= $3 AND (interest_rate < $4 OR id > $5)"
        );
        assert_eq!(limit, "$6");
        assert_eq!(w.params.len(), 6);
    }

    #[test]
    fn question_placeholders_stay_anonymous() {
        let mut w = Where::new(Placeholders::Question);
        w.not_expired(Timestamp(5));
        w.active_only();
        assert_eq!(
            w.sql(),
            " WHERE (expires_at IS NULL OR expires_at >= ?) AND available_borrow_amount > 0"
        );
        assert_eq!(w.params, vec![SqlValue::Integer(5)]);
    }
}
