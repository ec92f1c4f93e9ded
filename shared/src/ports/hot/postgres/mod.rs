//! The hot-source port on PostgreSQL (tokio-postgres).
//!
//! - [`connection`]: the DSN (environment variable locally; AWS Secrets Manager or an SSM
//!   SecureString on Lambda; a DSN or RDS's JSON), TLS as libpq's `sslmode` defines it, and
//!   connections reused across calls of one process.
//! - [`catalog`]: the table's columns, checked and mapped to Arrow, and its partition tree.
//! - [`stream`]: the export of a range, one REPEATABLE READ snapshot streamed with a binary
//!   `COPY`, each row hashed into its digest and delete batch.
//! - [`deletes`]: the bounded deletes and partition drops, checked by content before commit.
//!
//! Every name reaches SQL through [`sql::quote_ident`]; every value is a bound parameter.

mod catalog;
mod connection;
mod copy_binary;
mod decode;
mod deletes;
pub mod sql;
mod stream;

use std::sync::Mutex;

use async_trait::async_trait;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::model::batch::BatchSink;
use crate::model::hot::batches::DeleteBatch;
use crate::model::hot::cold::ExportedRows;
use crate::model::hot::config::HotDatasetConfig;
use crate::model::hot::digest::RowDigest;
use crate::model::hot::range::KeyRange;
use crate::ports::hot::columns::HotColumn;
use crate::ports::hot::{BatchDelete, CommitGate, HotSource, PartitionPair, XactStatus};

pub use catalog::{find_exact_partition, PartitionNode};
pub use connection::{parse_dsn, ParsedDsn, Verify};

/// Names a PEM bundle of CA certificates (as libpq's `sslrootcert` does).
pub const CA_FILE_ENV: &str = "COMPACTOR_PG_CA_FILE";

/// Where the DSN comes from.
#[derive(Clone, Debug)]
pub enum DsnSource {
    /// The environment variable each hot dataset names (`dsn_env`).
    Env,
    /// A fixed DSN (tests and tools that already hold one).
    Fixed(String),
    /// An AWS Secrets Manager secret (ARN or name).
    SecretsManager {
        client: aws_sdk_secretsmanager::Client,
        secret_id: String,
    },
    /// An SSM parameter, usually a SecureString.
    Ssm {
        client: aws_sdk_ssm::Client,
        name: String,
    },
}

#[derive(Debug)]
pub struct PostgresSource {
    dsn: DsnSource,
    /// The secret's value, fetched once per process (again after an authentication failure).
    secret: tokio::sync::Mutex<Option<String>>,
    /// Idle connections by DSN source key.
    idle: Mutex<Vec<(String, Client)>>,
    /// A PEM bundle of CA certificates (the DSN's `sslrootcert` wins).
    ca_file: Option<String>,
}

fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" (hint: {hint})"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Wrong password or user: what a rotated secret looks like from a warm function.
fn is_auth_failure(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == tokio_postgres::error::SqlState::INVALID_PASSWORD
            || *c == tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    })
}

fn pg_err(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let context = context.into();
    move |e| Error::Postgres {
        context,
        message: describe_pg_error(&e),
    }
}

fn as_sql(params: &[i64]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl PostgresSource {
    pub fn new(dsn: DsnSource) -> Self {
        Self {
            dsn,
            secret: tokio::sync::Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            ca_file: None,
        }
    }

    /// The CA bundle certificates are checked against (unless the DSN names its own).
    pub fn with_ca_file(mut self, path: Option<String>) -> Self {
        self.ca_file = path;
        self
    }

    /// `COMPACTOR_PG_SECRET_ARN` (Secrets Manager) or `COMPACTOR_PG_DSN_PARAMETER` (SSM) when
    /// set, else each dataset's `dsn_env` variable; `COMPACTOR_PG_CA_FILE` names a CA bundle.
    pub fn from_env(sdk: Option<&aws_config::SdkConfig>) -> Self {
        let env = |name| crate::support::env::env_var(name);
        let dsn = match (
            sdk,
            env("COMPACTOR_PG_SECRET_ARN"),
            env("COMPACTOR_PG_DSN_PARAMETER"),
        ) {
            (Some(sdk), Some(secret_id), _) => DsnSource::SecretsManager {
                client: aws_sdk_secretsmanager::Client::new(sdk),
                secret_id,
            },
            (Some(sdk), None, Some(name)) => DsnSource::Ssm {
                client: aws_sdk_ssm::Client::new(sdk),
                name,
            },
            _ => DsnSource::Env,
        };
        Self::new(dsn).with_ca_file(env(CA_FILE_ENV))
    }

    /// One integer from a query of the table (`max`, `min`), the chain bound when set.
    async fn table_value(&self, hot: &HotDatasetConfig, query: String) -> Result<Option<i64>> {
        let table = hot.table_name()?;
        self.with_client(hot, async |client| {
            let params: Vec<i64> = hot.chain_id.into_iter().collect();
            let row = client
                .query_one(&query, &as_sql(&params))
                .await
                .map_err(pg_err(format!("reading {}", table.sql())))?;
            Ok(row.get(0))
        })
        .await
    }
}

#[async_trait]
impl HotSource for PostgresSource {
    fn describe(&self) -> String {
        match &self.dsn {
            DsnSource::Env => "postgres (DSN from the environment)".into(),
            DsnSource::Fixed(_) => "postgres".into(),
            DsnSource::SecretsManager { secret_id, .. } => format!("postgres (secret {secret_id})"),
            DsnSource::Ssm { name, .. } => format!("postgres (SSM parameter {name})"),
        }
    }

    async fn columns(&self, hot: &HotDatasetConfig) -> Result<Vec<HotColumn>> {
        let table = hot.table_name()?;
        self.with_client(hot, async |client| {
            let catalog = catalog::catalog_columns(client, &table).await?;
            catalog::select_columns(hot, &table, catalog)
        })
        .await
    }

    async fn tip(&self, hot: &HotDatasetConfig) -> Result<Option<i64>> {
        let Some(query) = &hot.tip_query else {
            return self.max_value(hot).await;
        };
        self.with_client(hot, async |client| {
            let context = format!("tip_query of hot dataset {:?}", hot.name);
            let txn = client
                .build_transaction()
                .read_only(true)
                .start()
                .await
                .map_err(pg_err(context.clone()))?;
            let text = sql::tip_query(query);
            let untyped = txn.prepare(&text).await.map_err(pg_err(context.clone()))?;
            let chain: Vec<i64> = match (untyped.params().len(), hot.chain_id) {
                (0, _) => vec![],
                (1, Some(chain)) => vec![chain],
                (n, _) => {
                    return Err(Error::config(
                        format!("hot_dataset {:?}: tip_query", hot.name),
                        format!("takes {n} parameters; it may use only $1 (the chain_id, which must then be set)"),
                    ))
                }
            };
            // `$1` is declared int8, so it compares with a chain column of any integer type.
            let statement = txn
                .prepare_typed(&text, &vec![Type::INT8; chain.len()])
                .await
                .map_err(pg_err(context.clone()))?;
            let rows = txn
                .query(&statement, &as_sql(&chain))
                .await
                .map_err(pg_err(context.clone()))?;
            txn.rollback().await.map_err(pg_err(context.clone()))?;
            match rows.as_slice() {
                [row] => Ok(row.get(0)),
                [] => Ok(None),
                _ => Err(Error::Postgres {
                    context,
                    message: format!("returned {} rows; it must return one", rows.len()),
                }),
            }
        })
        .await
    }

    async fn max_value(&self, hot: &HotDatasetConfig) -> Result<Option<i64>> {
        let table = hot.table_name()?;
        self.table_value(hot, sql::max_query(hot, &table)).await
    }

    async fn ranges_with_rows(
        &self,
        hot: &HotDatasetConfig,
        from: i64,
        to: i64,
    ) -> Result<Vec<i64>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let table = hot.table_name()?;
        let indexed = self
            .with_client(hot, async |client| {
                let oid = catalog::table_oid(client, &table).await?;
                let chain = hot.chain_id.map(|_| hot.chain_column.clone());
                let row = client
                    .query_one(sql::RANGE_INDEX_QUERY, &[&oid, &hot.range_column, &chain])
                    .await
                    .map_err(pg_err(format!("reading the indexes of {}", table.sql())))?;
                Ok(row.get::<_, bool>(0))
            })
            .await?;
        if !indexed {
            // Without such an index one scan that counts beats a scan per range.
            return Ok(self
                .range_counts(hot, from, to)
                .await?
                .into_iter()
                .map(|(start, _)| start)
                .collect());
        }
        self.with_client(hot, async |client| {
            let mut params = vec![hot.range_size as i64, from, to];
            params.extend(hot.chain_id);
            let rows = client
                .query(&sql::ranges_with_rows_query(hot, &table), &as_sql(&params))
                .await
                .map_err(pg_err(format!(
                    "finding the ranges of {} with rows",
                    table.sql()
                )))?;
            Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
        })
        .await
    }

    async fn range_counts(
        &self,
        hot: &HotDatasetConfig,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, u64)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let table = hot.table_name()?;
        self.with_client(hot, async |client| {
            let mut params = vec![hot.range_size as i64, from, to];
            params.extend(hot.chain_id);
            let rows = client
                .query(&sql::range_counts_query(hot, &table), &as_sql(&params))
                .await
                .map_err(pg_err(format!(
                    "counting the rows of {} by range",
                    table.sql()
                )))?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1) as u64))
                .collect())
        })
        .await
    }

    async fn export(
        &self,
        hot: &HotDatasetConfig,
        range: KeyRange,
        columns: &[HotColumn],
        batch_bytes: u64,
        sink: &mut dyn BatchSink,
    ) -> Result<ExportedRows> {
        self.stream_range(hot, range, columns, batch_bytes, sink)
            .await
    }

    async fn delete_batch(
        &self,
        hot: &HotDatasetConfig,
        columns: &[String],
        batch: &DeleteBatch,
        gate: &dyn CommitGate,
    ) -> Result<BatchDelete> {
        self.delete_one_batch(hot, columns, batch, gate).await
    }

    async fn exact_partition(
        &self,
        hot: &HotDatasetConfig,
        range: KeyRange,
    ) -> Result<Option<PartitionPair>> {
        let table = hot.table_name()?;
        self.with_client(hot, async |client| {
            let nodes = catalog::partition_tree(client, &table).await?;
            Ok(find_exact_partition(&nodes, hot, range))
        })
        .await
    }

    async fn drop_partition(
        &self,
        hot: &HotDatasetConfig,
        columns: &[String],
        pair: &PartitionPair,
        expected: &RowDigest,
        gate: &dyn CommitGate,
    ) -> Result<BatchDelete> {
        self.drop_exact(hot, columns, pair, expected, gate).await
    }

    async fn xact_status(&self, hot: &HotDatasetConfig, xid: &str) -> Result<XactStatus> {
        self.with_client(hot, async |client| {
            let row = client
                .query_one(sql::XID_STATUS, &[&xid])
                .await
                .map_err(pg_err(format!(
                    "asking whether transaction {xid} committed"
                )))?;
            Ok(match row.get::<_, Option<String>>(0).as_deref() {
                Some("committed") => XactStatus::Committed,
                Some("aborted") => XactStatus::Aborted,
                Some("in progress") => XactStatus::InProgress,
                _ => XactStatus::Unknown,
            })
        })
        .await
    }
}
