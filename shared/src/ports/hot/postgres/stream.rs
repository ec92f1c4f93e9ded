//! The export of one range: a REPEATABLE READ, read-only transaction on a connection of its
//! own, `COPY (SELECT ...) TO STDOUT (FORMAT binary)` parsed as it streams into Arrow batches
//! bounded in rows and bytes; each row is hashed (its exported values exactly as sent) and cut
//! into delete batches as it passes.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use futures::{pin_mut, TryStreamExt};
use tokio_postgres::IsolationLevel;

use super::{describe_pg_error, pg_err, PostgresSource};
use crate::error::{Error, Result};
use crate::model::batch::BatchSink;
use crate::model::hot::batches::{BatchCutter, RowLocator};
use crate::model::hot::cold::ExportedRows;
use crate::model::hot::config::HotDatasetConfig;
use crate::model::hot::digest::{row_hash, RowDigest};
use crate::model::hot::range::KeyRange;
use crate::ports::hot::columns::HotColumn;
use crate::ports::hot::columns::PgType;
use crate::ports::hot::postgres::copy_binary::CopyParser;
use crate::ports::hot::postgres::decode::ColumnBuilder;
use crate::ports::hot::postgres::sql;

/// Rows per Arrow batch handed to the writer (fewer when rows are wide).
const BATCH_ROWS: usize = 8192;

/// Collects rows into Arrow batches and hands them on.
struct BatchAssembler {
    schema: SchemaRef,
    builders: Vec<ColumnBuilder>,
    rows: usize,
    bytes: u64,
    max_bytes: u64,
}

impl BatchAssembler {
    async fn flush(&mut self, sink: &mut dyn BatchSink) -> Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let arrays = self
            .builders
            .iter_mut()
            .map(ColumnBuilder::finish)
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), arrays)
            .map_err(|e| Error::parquet("assembling exported rows", e))?;
        self.rows = 0;
        self.bytes = 0;
        sink.push(batch).await
    }
}

/// An integer of the range column from its binary form.
fn range_value(bytes: Option<&[u8]>) -> std::result::Result<i64, String> {
    match bytes {
        Some(&[a, b]) => Ok(i16::from_be_bytes([a, b]) as i64),
        Some(&[a, b, c, d]) => Ok(i32::from_be_bytes([a, b, c, d]) as i64),
        Some(b) if b.len() == 8 => Ok(i64::from_be_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ])),
        Some(b) => Err(format!("the range column sent {} bytes", b.len())),
        None => Err("the range column is NULL in an exported row".into()),
    }
}

impl PostgresSource {
    pub(super) async fn stream_range(
        &self,
        hot: &HotDatasetConfig,
        range: KeyRange,
        columns: &[HotColumn],
        batch_bytes: u64,
        sink: &mut dyn BatchSink,
    ) -> Result<ExportedRows> {
        let table = hot.table_name()?;
        let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let copy = sql::export_copy(hot, &table, &names);
        let context = format!("export of {} {range}", table.sql());
        let range_index = columns
            .iter()
            .position(|c| c.name == hot.range_column)
            .ok_or_else(|| {
                Error::config(
                    format!("hot_dataset {:?}: columns", hot.name),
                    "must include the range column",
                )
            })?;
        if !matches!(
            columns[range_index].pg_type,
            PgType::Int2 | PgType::Int4 | PgType::Int8
        ) {
            return Err(Error::Other(format!(
                "range column {} is not an integer",
                hot.range_column
            )));
        }
        let schema: SchemaRef = Arc::new(Schema::new(
            columns.iter().map(HotColumn::field).collect::<Vec<_>>(),
        ));
        let builders = columns
            .iter()
            .map(|c| {
                ColumnBuilder::new(&c.pg_type, BATCH_ROWS).map_err(|reason| {
                    Error::UnsupportedColumn {
                        table: table.sql(),
                        column: c.name.clone(),
                        declared: c.declared.clone(),
                        reason,
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut assembler = BatchAssembler {
            schema,
            builders,
            rows: 0,
            bytes: 0,
            max_bytes: batch_bytes.max(1 << 20),
        };
        let mut cutter = BatchCutter::new(range, hot.delete_batch_rows);
        let exported = columns.len();
        // A connection of its own, driven by this task beside the stream it feeds: every
        // wake-up between the two stays on one thread (per-row traffic across threads costs
        // more than the decoding).
        let (config, connector) = self.connect_config(hot, false).await?;
        let (mut client, connection) = config
            .connect(connector)
            .await
            .map_err(pg_err(format!("connecting for the {context}")))?;
        let mut connection = std::pin::pin!(connection);
        let work = async {
            let txn = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg_err(context.clone()))?;
            let chain = hot.chain_id.map(|c| c.to_string()).unwrap_or_default();
            txn.execute(
                sql::EXPORT_SETTINGS,
                &[&range.start.to_string(), &range.end.to_string(), &chain],
            )
            .await
            .map_err(pg_err(context.clone()))?;
            let stream = txn
                .copy_out(copy.as_str())
                .await
                .map_err(pg_err(context.clone()))?;
            pin_mut!(stream);
            let mut parser = CopyParser::new(exported + sql::ROW_LOCATOR_COLUMNS);
            while let Some(chunk) = stream.try_next().await.map_err(pg_err(context.clone()))? {
                parser
                    .feed(&chunk, &mut |tuple| {
                        for (i, builder) in assembler.builders.iter_mut().enumerate() {
                            let value = tuple.value(i);
                            assembler.bytes += value.map_or(0, <[u8]>::len) as u64;
                            builder.append(value).map_err(|reason| {
                                format!(
                                    "column {} ({}): {reason}",
                                    columns[i].name, columns[i].declared
                                )
                            })?;
                        }
                        assembler.rows += 1;
                        let locator = RowLocator::from_binary(
                            tuple.value(exported).unwrap_or_default(),
                            tuple.value(exported + 1).unwrap_or_default(),
                        )?;
                        cutter.push(
                            range_value(tuple.value(range_index))?,
                            row_hash(tuple.leading_fields(exported)),
                            locator,
                        )
                    })
                    .map_err(|message| Error::Postgres {
                        context: context.clone(),
                        message,
                    })?;
                if assembler.rows >= BATCH_ROWS || assembler.bytes >= assembler.max_bytes {
                    assembler.flush(sink).await?;
                }
            }
            parser.finish().map_err(|message| Error::Postgres {
                context: context.clone(),
                message,
            })?;
            assembler.flush(sink).await?;
            txn.commit().await.map_err(pg_err(context.clone()))?;
            Ok(())
        };
        tokio::select! {
            result = work => result?,
            ended = &mut connection => return Err(Error::Postgres {
                context: context.clone(),
                message: match ended {
                    Err(e) => describe_pg_error(&e),
                    Ok(()) => "the server closed the connection".into(),
                },
            }),
        }
        let batches = cutter.finish();
        Ok(ExportedRows {
            digest: RowDigest::of(batches.iter().map(|b| &b.digest)),
            batches,
        })
    }
}
