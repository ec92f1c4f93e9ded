//! Row-level maintenance of a dataset (`compactor delete` and `compactor update`): what a
//! rewrite task carries, what its manifest records, and the backup records `compactor restore`
//! reads. The expressions themselves are SQL text here; the port
//! [`crate::ports::rows`] plans and evaluates them.
//!
//! A rewrite plans one task per partition holding a matching row. Its inputs are exactly the
//! files with a matching row (files without one are never touched); each input is rewritten
//! into its own output, row group by row group in order: a row group with no matching row is
//! copied as bytes, the others are decoded, changed and encoded. The committer swaps the
//! outputs in for the inputs like any other task.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

use crate::model::object::{join_key, ObjectMeta};

/// What a rewrite does to the rows its predicate matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewriteSpec {
    /// The SQL `WHERE` predicate over the data's columns and the partition's template fields.
    pub predicate: String,
    /// `column = expression` assignments (SQL `SET`); none: the matching rows are deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<String>,
    /// Where the replaced files are kept, with a record `compactor restore` reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Per input key: the row groups holding a matching row (the planner's scan of that
    /// version). The others are copied as they are.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Vec<usize>>,
    /// An upsert instead of a predicate: rows matched by key, new rows inserted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upsert: Option<UpsertSpec>,
}

impl RewriteSpec {
    pub fn is_delete(&self) -> bool {
        self.set.is_empty() && self.upsert.is_none()
    }

    /// `delete`, `update` or `upsert`, for messages.
    pub fn verb(&self) -> &'static str {
        match (&self.upsert, self.set.is_empty()) {
            (Some(_), _) => "upsert",
            (None, true) => "delete",
            (None, false) => "update",
        }
    }

    /// What the operation is, for messages and backup records.
    pub fn describe(&self) -> String {
        match &self.upsert {
            Some(u) => format!(
                "upsert from {} by key ({}), a matched row taking {}",
                u.source,
                u.key.join(", "),
                match u.update_cols.is_empty() {
                    true => "every other column".to_string(),
                    false => format!("({})", u.update_cols.join(", ")),
                }
            ),
            None if self.set.is_empty() => format!("delete WHERE {}", self.predicate),
            None => format!(
                "update SET {} WHERE {}",
                self.set.join(", "),
                self.predicate
            ),
        }
    }
}

/// An upsert (`compactor upsert`): the rows of a source matched by key against the data; a
/// match has its `update_cols` replaced by the source row's values, a source row without a
/// match is inserted into the partition its partition fields name.
///
/// The operation's spec names the key; each task's spec also counts the source rows staged
/// for its partition, in its task directory: [`UPSERT_UPDATES`] (keys found in the
/// partition's data) and [`UPSERT_INSERTS`] (keys found nowhere, routed here).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpsertSpec {
    /// Where the rows came from, for messages.
    pub source: String,
    pub key: Vec<String>,
    /// The columns a matched row takes from the source (default: every column but the key).
    pub update_cols: Vec<String>,
    /// Source rows staged for this task: matched in its partition, and inserted there.
    #[serde(default)]
    pub updates: u64,
    #[serde(default)]
    pub inserts: u64,
}

/// The source rows whose key the partition's data holds, in an upsert task's directory.
pub const UPSERT_UPDATES: &str = "_upsert_updates.parquet";
/// The source rows an upsert task inserts into its partition, in its task directory.
pub const UPSERT_INSERTS: &str = "_upsert_inserts.parquet";

/// What a rewrite task did, in its manifest and commit report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewriteRecord {
    /// Rows of the inputs.
    pub rows_in: u64,
    /// Rows the predicate matched (deleted, or updated).
    pub rows_matched: u64,
    /// Row groups of the inputs copied as bytes (no matching row), and decoded.
    pub row_groups_copied: u64,
    pub row_groups_rewritten: u64,
    /// Rows an upsert inserted.
    #[serde(default)]
    pub rows_inserted: u64,
}

/// What the planner's scan found in one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewriteScan {
    /// Files with a matching row: the task's inputs.
    pub files: Vec<ObjectMeta>,
    /// Data files of the partition read (footers), and of those, row groups in all and row
    /// groups the statistics could not rule out (their predicate columns were decoded).
    pub files_scanned: usize,
    pub row_groups: u64,
    pub row_groups_scanned: u64,
    /// Row groups with a matching row (rewritten) and rows matched.
    pub row_groups_matched: u64,
    pub rows_matched: u64,
    /// Rows of the files with a matching row.
    pub rows_in_files: u64,
    /// Rows an upsert inserts into the partition.
    pub rows_inserted: u64,
    pub groups: BTreeMap<String, Vec<usize>>,
}

impl RewriteScan {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// The values a predicate may name for a partition: each `key=value` directory level of its
/// path by its key (`dt`, `hour`), and the template's fields by their names (`date`).
pub fn partition_fields(
    template: &crate::model::partition::PartitionTemplate,
    partition: &str,
) -> Result<BTreeMap<String, String>> {
    let mut fields: BTreeMap<String, String> = partition
        .split('/')
        .filter_map(|level| level.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in template.parse_partition(partition)?.fields {
        fields.entry(k).or_insert(v);
    }
    Ok(fields)
}

/// The partition's template fields (`dt`, `venue`) that are not columns of the data, as
/// constant string columns a predicate may name: `dt = '2024-01-01'` prunes whole partitions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionColumns {
    fields: Vec<(String, String)>,
}

impl PartitionColumns {
    /// The template fields of a partition with its values, except those `schema` has.
    pub fn new(values: &BTreeMap<String, String>, schema: &Schema) -> Self {
        Self {
            fields: values
                .iter()
                .filter(|(name, _)| schema.field_with_name(name).is_err())
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(n, _)| n.as_str())
    }

    /// `schema` with the partition fields after its columns.
    pub fn extend_schema(&self, schema: &SchemaRef) -> SchemaRef {
        if self.fields.is_empty() {
            return Arc::clone(schema);
        }
        let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
        fields.extend(
            self.fields
                .iter()
                .map(|(n, _)| Arc::new(Field::new(n, DataType::Utf8, false))),
        );
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
    }

    /// `batch` with the partition fields as constant columns after its own.
    pub fn extend(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        if self.fields.is_empty() {
            return Ok(batch.clone());
        }
        let schema = self.extend_schema(&batch.schema());
        let mut columns = batch.columns().to_vec();
        columns.extend(self.constants(batch.num_rows()));
        RecordBatch::try_new(schema, columns).map_err(|e| Error::parquet("partition columns", e))
    }

    /// The partition fields alone, `rows` times: the bounds of a partition or a row group.
    pub fn bounds(&self, rows: usize) -> Result<RecordBatch> {
        let schema = self.extend_schema(&Arc::new(Schema::empty()));
        RecordBatch::try_new_with_options(
            schema,
            self.constants(rows),
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| Error::parquet("partition columns", e))
    }

    fn constants(&self, rows: usize) -> Vec<ArrayRef> {
        self.fields
            .iter()
            .map(|(_, v)| Arc::new(StringArray::from(vec![v.as_str(); rows])) as ArrayRef)
            .collect()
    }
}

/// Where backups of one task go: `<prefix>/<original key>` for each replaced file, and this
/// record at `<prefix>/_backup/<dataset>/<partition>/<task>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub dataset: String,
    pub partition: String,
    pub task_id: String,
    /// The predicate and assignments of the operation.
    pub predicate: String,
    #[serde(default)]
    pub set: Vec<String>,
    /// The replaced files: where they were and where their bytes are kept.
    pub files: Vec<BackedUpFile>,
    /// The partition manifest's key, and where its content before the operation is kept
    /// (`None`: there was none).
    pub partition_manifest: String,
    #[serde(default)]
    pub partition_manifest_backup: Option<String>,
    /// The files the operation put in their place (removed by a restore).
    pub outputs: Vec<String>,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackedUpFile {
    pub key: String,
    pub size: u64,
    pub backup_key: String,
}

/// The folder of backup records under a backup prefix.
pub const BACKUP_RECORDS: &str = "_backup";

/// Where the bytes of `key` are kept under `prefix`.
pub fn backup_key(prefix: &str, key: &str) -> String {
    join_key(&[prefix, key])
}

/// Where the record of a task's backup is kept under `prefix`.
pub fn backup_record_key(prefix: &str, dataset: &str, partition: &str, task_id: &str) -> String {
    join_key(&[
        prefix,
        BACKUP_RECORDS,
        dataset,
        partition,
        &format!("{task_id}.json"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_mirror_the_keys_they_keep() {
        assert_eq!(
            backup_key("bk/2024", "events/dt=2024-01-01/a.parquet"),
            "bk/2024/events/dt=2024-01-01/a.parquet"
        );
        assert_eq!(
            backup_record_key("bk", "events", "dt=2024-01-01", "g000002-t0000"),
            "bk/_backup/events/dt=2024-01-01/g000002-t0000.json"
        );
        assert_eq!(
            backup_record_key("bk", "events", "", "g000002-t0000"),
            "bk/_backup/events/g000002-t0000.json"
        );
    }

    #[test]
    fn partition_fields_the_data_lacks_become_constant_columns() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("venue", DataType::Utf8, true),
        ]));
        let values: BTreeMap<String, String> = [("dt", "2024-01-01"), ("venue", "X")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let columns = PartitionColumns::new(&values, &schema);
        assert_eq!(columns.names().collect::<Vec<_>>(), ["dt"]);
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["X", "X"])),
            ],
        )
        .unwrap();
        let extended = columns.extend(&batch).unwrap();
        assert_eq!(extended.schema(), columns.extend_schema(&schema));
        assert_eq!(extended.num_columns(), 3);
        let bounds = columns.bounds(3).unwrap();
        assert_eq!((bounds.num_rows(), bounds.num_columns()), (3, 1));
    }

    #[test]
    fn a_spec_without_assignments_deletes() {
        let spec = RewriteSpec {
            predicate: "price < 0".into(),
            ..Default::default()
        };
        assert_eq!(spec.verb(), "delete");
        let json = serde_json::to_value(&spec).unwrap();
        assert!(json.get("set").is_none(), "{json}");
        let update = RewriteSpec {
            set: vec!["price = 0".into()],
            ..spec
        };
        assert_eq!(update.verb(), "update");
        assert_eq!(
            serde_json::from_value::<RewriteSpec>(serde_json::to_value(&update).unwrap()).unwrap(),
            update
        );
    }
}
