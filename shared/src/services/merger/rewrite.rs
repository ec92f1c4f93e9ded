//! The [`TaskKind::Rewrite`](crate::model::task::TaskKind::Rewrite) kind: each input file is
//! rewritten into its own output(s), row group by row group in order. A row group the
//! planner's scan found without a matching row is copied as bytes; the others are decoded, the
//! matching rows deleted or updated, and encoded again. The outputs keep the input's schema and
//! declared sort order. An input changed since the scan is left as it is and reported.

use std::sync::Arc;

use arrow::compute::filter_record_batch;
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::file::metadata::{
    PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader, SortingColumn,
};

use super::inputs::{copied_row_group, BATCH_ROWS};
use super::{task_manifest, Merger};
use crate::error::{Error, Result};
use crate::format::copy::{copyable, output_descriptor, same_parquet_schema};
use crate::format::io::decode;
use crate::format::io::StoreReader;
use crate::format::writer::{writer_properties, RollingWriter};
use crate::model::dataset::RowGroupCopy;
use crate::model::manifest::{check_versions, skipped, OutputFile, SkipKind, TaskManifest};
use crate::model::object::ObjectMeta;
use crate::model::rewrite::{
    partition_fields, PartitionColumns, RewriteRecord, RewriteSpec, UpsertSpec, UPSERT_INSERTS,
    UPSERT_UPDATES,
};
use crate::model::task::Task;
use crate::ports::rows::RowChanges;
use crate::ports::store::current_versions;
use crate::services::planner::rewrite::{arrow_schema, check_targets};
use crate::services::upsert::KeyedChanges;
use crate::support::faults::crash_point;

impl Merger {
    /// Rewrites the task's input files, each into its own outputs.
    pub(super) async fn rewrite(
        &self,
        task: &Arc<Task>,
        spec: &RewriteSpec,
        attempt: u32,
    ) -> Result<TaskManifest> {
        let store = self.store.as_ref();
        // Planned at the first input: an upsert task without one only inserts.
        let changes = tokio::sync::OnceCell::new();
        let values = partition_fields(&task.dataset.template()?, &task.partition.partition)?;
        let current = current_versions(store, &task.inputs).await?;
        let (unchanged, mut skipped_inputs) = check_versions(&task.inputs, &current);
        let mut record = RewriteRecord::default();
        let mut rewritten: Vec<(ObjectMeta, Vec<OutputFile>, RewriteRecord)> = Vec::new();
        let mut next_index = 0;
        for meta in unchanged {
            let changes = changes
                .get_or_try_init(|| self.row_changes_for(task, spec))
                .await?;
            let result = self
                .rewrite_file(
                    task,
                    spec,
                    changes.as_ref(),
                    &values,
                    attempt,
                    &meta,
                    next_index,
                )
                .await;
            match result {
                Ok((outputs, done)) => {
                    self.progress.input_read(meta.size);
                    next_index += outputs.len();
                    rewritten.push((meta, outputs, done));
                    crash_point("mid-rewrite");
                }
                Err(e @ (Error::CorruptInput { .. } | Error::NotFound { .. })) => {
                    // Changed or gone since the scan: left as it is, for another run.
                    let now = current_versions(store, std::slice::from_ref(&meta)).await?;
                    let (_, changed) = check_versions(std::slice::from_ref(&meta), &now);
                    skipped_inputs.push(
                        changed
                            .into_iter()
                            .next()
                            .unwrap_or_else(|| skipped(&meta, SkipKind::Unreadable, e.to_string())),
                    );
                }
                Err(e) => {
                    for (_, outputs, _) in &rewritten {
                        self.discard(outputs).await;
                    }
                    return Err(e);
                }
            }
        }
        // An input rewritten meanwhile keeps its new content: its outputs are dropped.
        let read: Vec<ObjectMeta> = rewritten.iter().map(|(m, _, _)| m.clone()).collect();
        let after = current_versions(store, &read).await?;
        let (_, changed) = check_versions(&read, &after);
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for (meta, files, done) in rewritten {
            if changed.iter().any(|c| c.key == meta.key) {
                self.discard(&files).await;
                continue;
            }
            record.rows_in += done.rows_in;
            record.rows_matched += done.rows_matched;
            record.row_groups_copied += done.row_groups_copied;
            record.row_groups_rewritten += done.row_groups_rewritten;
            inputs.push(meta);
            outputs.extend(files);
        }
        skipped_inputs.extend(changed);
        if let Some(upsert) = spec.upsert.as_ref().filter(|u| u.inserts > 0) {
            match self.insert(task, upsert, attempt, next_index).await {
                Ok((files, rows)) => {
                    record.rows_inserted = rows;
                    outputs.extend(files);
                }
                Err(e) => {
                    self.discard(&outputs).await;
                    return Err(e);
                }
            }
        }
        let schema = match outputs.first() {
            Some(first) => {
                let footer = crate::format::io::read_footer(store, &first.staging_key).await?;
                arrow_schema(&first.staging_key, &footer)?
            }
            None => Arc::new(arrow::datatypes::Schema::empty()),
        };
        let mut manifest = task_manifest(
            task,
            attempt,
            inputs,
            skipped_inputs,
            outputs,
            &schema,
            None,
        );
        manifest.rewrite = Some(record);
        if let Some(prefix) = &spec.backup {
            crate::services::backup::keep(store, prefix, task, spec, &manifest).await?;
            crash_point("after-backup");
        }
        Ok(manifest)
    }

    /// What matches and changes the rows of a task's inputs: an upsert's staged source rows
    /// by key, or the SQL of a delete or update.
    async fn row_changes_for(
        &self,
        task: &Task,
        spec: &RewriteSpec,
    ) -> Result<Arc<dyn RowChanges>> {
        match &spec.upsert {
            Some(upsert) => {
                let key = task.staging_key(UPSERT_UPDATES);
                let rows = decode(&key, self.store.get(&key).await?.0)?;
                Ok(Arc::new(KeyedChanges::new(rows, &upsert.key, &upsert.update_cols)?))
            }
            None => self.row_changes.clone().ok_or_else(|| {
                Error::Other(format!(
                    "task {} is a {} of rows, which needs the SQL engine this merger does not link; run it with the `compactor` CLI",
                    task.task_id,
                    spec.verb()
                ))
            }),
        }
    }

    /// Writes the rows an upsert task inserts into outputs numbered from `first_index`.
    async fn insert(
        &self,
        task: &Arc<Task>,
        upsert: &UpsertSpec,
        attempt: u32,
        first_index: usize,
    ) -> Result<(Vec<OutputFile>, u64)> {
        let key = task.staging_key(UPSERT_INSERTS);
        let rows = decode(&key, self.store.get(&key).await?.0)?;
        let props = writer_properties(&task.dataset, None)?;
        let mut writer = RollingWriter::new(
            Arc::clone(&self.store),
            Arc::clone(task),
            attempt,
            rows.schema(),
            props,
        )
        .with_first_index(first_index);
        if let Err(e) = writer.write(&rows).await {
            writer.abort().await;
            return Err(e);
        }
        let outputs = writer.finish().await?;
        let written: u64 = outputs.iter().map(|o| o.rows).sum();
        if written != upsert.inserts || rows.num_rows() as u64 != upsert.inserts {
            self.discard(&outputs).await;
            return Err(Error::Other(format!(
                "task {}: {written} rows inserted where the plan staged {} ({key} holds {}); nothing was staged",
                task.task_id,
                upsert.inserts,
                rows.num_rows()
            )));
        }
        Ok((outputs, written))
    }

    /// Rewrites one input into outputs numbered from `first_index`.
    #[allow(clippy::too_many_arguments)]
    async fn rewrite_file(
        &self,
        task: &Arc<Task>,
        spec: &RewriteSpec,
        changes: &dyn RowChanges,
        values: &std::collections::BTreeMap<String, String>,
        attempt: u32,
        meta: &ObjectMeta,
        first_index: usize,
    ) -> Result<(Vec<OutputFile>, RewriteRecord)> {
        let mut reader = StoreReader::ranged(Arc::clone(&self.store), meta);
        let footer = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Optional)
            .load_and_finish(&mut reader, meta.size)
            .await
            .map_err(|e| Error::CorruptInput {
                key: meta.key.clone(),
                reason: e.to_string(),
            })?;
        let footer = Arc::new(footer);
        let schema = arrow_schema(&meta.key, &footer)?;
        let columns = PartitionColumns::new(values, &schema);
        let change = changes.plan(spec, &columns.extend_schema(&schema))?;
        check_targets(change.as_ref(), &columns, &schema)?;
        let set = change.set_columns();
        let sorting = declared_order(&footer).filter(|order| {
            let descr = footer.file_metadata().schema_descr();
            !order.iter().any(|c| {
                let name = descr.column(c.column_idx.max(0) as usize).path().string();
                set.iter()
                    .any(|s| name == *s || name.starts_with(&format!("{s}.")))
            })
        });
        let props = writer_properties(&task.dataset, sorting)?;
        let copies_allowed = output_descriptor(&schema)
            .is_ok_and(|out| same_parquet_schema(footer.file_metadata().schema_descr(), &out));
        let matched_groups = spec.groups.get(&meta.key);
        let arrow_meta = ArrowReaderMetadata::try_new(Arc::clone(&footer), Default::default())
            .map_err(|e| Error::parquet(&meta.key, e))?;
        let mut writer = RollingWriter::new(
            Arc::clone(&self.store),
            Arc::clone(task),
            attempt,
            Arc::clone(&schema),
            props.clone(),
        )
        .with_first_index(first_index);
        let mut record = RewriteRecord {
            rows_in: footer.file_metadata().num_rows().max(0) as u64,
            ..RewriteRecord::default()
        };
        let mut rows_out = 0u64;
        let result: Result<()> = async {
            for group in 0..footer.num_row_groups() {
                let may_match = matched_groups.is_none_or(|g| g.contains(&group));
                if !may_match
                    && copies_allowed
                    && copyable(footer.row_group(group), &props, RowGroupCopy::AnyCodec)
                {
                    let copied =
                        copied_row_group(self.store.as_ref(), meta, &footer, group).await?;
                    rows_out += copied.rows;
                    writer.copy_row_group(copied).await?;
                    record.row_groups_copied += 1;
                    continue;
                }
                record.row_groups_rewritten += 1;
                let reader = StoreReader::ranged(Arc::clone(&self.store), meta);
                let mut batches =
                    ParquetRecordBatchStreamBuilder::new_with_metadata(reader, arrow_meta.clone())
                        .with_batch_size(BATCH_ROWS)
                        .with_row_groups(vec![group])
                        .build()
                        .map_err(|e| corrupt(meta, e))?
                        .map_err(|e| corrupt(meta, e));
                while let Some(batch) = batches.try_next().await? {
                    let extended = columns.extend(&batch)?;
                    let mask = change.matches(&extended)?;
                    record.rows_matched += mask.true_count() as u64;
                    let out = if spec.is_delete() {
                        let keep =
                            arrow::compute::not(&mask).map_err(|e| Error::parquet(&meta.key, e))?;
                        filter_record_batch(&batch, &keep)
                            .map_err(|e| Error::parquet(&meta.key, e))?
                    } else {
                        let changed = change.apply(&extended, &mask)?;
                        let data: Vec<usize> = (0..batch.num_columns()).collect();
                        changed
                            .project(&data)
                            .map_err(|e| Error::parquet(&meta.key, e))?
                    };
                    if out.num_rows() > 0 {
                        rows_out += out.num_rows() as u64;
                        writer.write(&out).await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            writer.abort().await;
            return Err(e);
        }
        let outputs = writer.finish().await?;
        let expected = match spec.is_delete() {
            true => record.rows_in - record.rows_matched.min(record.rows_in),
            false => record.rows_in,
        };
        let written: u64 = outputs.iter().map(|o| o.rows).sum();
        if written != expected || rows_out != expected {
            self.discard(&outputs).await;
            return Err(Error::Other(format!(
                "rewriting {} wrote {written} rows where {expected} were expected ({} read, {} matched); nothing was staged",
                meta.key, record.rows_in, record.rows_matched
            )));
        }
        Ok((outputs, record))
    }
}

fn corrupt(meta: &ObjectMeta, e: parquet::errors::ParquetError) -> Error {
    Error::CorruptInput {
        key: meta.key.clone(),
        reason: e.to_string(),
    }
}

/// The sort order every row group of a file declares, if they all declare the same.
fn declared_order(footer: &ParquetMetaData) -> Option<Vec<SortingColumn>> {
    let first = footer.row_groups().first()?.sorting_columns()?.clone();
    footer
        .row_groups()
        .iter()
        .all(|g| g.sorting_columns() == Some(&first))
        .then_some(first)
}
