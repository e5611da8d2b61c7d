//! The direct-SQL peer: the question "why not just query PostgreSQL?".
//!
//! The peer copies every offer the store holds into its own table
//! `loadgen_peer.offers` (binary COPY), builds the best index for each list
//! shape the benchmark runs, `VACUUM ANALYZE`s (so counts can be index-only),
//! and then answers each list page the way the API does, with prepared
//! statements over one tokio-postgres connection per client:
//!
//! - the page: `SELECT <all columns> … WHERE <filter> = $1 AND (expires_at IS
//!   NULL OR expires_at >= $now) [AND <sort> >= $key AND (<sort> > $key OR
//!   id > $id)] ORDER BY <sort> <dir>, id ASC LIMIT 101` (keyset on the last
//!   row's values, the redundant range lets the index seek to the cursor;
//!   `>=`/`>` become `<=`/`<` for descending sorts), the 101st row only
//!   telling whether there is more, like the store;
//! - the total: `SELECT count(*) … WHERE <filter> = $1 AND (expires_at IS NULL
//!   OR expires_at >= $now)`, pipelined with the page on the same connection
//!   (no transaction, so no snapshot shared between the two);
//! - every row is decoded into a `MarginOffer`, as a client of the API would.
//!
//! Index per shape: `(filter column, sort column <dir>, id) INCLUDE
//! (expires_at)`.

use crate::mixes::Shape;
use anyhow::Context as _;
use offer_domain::query::SortValue;
use offer_domain::{
    InterestModel, ListQuery, MarginOffer, OfferFilter, OfferType, SortField, SortOrder, Timestamp,
};
use offer_store::MarginOfferStore;
use std::pin::pin;
use store_client::GrpcStore;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row, Statement};

pub const SCHEMA: &str = "loadgen_peer";

const COLUMNS: &str = "id, offer_type, collateral_token, borrow_token, available_borrow_amount, \
     max_open_ltv, liquidation_ltv, interest_rate, interest_model, term_days, liquidity_source, \
     lender_address, last_borrowed_timestamp, created_timestamp, updated_timestamp, source";

/// One row more than the page, like the store, to know whether more follow.
pub const PAGE: i64 = 100;

pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| "connecting to the peer database")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("peer connection ended: {e}");
        }
    });
    Ok(client)
}

/// Recreates the peer table from every offer of `sources` in the store and
/// indexes it; returns the rows copied.
pub async fn copy_from_store(
    client: &Client,
    store: &GrpcStore,
    sources: &[String],
) -> anyhow::Result<u64> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {SCHEMA};
             DROP TABLE IF EXISTS {SCHEMA}.offers;
             CREATE TABLE {SCHEMA}.offers (
                id TEXT COLLATE \"C\" PRIMARY KEY,
                offer_type TEXT COLLATE \"C\" NOT NULL,
                collateral_token TEXT COLLATE \"C\" NOT NULL,
                borrow_token TEXT COLLATE \"C\" NOT NULL,
                available_borrow_amount DOUBLE PRECISION NOT NULL,
                max_open_ltv DOUBLE PRECISION NOT NULL,
                liquidation_ltv DOUBLE PRECISION NOT NULL,
                interest_rate DOUBLE PRECISION NOT NULL,
                interest_model TEXT COLLATE \"C\" NOT NULL,
                term_days INTEGER,
                liquidity_source TEXT COLLATE \"C\" NOT NULL,
                lender_address TEXT COLLATE \"C\",
                last_borrowed_timestamp BIGINT,
                created_timestamp BIGINT NOT NULL,
                updated_timestamp BIGINT NOT NULL,
                source TEXT COLLATE \"C\",
                expires_at BIGINT
             );"
        ))
        .await
        .context("creating the peer table")?;
    let sink = client
        .copy_in(&format!(
            "COPY {SCHEMA}.offers ({COLUMNS}, expires_at) FROM STDIN BINARY"
        ))
        .await
        .context("starting COPY into the peer table")?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::FLOAT8,
        Type::FLOAT8,
        Type::FLOAT8,
        Type::FLOAT8,
        Type::TEXT,
        Type::INT4,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::INT8,
    ];
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    let mut rows = 0u64;
    for source in sources {
        let mut query = ListQuery {
            filter: OfferFilter {
                source: Some(source.clone()),
                ..Default::default()
            },
            sort_by: SortField::Id,
            sort_order: SortOrder::Asc,
            limit: 1_000,
            include_expired: true,
            ..Default::default()
        };
        loop {
            let page = store
                .list(&query)
                .await
                .with_context(|| format!("reading source {source} from the store"))?;
            for o in &page.offers {
                let offer_type = o.offer_type.as_str();
                let model = o.interest_model.as_str();
                let last = o.last_borrowed_timestamp.map(Timestamp::as_nanos);
                let created = o.created_timestamp.map_or(0, Timestamp::as_nanos);
                let updated = o.updated_timestamp.map_or(0, Timestamp::as_nanos);
                let expires = o.expires_at().map(Timestamp::as_nanos);
                let values: [&(dyn ToSql + Sync); 17] = [
                    &o.id,
                    &offer_type,
                    &o.collateral_token,
                    &o.borrow_token,
                    &o.available_borrow_amount,
                    &o.max_open_ltv,
                    &o.liquidation_ltv,
                    &o.interest_rate,
                    &model,
                    &o.term_days,
                    &o.liquidity_source,
                    &o.lender_address,
                    &last,
                    &created,
                    &updated,
                    &o.source,
                    &expires,
                ];
                writer.as_mut().write(&values).await?;
                rows += 1;
            }
            match page.next_page_token {
                Some(t) if page.has_more => query.page_token = Some(t),
                _ => break,
            }
        }
    }
    writer.finish().await.context("finishing COPY")?;
    let mut ddl = String::new();
    for shape in Shape::ALL {
        ddl.push_str(&format!(
            "CREATE INDEX ON {SCHEMA}.offers ({}, {} {}, id) INCLUDE (expires_at);",
            shape.filter_column(),
            shape.sort().as_str(),
            sql_dir(shape.order()),
        ));
    }
    client
        .batch_execute(&ddl)
        .await
        .context("indexing the peer table")?;
    // Alone: VACUUM refuses to run in the implicit transaction of a batch.
    client
        .batch_execute(&format!("VACUUM (ANALYZE) {SCHEMA}.offers"))
        .await
        .context("vacuuming the peer table")?;
    Ok(rows)
}

fn sql_dir(order: SortOrder) -> &'static str {
    match order {
        SortOrder::Asc => "ASC",
        SortOrder::Desc => "DESC",
    }
}

/// One client's prepared statements: per shape the first page, the next
/// pages and the total.
pub struct PeerClient {
    client: Client,
    statements: Vec<[Statement; 3]>,
}

/// A page as the API returns it: the offers and the total.
pub struct PeerPage {
    pub offers: Vec<MarginOffer>,
    pub total: i64,
    pub has_more: bool,
}

impl PeerClient {
    pub async fn connect(url: &str) -> anyhow::Result<PeerClient> {
        let client = connect(url).await?;
        let mut statements = Vec::new();
        for shape in Shape::ALL {
            let filter = format!(
                "{} = $1 AND (expires_at IS NULL OR expires_at >= $2)",
                shape.filter_column()
            );
            let sort = shape.sort().as_str();
            let (ge, gt) = match shape.order() {
                SortOrder::Asc => (">=", ">"),
                SortOrder::Desc => ("<=", "<"),
            };
            let order = format!(
                " ORDER BY {sort} {}, id ASC LIMIT {}",
                sql_dir(shape.order()),
                PAGE + 1
            );
            let first = format!("SELECT {COLUMNS} FROM {SCHEMA}.offers WHERE {filter}{order}");
            let next = format!(
                "SELECT {COLUMNS} FROM {SCHEMA}.offers WHERE {filter} \
                 AND {sort} {ge} $3 AND ({sort} {gt} $3 OR id > $4){order}"
            );
            let count = format!("SELECT count(*) FROM {SCHEMA}.offers WHERE {filter}");
            statements.push([
                client.prepare(&first).await?,
                client.prepare(&next).await?,
                client.prepare(&count).await?,
            ]);
        }
        Ok(PeerClient { client, statements })
    }

    /// The page of `shape` with filter `value` after `after` (the last
    /// row of the previous page), and the total.
    pub async fn page(
        &self,
        shape: Shape,
        value: &str,
        after: Option<&MarginOffer>,
    ) -> anyhow::Result<PeerPage> {
        let [first, next, count] = &self.statements[shape as usize];
        let now = Timestamp::now().as_nanos();
        let key = after.map(|o| shape.sort().key(o));
        let (real, int);
        let key_param: Option<&(dyn ToSql + Sync)> = match &key {
            Some(SortValue::Number(v)) => {
                real = *v;
                Some(&real)
            }
            Some(SortValue::Time(v)) => {
                int = *v;
                Some(&int)
            }
            Some(SortValue::Text(_)) => anyhow::bail!("no text sort among the peer's shapes"),
            None => None,
        };
        let page = async {
            match (key_param, after) {
                (Some(k), Some(o)) => self.client.query(next, &[&value, &now, k, &o.id]).await,
                _ => self.client.query(first, &[&value, &now]).await,
            }
        };
        // Both requests go out before either answer is awaited: pipelined.
        let count_params: [&(dyn ToSql + Sync); 2] = [&value, &now];
        let total = self.client.query_one(count, &count_params);
        let (rows, total) = tokio::try_join!(page, total)?;
        let mut offers = rows
            .iter()
            .map(offer_of_row)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let has_more = offers.len() as i64 > PAGE;
        offers.truncate(PAGE as usize);
        Ok(PeerPage {
            offers,
            total: total.try_get(0)?,
            has_more,
        })
    }
}

fn offer_of_row(row: &Row) -> anyhow::Result<MarginOffer> {
    let text = |i: usize| -> anyhow::Result<String> { Ok(row.try_get::<_, String>(i)?) };
    let time = |i: usize| -> anyhow::Result<Option<Timestamp>> {
        Ok(row.try_get::<_, Option<i64>>(i)?.map(Timestamp::from_nanos))
    };
    let offer_type: OfferType = text(1)?
        .parse()
        .map_err(|()| anyhow::anyhow!("bad offer_type in the peer table"))?;
    let interest_model: InterestModel = text(8)?
        .parse()
        .map_err(|()| anyhow::anyhow!("bad interest_model in the peer table"))?;
    Ok(MarginOffer {
        id: text(0)?,
        offer_type,
        collateral_token: text(2)?,
        borrow_token: text(3)?,
        available_borrow_amount: row.try_get(4)?,
        max_open_ltv: row.try_get(5)?,
        liquidation_ltv: row.try_get(6)?,
        interest_rate: row.try_get(7)?,
        interest_model,
        term_days: row.try_get(9)?,
        liquidity_source: text(10)?,
        lender_address: row.try_get(11)?,
        last_borrowed_timestamp: time(12)?,
        created_timestamp: time(13)?,
        updated_timestamp: time(14)?,
        source: row.try_get(15)?,
    })
}
