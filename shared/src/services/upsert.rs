//! Upserts (`compactor upsert`): a source's rows matched by key against a dataset's rows.
//!
//! [`UpsertSource::new`] checks a source against the data before anything is planned (every
//! column of the data present and castable to its type, the key unique and never null, each
//! row's partition named by its partition fields); [`KeyedChanges`] is the
//! [`RowChanges`] the rewrite runs with: a row matches when its key is in the source, and takes
//! the source row's values of the updated columns. Row groups whose key statistics hold no
//! source key are ruled out like a predicate's.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, Scalar, UInt32Array};
use arrow::compute::kernels::cmp::{gt_eq, lt_eq};
use arrow::compute::{cast_with_options, concat_batches, take, CastOptions};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::io::decode;
use crate::model::partition::PartitionTemplate;
use crate::model::rewrite::{RewriteSpec, UpsertSpec};
use crate::ports::rows::{RowChange, RowChanges};

/// An upsert's source rows as read, before they are checked against the data.
pub type SourceRows = Vec<RecordBatch>;

/// The rows of an upsert's source, checked and cast to the data's schema, with the partition
/// each one belongs to.
#[derive(Debug)]
pub struct UpsertSource {
    /// The source's rows: the data's columns, in its order and types.
    pub rows: RecordBatch,
    /// Per row, the partition its partition fields name.
    pub partitions: Vec<String>,
    pub key: Vec<String>,
    pub update_cols: Vec<String>,
}

impl UpsertSource {
    /// Checks `batches` (the source as read) against the data's `schema` and the dataset's
    /// `template`: every column of the data, each castable to its type; no column but those
    /// and the partition fields; `key` columns of the data, never null, unique; `update_cols`
    /// (none given: every column but the key) columns of the data outside the key.
    pub fn new(
        batches: &[RecordBatch],
        schema: &SchemaRef,
        template: &PartitionTemplate,
        key: &[String],
        update_cols: Option<&[String]>,
    ) -> Result<Self> {
        let bad = |m: String| Error::Expression(m);
        let data_columns = || {
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if key.is_empty() {
            return Err(bad("--key names no column".into()));
        }
        for k in key {
            if schema.field_with_name(k).is_err() {
                return Err(bad(format!(
                    "key column {k:?} is not a column of the data ({})",
                    data_columns()
                )));
            }
        }
        let update_cols: Vec<String> = match update_cols {
            Some(cols) => cols.to_vec(),
            None => schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| !key.contains(n))
                .collect(),
        };
        for c in &update_cols {
            if key.contains(c) {
                return Err(bad(format!(
                    "{c:?} is part of the key; --update-cols names the columns a matched row takes from the source"
                )));
            }
            if schema.field_with_name(c).is_err() {
                return Err(bad(format!(
                    "--update-cols {c:?} is not a column of the data ({})",
                    data_columns()
                )));
            }
        }
        let fields = template_fields(template);
        let mut rows = Vec::with_capacity(batches.len());
        let mut partitions = Vec::new();
        for batch in batches {
            let source = batch.schema();
            for f in source.fields() {
                let name = f.name();
                if schema.field_with_name(name).is_err() && !fields.contains(name) {
                    return Err(bad(format!(
                        "the source's column {name:?} is neither a column of the data ({}) nor a partition field ({})",
                        data_columns(),
                        fields.join(", ")
                    )));
                }
            }
            let options = CastOptions {
                safe: false,
                ..Default::default()
            };
            let mut columns = Vec::with_capacity(schema.fields().len());
            for field in schema.fields() {
                let column = batch.column_by_name(field.name()).ok_or_else(|| {
                    bad(format!(
                        "the source has no column {:?}; an upsert's rows need every column of the data ({})",
                        field.name(),
                        data_columns()
                    ))
                })?;
                let cast = cast_with_options(column, field.data_type(), &options).map_err(|e| {
                    bad(format!(
                        "the source's column {:?} ({}) does not fit the data's type {}: {e}",
                        field.name(),
                        column.data_type(),
                        field.data_type()
                    ))
                })?;
                if !field.is_nullable() && cast.null_count() > 0 {
                    return Err(bad(format!(
                        "the source's column {:?} holds nulls; the data's column does not allow them",
                        field.name()
                    )));
                }
                columns.push(cast);
            }
            let normalized = RecordBatch::try_new(Arc::clone(schema), columns)
                .map_err(|e| Error::parquet("the upsert's source", e))?;
            partitions.extend(route(batch, template, partitions.len())?);
            rows.push(normalized);
        }
        let rows =
            concat_batches(schema, &rows).map_err(|e| Error::parquet("the upsert's source", e))?;
        // Checks the key: no nulls, no duplicates.
        KeyIndex::new(&rows, key)?;
        Ok(Self {
            rows,
            partitions,
            key: key.to_vec(),
            update_cols,
        })
    }

    /// [`UpsertSource::new`] with the key and columns of `upsert` (no columns: the default).
    pub fn of(
        batches: &[RecordBatch],
        schema: &SchemaRef,
        template: &PartitionTemplate,
        upsert: &UpsertSpec,
    ) -> Result<Self> {
        let update_cols = (!upsert.update_cols.is_empty()).then_some(upsert.update_cols.as_slice());
        Self::new(batches, schema, template, &upsert.key, update_cols)
    }

    /// Reads the Parquet file at `path`, or every `.parquet` file under the directory `path`.
    pub fn read(path: &std::path::Path) -> Result<SourceRows> {
        let mut files = Vec::new();
        let mut dirs = vec![path.to_path_buf()];
        if path.is_file() {
            files.push(path.to_path_buf());
            dirs.clear();
        }
        while let Some(dir) = dirs.pop() {
            let entries =
                std::fs::read_dir(&dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
            for entry in entries.flatten() {
                let p = entry.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|e| e == "parquet") {
                    files.push(p);
                }
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(Error::Expression(format!(
                "{} holds no .parquet file to upsert from",
                path.display()
            )));
        }
        files
            .iter()
            .map(|f| {
                let data = std::fs::read(f).map_err(|e| Error::io(f.display().to_string(), e))?;
                decode(&f.display().to_string(), Bytes::from(data))
            })
            .collect()
    }

    /// Reads the Parquet object at `key`, or every `.parquet` object under the prefix `key`,
    /// from `store` (an upsert planned by the planner function).
    pub async fn read_store(
        store: &dyn crate::ports::store::ObjectStore,
        key: &str,
    ) -> Result<SourceRows> {
        let mut keys = Vec::new();
        if store.head(key).await?.is_some() {
            keys.push(key.to_string());
        } else {
            let prefix = crate::model::object::dir_prefix(key);
            let listing = crate::ports::store::list_all(store, &prefix, None).await?;
            keys.extend(
                listing
                    .objects
                    .into_iter()
                    .map(|o| o.key)
                    .filter(|k| crate::model::plan::is_data_file(k, ".parquet")),
            );
        }
        if keys.is_empty() {
            return Err(Error::Expression(format!(
                "{key} holds no .parquet object to upsert from"
            )));
        }
        let mut rows = Vec::with_capacity(keys.len());
        for k in keys {
            let (data, _) = store.get(&k).await?;
            rows.push(decode(&k, data)?);
        }
        Ok(rows)
    }

    /// The source rows `rows` selects (their positions), in that order.
    pub fn select(&self, rows: &[u32]) -> Result<RecordBatch> {
        let indices = UInt32Array::from(rows.to_vec());
        let columns = self
            .rows
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::parquet("the upsert's source", e))?;
        RecordBatch::try_new(self.rows.schema(), columns)
            .map_err(|e| Error::parquet("the upsert's source", e))
    }

    /// The spec of an upsert task whose staged files hold `updates` and `inserts` rows.
    pub fn spec(&self, source: &str, updates: u64, inserts: u64) -> UpsertSpec {
        UpsertSpec {
            source: source.to_string(),
            key: self.key.clone(),
            update_cols: self.update_cols.clone(),
            updates,
            inserts,
        }
    }
}

/// The names a row may give a partition field by: the template's field names and the
/// `key=` names of its levels.
pub fn template_fields(template: &PartitionTemplate) -> Vec<String> {
    template
        .field_names()
        .into_iter()
        .flat_map(|(field, key)| std::iter::once(field).chain(key))
        .collect()
}

/// The columns of `schema` a row's partition is taken from (see [`route`]): per template
/// field, the column named like it, else the one named like its `key=` level.
pub fn routing_columns(
    schema: &arrow::datatypes::Schema,
    template: &PartitionTemplate,
) -> Vec<String> {
    template
        .field_names()
        .into_iter()
        .filter_map(|(field, key)| {
            std::iter::once(field)
                .chain(key)
                .find(|n| schema.field_with_name(n).is_ok())
        })
        .collect()
}

/// Each row's partition, from its partition fields (a column named like the field or like
/// its `key=` level, as text); rows are numbered from `first` in errors.
pub fn route(
    batch: &RecordBatch,
    template: &PartitionTemplate,
    first: usize,
) -> Result<Vec<String>> {
    let options = FormatOptions::default();
    let fields = template_fields(template);
    let mut formatters: HashMap<&str, ArrayFormatter<'_>> = HashMap::new();
    for name in &fields {
        if let Some(column) = batch.column_by_name(name) {
            let f = ArrayFormatter::try_new(column.as_ref(), &options)
                .map_err(|e| Error::parquet("the upsert's source", e))?;
            formatters.insert(name.as_str(), f);
        }
    }
    let mut out = Vec::with_capacity(batch.num_rows());
    let mut known: BTreeSet<String> = BTreeSet::new();
    for row in 0..batch.num_rows() {
        let value = |name: &str| -> Option<String> {
            let column = batch.column_by_name(name)?;
            if column.is_null(row) {
                return None;
            }
            Some(formatters.get(name)?.value(row).to_string())
        };
        let path = template
            .render_with(|field, key| value(field).or_else(|| key.and_then(value)))
            .ok_or_else(|| {
                Error::Expression(format!(
                    "row {} of the source has no value for a partition field ({}): an upsert puts a new row in the partition these name",
                    first + row,
                    fields.join(", ")
                ))
            })?;
        if !known.contains(&path) {
            template.parse_partition(&path).map_err(|e| {
                Error::Expression(format!(
                    "row {} of the source names the partition {path:?}, which the dataset's template cannot hold: {e}",
                    first + row
                ))
            })?;
            known.insert(path.clone());
        }
        out.push(path);
    }
    Ok(out)
}

/// The source's keys, as comparable bytes, and where each is.
struct KeyIndex {
    converter: RowConverter,
    positions: HashMap<Box<[u8]>, u32>,
    /// Per key column, the source's keys (for pruning by statistics).
    columns: Vec<(String, ArrayRef)>,
}

impl KeyIndex {
    fn new(rows: &RecordBatch, key: &[String]) -> Result<Self> {
        let columns: Vec<(String, ArrayRef)> = key
            .iter()
            .map(|k| {
                rows.column_by_name(k)
                    .map(|c| (k.clone(), Arc::clone(c)))
                    .ok_or_else(|| Error::Expression(format!("the source has no key column {k:?}")))
            })
            .collect::<Result<_>>()?;
        for (name, column) in &columns {
            if column.null_count() > 0 {
                let row = (0..column.len()).find(|&i| column.is_null(i)).unwrap_or(0);
                return Err(Error::Expression(format!(
                    "row {row} of the source has no value for the key column {name:?}; every row needs a key"
                )));
            }
        }
        let converter = RowConverter::new(
            columns
                .iter()
                .map(|(_, c)| SortField::new(c.data_type().clone()))
                .collect(),
        )
        .map_err(|e| Error::parquet("the upsert's key", e))?;
        let arrays: Vec<ArrayRef> = columns.iter().map(|(_, c)| Arc::clone(c)).collect();
        let converted = converter
            .convert_columns(&arrays)
            .map_err(|e| Error::parquet("the upsert's key", e))?;
        let mut positions = HashMap::with_capacity(rows.num_rows());
        for (i, row) in converted.iter().enumerate() {
            if let Some(first) = positions.insert(Box::from(row.as_ref()), i as u32) {
                return Err(Error::Expression(format!(
                    "the source holds the key ({}) twice, in rows {first} and {i}: an upsert needs one row per key",
                    describe_key(&columns, i)
                )));
            }
        }
        Ok(Self {
            converter,
            positions,
            columns,
        })
    }

    /// Per row of `batch`, the source row with its key (its key columns cast to the source's
    /// types).
    fn lookup(&self, batch: &RecordBatch) -> Result<Vec<Option<u32>>> {
        let mut arrays = Vec::with_capacity(self.columns.len());
        for (name, source) in &self.columns {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| Error::Expression(format!("the data has no key column {name:?}")))?;
            arrays.push(
                arrow::compute::cast(column, source.data_type())
                    .map_err(|e| Error::parquet("the upsert's key", e))?,
            );
        }
        let rows = self
            .converter
            .convert_columns(&arrays)
            .map_err(|e| Error::parquet("the upsert's key", e))?;
        Ok((0..batch.num_rows())
            .map(|i| {
                let null = arrays.iter().any(|a| a.is_null(i));
                (!null)
                    .then(|| self.positions.get(rows.row(i).as_ref()).copied())
                    .flatten()
            })
            .collect())
    }
}

fn describe_key(columns: &[(String, ArrayRef)], row: usize) -> String {
    let options = FormatOptions::default();
    columns
        .iter()
        .map(|(name, c)| {
            let value = ArrayFormatter::try_new(c.as_ref(), &options)
                .map(|f| f.value(row).to_string())
                .unwrap_or_default();
            format!("{name} = {value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Matching by key against a set of source rows: the [`RowChanges`] of an upsert. Keeps
/// which source rows any of its plans matched (the planner's scan of a partition).
#[derive(Clone)]
pub struct KeyedChanges {
    rows: RecordBatch,
    update_cols: Vec<String>,
    index: Arc<KeyIndex>,
    found: Arc<Mutex<Vec<bool>>>,
}

impl std::fmt::Debug for KeyedChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedChanges")
            .field("rows", &self.rows.num_rows())
            .field("update_cols", &self.update_cols)
            .finish()
    }
}

impl KeyedChanges {
    /// Matches `rows` (the data's columns) by `key`; a match takes their `update_cols`.
    pub fn new(rows: RecordBatch, key: &[String], update_cols: &[String]) -> Result<Self> {
        let index = KeyIndex::new(&rows, key)?;
        Ok(Self {
            found: Arc::new(Mutex::new(vec![false; rows.num_rows()])),
            rows,
            update_cols: update_cols.to_vec(),
            index: Arc::new(index),
        })
    }

    /// The same rows, with nothing found yet.
    pub fn fresh(&self) -> Self {
        Self {
            found: Arc::new(Mutex::new(vec![false; self.rows.num_rows()])),
            ..self.clone()
        }
    }

    /// Which source rows some row matched so far.
    pub fn found(&self) -> Vec<bool> {
        self.found.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

impl RowChanges for KeyedChanges {
    fn plan(&self, _spec: &RewriteSpec, schema: &SchemaRef) -> Result<Arc<dyn RowChange>> {
        for name in self
            .index
            .columns
            .iter()
            .map(|(n, _)| n)
            .chain(&self.update_cols)
        {
            if schema.field_with_name(name).is_err() {
                return Err(Error::Expression(format!(
                    "the upsert's column {name:?} is not a column of this file's data"
                )));
            }
        }
        Ok(Arc::new(KeyedChange {
            changes: self.clone(),
        }))
    }
}

struct KeyedChange {
    changes: KeyedChanges,
}

impl RowChange for KeyedChange {
    fn predicate_columns(&self) -> Vec<String> {
        self.changes
            .index
            .columns
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn read_columns(&self) -> Vec<String> {
        let mut cols = self.predicate_columns();
        cols.extend(self.changes.update_cols.iter().cloned());
        cols
    }

    fn set_columns(&self) -> Vec<String> {
        self.changes.update_cols.clone()
    }

    fn may_match(&self, mins: &RecordBatch, maxes: &RecordBatch) -> Result<Vec<bool>> {
        let mut may = vec![true; mins.num_rows()];
        for (name, keys) in &self.changes.index.columns {
            let (Some(lo), Some(hi)) = (mins.column_by_name(name), maxes.column_by_name(name))
            else {
                continue;
            };
            let (Ok(lo), Ok(hi)) = (
                arrow::compute::cast(lo, keys.data_type()),
                arrow::compute::cast(hi, keys.data_type()),
            ) else {
                continue;
            };
            for (group, may) in may.iter_mut().enumerate() {
                if !*may || lo.is_null(group) || hi.is_null(group) {
                    continue;
                }
                let above = gt_eq(keys, &Scalar::new(lo.slice(group, 1)));
                let below = lt_eq(keys, &Scalar::new(hi.slice(group, 1)));
                if let (Ok(above), Ok(below)) = (above, below) {
                    let within = arrow::compute::and(&above, &below)
                        .map_err(|e| Error::parquet("the upsert's key", e))?;
                    *may = within.true_count() > 0;
                }
            }
        }
        Ok(may)
    }

    fn matches(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let positions = self.changes.index.lookup(batch)?;
        if let Ok(mut found) = self.changes.found.lock() {
            for p in positions.iter().flatten() {
                found[*p as usize] = true;
            }
        }
        Ok(positions.iter().map(|p| Some(p.is_some())).collect())
    }

    fn apply(&self, batch: &RecordBatch, mask: &BooleanArray) -> Result<RecordBatch> {
        let positions = self.changes.index.lookup(batch)?;
        let indices: UInt32Array = positions
            .iter()
            .enumerate()
            .map(|(i, p)| p.filter(|_| mask.is_valid(i) && mask.value(i)))
            .collect();
        let chosen: BooleanArray = indices.iter().map(|p| Some(p.is_some())).collect();
        let mut columns = batch.columns().to_vec();
        for name in &self.changes.update_cols {
            let Ok(at) = batch.schema().index_of(name) else {
                continue;
            };
            let Some(source) = self.changes.rows.column_by_name(name) else {
                continue;
            };
            let target = batch.column(at);
            let taken = take(source.as_ref(), &indices, None)
                .and_then(|t| arrow::compute::cast(&t, target.data_type()))
                .map_err(|e| Error::parquet("the upsert's rows", e))?;
            columns[at] = arrow::compute::kernels::zip::zip(&chosen, &taken, target)
                .map_err(|e| Error::parquet("the upsert's rows", e))?;
        }
        RecordBatch::try_new(batch.schema(), columns)
            .map_err(|e| Error::parquet("the upsert's rows", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("price", DataType::Float64, true),
            Field::new("venue", DataType::Utf8, true),
        ]))
    }

    fn source(ids: &[i64], dt: &[&str]) -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef),
            (
                "price",
                Arc::new(StringArray::from(vec!["1.5"; ids.len()])) as ArrayRef,
            ),
            (
                "venue",
                Arc::new(StringArray::from(vec!["X"; ids.len()])) as ArrayRef,
            ),
            ("dt", Arc::new(StringArray::from(dt.to_vec())) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn sources_are_cast_routed_and_keyed() {
        let tpl = PartitionTemplate::parse("dt={date}").unwrap();
        let s = UpsertSource::new(
            &[source(&[1, 2], &["2024-01-01", "2024-01-02"])],
            &schema(),
            &tpl,
            &["id".to_string()],
            None,
        )
        .unwrap();
        assert_eq!(s.partitions, vec!["dt=2024-01-01", "dt=2024-01-02"]);
        assert_eq!(s.update_cols, vec!["price", "venue"]);
        assert_eq!(s.rows.column(1).data_type(), &DataType::Float64);
        let dup = UpsertSource::new(
            &[source(&[1, 1], &["2024-01-01", "2024-01-01"])],
            &schema(),
            &tpl,
            &["id".to_string()],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(dup.contains("id = 1") && dup.contains("twice"), "{dup}");
        let bad_dt = UpsertSource::new(
            &[source(&[1], &["yesterday"])],
            &schema(),
            &tpl,
            &["id".to_string()],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(bad_dt.contains("yesterday"), "{bad_dt}");
        let key_update = UpsertSource::new(
            &[source(&[1], &["2024-01-01"])],
            &schema(),
            &tpl,
            &["id".to_string()],
            Some(&["id".to_string()]),
        )
        .unwrap_err()
        .to_string();
        assert!(key_update.contains("part of the key"), "{key_update}");
    }

    #[test]
    fn matches_by_key_take_the_source_values_and_prune_by_bounds() {
        let tpl = PartitionTemplate::parse("dt={date}").unwrap();
        let s = UpsertSource::new(
            &[source(&[10, 20], &["2024-01-01", "2024-01-01"])],
            &schema(),
            &tpl,
            &["id".to_string()],
            Some(&["price".to_string()]),
        )
        .unwrap();
        let changes = KeyedChanges::new(s.rows.clone(), &s.key, &s.update_cols).unwrap();
        let change = changes.plan(&RewriteSpec::default(), &schema()).unwrap();
        let data = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(vec![5, 10, 15])),
                Arc::new(arrow::array::Float64Array::from(vec![9.0, 9.0, 9.0])),
                Arc::new(StringArray::from(vec!["A", "B", "C"])),
            ],
        )
        .unwrap();
        let mask = change.matches(&data).unwrap();
        assert_eq!(mask, BooleanArray::from(vec![false, true, false]));
        assert_eq!(changes.found(), vec![true, false]);
        let out = change.apply(&data, &mask).unwrap();
        let price = out
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .unwrap();
        assert_eq!(price.values().to_vec(), vec![9.0, 1.5, 9.0]);
        assert_eq!(out.column(2), data.column(2));
        let bounds = |v: Vec<i64>| {
            RecordBatch::try_from_iter(vec![("id", Arc::new(Int64Array::from(v)) as ArrayRef)])
                .unwrap()
        };
        let may = change
            .may_match(&bounds(vec![0, 11, 15]), &bounds(vec![9, 30, 19]))
            .unwrap();
        assert_eq!(may, vec![false, true, false]);
        let null_key = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(Int64Array::from(vec![None, Some(20)])) as ArrayRef,
        )])
        .unwrap();
        assert_eq!(
            change.matches(&null_key).unwrap(),
            BooleanArray::from(vec![false, true])
        );
    }
}
