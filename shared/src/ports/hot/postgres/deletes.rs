//! The bounded, content-checked deletes: one transaction per batch (or per partition drop) that
//! removes the rows, hashes every removed row's exported values as Postgres sends them, and
//! commits only if their digest is the cold copy's and the commit gate agrees.

use futures::{pin_mut, TryStreamExt};
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{IsolationLevel, Transaction};

use super::{describe_pg_error, pg_err, PostgresSource};
use crate::error::Result;
use crate::model::hot::batches::{BatchScope, DeleteBatch};
use crate::model::hot::config::HotDatasetConfig;
use crate::model::hot::digest::{push_field, row_hash, RowDigest};
use crate::model::hot::range::KeyRange;
use crate::ports::hot::postgres::sql;
use crate::ports::hot::{BatchDelete, CommitGate, PartitionPair};

/// Makes a DELETE or DETACH wait at most `lock_timeout` for locks, then roll back (it is tried
/// again later).
fn lock_timeout(hot: &HotDatasetConfig) -> String {
    format!(
        "SET LOCAL lock_timeout = {}",
        hot.lock_timeout.0.as_millis().max(1)
    )
}

/// Any value, as the raw bytes of its binary form (the same bytes a binary COPY sends).
struct RawValue<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for RawValue<'a> {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(Some(raw)))
    }
    fn from_sql_null(
        _: &Type,
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A lock wait that timed out, a deadlock or a serialization failure: transient.
fn is_busy(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::LOCK_NOT_AVAILABLE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// The bound values of [`sql::range_filter`]: start, end, and the chain when there is one.
pub(super) fn range_params(hot: &HotDatasetConfig, range: KeyRange) -> Vec<i64> {
    let mut params = vec![range.start, range.end];
    params.extend(hot.chain_id);
    params
}

/// Runs `query` in `txn` and digests the rows it returns (each the exported columns).
async fn digest_rows(
    txn: &Transaction<'_>,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
    columns: usize,
) -> std::result::Result<RowDigest, tokio_postgres::Error> {
    let stream = txn.query_raw(query, params.iter().copied()).await?;
    pin_mut!(stream);
    let mut digest = RowDigest::default();
    let mut row_bytes = Vec::new();
    while let Some(row) = stream.try_next().await? {
        row_bytes.clear();
        for i in 0..columns {
            let value: RawValue = row.try_get(i)?;
            push_field(&mut row_bytes, value.0);
        }
        digest.add_hash(row_hash(&row_bytes));
    }
    Ok(digest)
}

/// Why a digest is not the expected one, in words.
fn difference(what: &str, found: &RowDigest, expected: &RowDigest) -> String {
    if found.rows != expected.rows {
        format!(
            "{what} held {} rows where the cold copy has {}; rolled back",
            found.rows, expected.rows
        )
    } else {
        format!(
            "{what} held {} rows, but their values differ from the cold copy's (an update or a \
             replaced row); rolled back",
            found.rows
        )
    }
}

enum Step<T> {
    Done(T),
    Busy(String),
}

/// Maps a failed statement to a retry-later outcome when it is transient.
fn step<T>(
    result: std::result::Result<T, tokio_postgres::Error>,
    context: &str,
) -> Result<Step<T>> {
    match result {
        Ok(v) => Ok(Step::Done(v)),
        Err(e) if is_busy(&e) => Ok(Step::Busy(format!("{context}: {}", describe_pg_error(&e)))),
        Err(e) => Err(pg_err(context.to_string())(e)),
    }
}

impl PostgresSource {
    pub(super) async fn delete_one_batch(
        &self,
        hot: &HotDatasetConfig,
        columns: &[String],
        batch: &DeleteBatch,
        gate: &dyn CommitGate,
    ) -> Result<BatchDelete> {
        let table = hot.table_name()?;
        let context = format!("deleting {} {}", table.sql(), batch.scope);
        self.with_client(hot, async |client| {
            // One snapshot for the count and the delete: the delete removes exactly the rows
            // counted (a concurrent change to them is a serialization failure: tried later).
            let txn = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .start()
                .await
                .map_err(pg_err(context.clone()))?;
            txn.batch_execute(&lock_timeout(hot))
                .await
                .map_err(pg_err(context.clone()))?;
            let range = batch.scope.range();
            let params = range_params(hot, range);
            let mut values: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            let (oids, ctids): (Vec<u32>, Vec<String>) = match &batch.scope {
                BatchScope::Located { rows, .. } => {
                    rows.iter().map(|l| (l.0, l.ctid_text())).unzip()
                }
                BatchScope::Range(_) => (Vec::new(), Vec::new()),
            };
            let query = match &batch.scope {
                BatchScope::Range(_) => {
                    // Never more than the batch: a sub-range holding more rows now is refused
                    // before anything is deleted.
                    let counted = match step(
                        txn.query_one(&sql::count_range(hot, &table), &values).await,
                        &context,
                    )? {
                        Step::Done(row) => row.get::<_, i64>(0) as u64,
                        Step::Busy(detail) => return Ok(BatchDelete::Busy { detail }),
                    };
                    if counted != batch.rows() {
                        txn.rollback().await.map_err(pg_err(context.clone()))?;
                        let found = RowDigest {
                            rows: counted,
                            sum: 0,
                        };
                        return Ok(BatchDelete::Mismatch {
                            detail: difference(&batch.scope.to_string(), &found, &batch.digest),
                            found,
                        });
                    }
                    sql::delete_range(hot, &table, columns)
                }
                BatchScope::Located { .. } => {
                    values.push(&oids);
                    values.push(&ctids);
                    sql::delete_located_rows(hot, &table, columns)
                }
            };
            let found = match step(
                digest_rows(&txn, &query, &values, columns.len()).await,
                &context,
            )? {
                Step::Done(found) => found,
                Step::Busy(detail) => return Ok(BatchDelete::Busy { detail }),
            };
            if found != batch.digest {
                txn.rollback().await.map_err(pg_err(context.clone()))?;
                return Ok(BatchDelete::Mismatch {
                    found,
                    detail: difference(&batch.scope.to_string(), &found, &batch.digest),
                });
            }
            finish(txn, gate, &context, found.rows).await
        })
        .await
    }

    pub(super) async fn drop_exact(
        &self,
        hot: &HotDatasetConfig,
        columns: &[String],
        pair: &PartitionPair,
        expected: &RowDigest,
        gate: &dyn CommitGate,
    ) -> Result<BatchDelete> {
        let (leaf, parent) = (&pair.partition, &pair.parent);
        let context = format!("dropping partition {} of {}", leaf.sql(), parent.sql());
        self.with_client(hot, async |client| {
            let txn = client
                .transaction()
                .await
                .map_err(pg_err(context.clone()))?;
            txn.batch_execute(&lock_timeout(hot))
                .await
                .map_err(pg_err(context.clone()))?;
            if let Step::Busy(detail) = step(
                txn.batch_execute(&sql::detach_partition(parent, leaf))
                    .await,
                &context,
            )? {
                return Ok(BatchDelete::Busy { detail });
            }
            // Detached, the table takes no more rows: what it holds now is what goes.
            let found = digest_rows(
                &txn,
                &sql::partition_rows(leaf, columns),
                &[],
                columns.len(),
            )
            .await
            .map_err(pg_err(context.clone()))?;
            if found != *expected {
                txn.rollback().await.map_err(pg_err(context.clone()))?;
                return Ok(BatchDelete::Mismatch {
                    found,
                    detail: format!(
                        "{}; left attached",
                        difference(&format!("partition {}", leaf.sql()), &found, expected)
                    ),
                });
            }
            txn.batch_execute(&sql::drop_table(leaf))
                .await
                .map_err(pg_err(context.clone()))?;
            finish(txn, gate, &context, found.rows).await
        })
        .await
    }
}

/// Records the transaction id through the gate, then commits (or rolls back when refused).
async fn finish(
    txn: Transaction<'_>,
    gate: &dyn CommitGate,
    context: &str,
    rows: u64,
) -> Result<BatchDelete> {
    let xid: String = txn
        .query_one(sql::CURRENT_XID, &[])
        .await
        .map_err(pg_err(context.to_string()))?
        .get(0);
    if !gate.may_commit(&xid).await? {
        txn.rollback().await.map_err(pg_err(context.to_string()))?;
        return Ok(BatchDelete::Fenced);
    }
    txn.commit().await.map_err(pg_err(context.to_string()))?;
    Ok(BatchDelete::Deleted(rows))
}
