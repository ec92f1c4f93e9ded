//! The `[[hot_dataset]]` table of the configuration file: a Postgres table whose finalized rows
//! move into cold Parquet partitions, one per range of the range column.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::dataset::{DatasetConfig, Mode};
use crate::model::hot::names::{validate_identifier, QualifiedName};
use crate::model::hot::range::KeyRange;
use crate::support::units::{ByteSize, HumanDuration};

/// What to do with a `numeric` column that no widely read Parquet decimal holds: one without
/// precision and scale, with a negative scale, or with more than 38 digits (Spark, Trino and
/// Athena, and polars read at most `decimal(38)`; DuckDB reads wider ones as DOUBLE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnboundedNumeric {
    /// Refuse the table, naming the column (the default: no silent change of type).
    #[default]
    Error,
    /// Write the exact decimal text as a string column.
    Text,
    /// Write `numeric(39..76, s)` as a 256-bit decimal (exact in pyarrow and arrow-rs); other
    /// unbounded numerics are still refused.
    Decimal256,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotDatasetConfig {
    /// Dataset name (letters, digits, `-`, `_`, `.`); unique across `[[dataset]]` and
    /// `[[hot_dataset]]`. Also the `{dataset}` of the output layout.
    pub name: String,
    /// The Postgres table, `table` or `schema.table` (names as stored, usually lowercase; a
    /// name holding a dot or a quote is written in double quotes, `"my.schema"."t"`).
    pub table: String,
    /// Export only the rows of this chain (`chain_column = chain_id`); all rows when unset.
    #[serde(default)]
    pub chain_id: Option<i64>,
    #[serde(default = "default_chain_column")]
    pub chain_column: String,
    /// The integer column ranges are cut on, e.g. `block_number`.
    #[serde(default = "default_range_column")]
    pub range_column: String,
    /// Width of one range (one cold partition), e.g. 10000 blocks.
    #[serde(default = "default_range_size")]
    pub range_size: u64,
    /// Ranges start at `range_start + k * range_size`; nothing before `range_start` is exported.
    #[serde(default)]
    pub range_start: i64,
    /// Only rows with `range_column <= tip - finality_depth_blocks` are final.
    #[serde(default)]
    pub finality_depth_blocks: u64,
    /// A query returning the chain's tip (one row, one integer column); `$1` is `chain_id` if
    /// the query uses it. Default: the range column's maximum for the chain.
    #[serde(default)]
    pub tip_query: Option<String>,
    /// Rows per Parquet file.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u64,
    /// Delete the exported rows from Postgres once the cold copy is committed, each batch only
    /// if the rows it removes are exactly the cold copy's.
    #[serde(default)]
    pub delete_after_compact: bool,
    /// The most rows one DELETE transaction removes, so locks and WAL stay small.
    #[serde(default = "default_delete_batch_rows")]
    pub delete_batch_rows: u64,
    /// How long one DELETE (or partition detach) waits for locks before it is rolled back and
    /// left for the next run.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: HumanDuration,
    /// When the table is range-partitioned with a child partition holding exactly the range,
    /// detach and drop that partition instead of deleting rows.
    #[serde(default)]
    pub drop_partitions: bool,
    /// Columns to export, in this order (default: every column of the table).
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub unbounded_numeric: UnboundedNumeric,
    /// Numeric columns exported as their exact text whatever their precision: for values no
    /// Parquet decimal holds (`NaN`, `Infinity`) in a `numeric(p,s)` column.
    #[serde(default)]
    pub numeric_as_text: Vec<String>,
    /// Where the range partitions go; `{chain}` and `{dataset}` are replaced. Default
    /// `cold/{chain}/{dataset}/` with a chain, `cold/{dataset}/` without.
    #[serde(default)]
    pub output_prefix: Option<String>,
    /// Like a file dataset's, but `zstd(1)` by default (see `default_compression`).
    #[serde(default = "default_compression")]
    pub compression: String,
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    #[serde(default = "default_row_group_size")]
    pub row_group_size: ByteSize,
    /// Ranges one sweep dispatches at most (the next sweep continues).
    #[serde(default = "default_max_ranges_per_sweep")]
    pub max_ranges_per_sweep: usize,
    /// Environment variable holding the DSN when no secret is configured (local runs).
    #[serde(default = "default_dsn_env")]
    pub dsn_env: String,
    /// The `dataset_uuid` of commit events; default: a UUID derived from the name.
    #[serde(default)]
    pub dataset_uuid: Option<String>,
}

/// The environment variable the DSN is read from by default.
pub const DEFAULT_DSN_ENV: &str = "COMPACTOR_PG_DSN";

fn default_chain_column() -> String {
    "chain_id".into()
}
fn default_range_column() -> String {
    "block_number".into()
}
fn default_range_size() -> u64 {
    10_000
}
fn default_chunk_size() -> u64 {
    1_000_000
}
fn default_delete_batch_rows() -> u64 {
    50_000
}
fn default_lock_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}
/// Exports default to zstd level 1, not the level 3 of file datasets: zstd is most of an
/// export's CPU, and at level 1 an export keeps pace with the database (bench/hot_export.py:
/// about 7% larger files, a quarter less CPU). Set `compression = "zstd"` for level 3.
fn default_compression() -> String {
    "zstd(1)".into()
}
fn default_row_group_rows() -> usize {
    1_048_576
}
fn default_row_group_size() -> ByteSize {
    ByteSize::mib(64)
}
fn default_max_ranges_per_sweep() -> usize {
    16
}
fn default_dsn_env() -> String {
    DEFAULT_DSN_ENV.into()
}

/// Namespace of the UUIDs derived from dataset names (a fixed, random UUID).
const DATASET_UUID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x4f1c_9a52_77e3_4d0b_9c1e_5b2a_6d8f_0e31);

/// The stable UUID of a dataset that configures none: the same name always gives the same UUID.
pub fn derived_dataset_uuid(name: &str) -> String {
    uuid::Uuid::new_v5(&DATASET_UUID_NAMESPACE, name.as_bytes()).to_string()
}

impl HotDatasetConfig {
    /// A hot dataset with every optional field at its default.
    pub fn new(name: &str, table: &str) -> Self {
        Self {
            name: name.into(),
            table: table.into(),
            chain_id: None,
            chain_column: default_chain_column(),
            range_column: default_range_column(),
            range_size: default_range_size(),
            range_start: 0,
            finality_depth_blocks: 0,
            tip_query: None,
            chunk_size: default_chunk_size(),
            delete_after_compact: false,
            delete_batch_rows: default_delete_batch_rows(),
            lock_timeout: default_lock_timeout(),
            drop_partitions: false,
            columns: Vec::new(),
            unbounded_numeric: UnboundedNumeric::default(),
            numeric_as_text: Vec::new(),
            output_prefix: None,
            compression: default_compression(),
            row_group_rows: default_row_group_rows(),
            row_group_size: default_row_group_size(),
            max_ranges_per_sweep: default_max_ranges_per_sweep(),
            dsn_env: default_dsn_env(),
            dataset_uuid: None,
        }
    }

    fn field_error(&self, field: &str, message: impl Into<String>) -> Error {
        Error::config(format!("hot_dataset {:?}: {field}", self.name), message)
    }

    pub fn table_name(&self) -> Result<QualifiedName> {
        QualifiedName::parse(&self.table).map_err(|m| self.field_error("table", m))
    }

    pub fn dataset_uuid(&self) -> String {
        self.dataset_uuid
            .clone()
            .unwrap_or_else(|| derived_dataset_uuid(&self.name))
    }

    /// The output prefix with `{chain}` and `{dataset}` filled in, ending with `/`.
    pub fn output_dir(&self) -> String {
        let template = self.output_prefix.clone().unwrap_or_else(|| {
            if self.chain_id.is_some() {
                "cold/{chain}/{dataset}/".into()
            } else {
                "cold/{dataset}/".into()
            }
        });
        let chain = self.chain_id.map(|c| c.to_string()).unwrap_or_default();
        crate::model::object::dir_prefix(
            &template
                .replace("{chain}", &chain)
                .replace("{dataset}", &self.name),
        )
    }

    /// `<output dir>/<start>-<end>/`: the directory of one range's files.
    pub fn range_dir(&self, range: KeyRange) -> String {
        format!("{}{}/", self.output_dir(), range.key())
    }

    /// The output side of an export task as a file dataset: where its files go (the range's
    /// directory is its "partition") and how they are written. Only the layout and writer
    /// fields are used; such a task is never planned as a file dataset.
    pub fn output_dataset(&self) -> DatasetConfig {
        DatasetConfig {
            target_file_size: ByteSize(u64::MAX),
            row_group_size: self.row_group_size,
            row_group_rows: self.row_group_rows,
            compression: self.compression.clone(),
            mode: Mode::Concat,
            ..DatasetConfig::new(&self.name, &self.output_dir(), "{start}-{end}")
        }
    }

    /// The range a partition key names, checked against this dataset's grid so that two
    /// exports can never overlap.
    pub fn range_of_key(&self, key: &str) -> Result<KeyRange> {
        let range = KeyRange::parse(key)?;
        let aligned = (range.start - self.range_start).rem_euclid(self.range_size as i64) == 0;
        if !aligned
            || range.start < self.range_start
            || range.end - range.start != self.range_size as i64
        {
            return Err(Error::BadEvent(format!(
                "partition key {key:?} is not a range of hot dataset {:?}: ranges are {} wide \
                 and start at {} + k * {} (e.g. \"{}\")",
                self.name,
                self.range_size,
                self.range_start,
                self.range_size,
                self.range_containing(range.start.max(self.range_start))
                    .key()
            )));
        }
        Ok(range)
    }

    /// The grid range holding `value`.
    pub fn range_containing(&self, value: i64) -> KeyRange {
        let size = self.range_size as i64;
        let start = self.range_start + (value - self.range_start).div_euclid(size) * size;
        KeyRange {
            start,
            end: start + size,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |field: &str, msg: String| Err(self.field_error(field, msg));
        if !crate::model::dataset::is_valid_dataset_name(&self.name) {
            return fail(
                "name",
                "must be non-empty and use only letters, digits, '-', '_' and '.'".into(),
            );
        }
        self.table_name()?;
        for (field, value) in [
            ("chain_column", &self.chain_column),
            ("range_column", &self.range_column),
        ] {
            validate_identifier(value).or_else(|m| fail(field, format!("the name {m}")))?;
        }
        for column in &self.columns {
            validate_identifier(column).or_else(|m| fail("columns", format!("a name {m}")))?;
        }
        for column in &self.numeric_as_text {
            validate_identifier(column)
                .or_else(|m| fail("numeric_as_text", format!("a name {m}")))?;
        }
        if !self.columns.is_empty() && !self.columns.contains(&self.range_column) {
            return fail(
                "columns",
                format!(
                    "must include the range column {:?}: the delete is checked against it",
                    self.range_column
                ),
            );
        }
        if self.range_size == 0 || self.range_size > i64::MAX as u64 / 4 {
            return fail(
                "range_size",
                "must be a positive integer, e.g. 10000".into(),
            );
        }
        if self.range_start < 0 {
            return fail(
                "range_start",
                "must not be negative (partition keys are \"start-end\")".into(),
            );
        }
        if self.chunk_size == 0 {
            return fail(
                "chunk_size",
                "must be at least 1 row per file (e.g. 1000000)".into(),
            );
        }
        if self.delete_batch_rows == 0 {
            return fail(
                "delete_batch_rows",
                "must be at least 1 (e.g. 50000)".into(),
            );
        }
        let lock_ms = self.lock_timeout.0.as_millis();
        if lock_ms == 0 || lock_ms > 3_600_000 {
            return fail(
                "lock_timeout",
                "must be between 1ms and 1h (e.g. \"30s\")".into(),
            );
        }
        if self.max_ranges_per_sweep == 0 {
            return fail("max_ranges_per_sweep", "must be at least 1".into());
        }
        if self.row_group_rows < 1024 {
            return fail("row_group_rows", "must be at least 1024".into());
        }
        if self.row_group_size.bytes() < 1 << 20 {
            return fail("row_group_size", "must be at least 1MiB".into());
        }
        if let Some(query) = &self.tip_query {
            let head = query.trim_start().to_ascii_lowercase();
            if !(head.starts_with("select") || head.starts_with("with")) {
                return fail(
                    "tip_query",
                    "must be one SELECT (or WITH ... SELECT) returning the tip".into(),
                );
            }
        }
        if let Some(prefix) = &self.output_prefix {
            if prefix.contains("{chain}") && self.chain_id.is_none() {
                return fail(
                    "output_prefix",
                    "uses {chain} but no chain_id is set; set chain_id or remove {chain}".into(),
                );
            }
        }
        crate::model::object::validate_prefix(&self.output_dir()).or_else(|e| {
            fail(
                "output_prefix",
                format!("{e}; use a relative prefix such as \"cold/{{chain}}/{{dataset}}/\""),
            )
        })?;
        if self.output_dir().is_empty() {
            return fail(
                "output_prefix",
                "must not be empty: ranges need a prefix of their own".into(),
            );
        }
        if let Some(id) = &self.dataset_uuid {
            uuid::Uuid::parse_str(id)
                .map_err(|e| self.field_error("dataset_uuid", format!("{id:?}: {e}")))?;
        }
        if self.dsn_env.is_empty() {
            return fail("dsn_env", "must name an environment variable".into());
        }
        self.output_dataset().parquet_compression().map_err(|e| {
            self.field_error(
                "compression",
                e.to_string()
                    .rsplit(": ")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks() -> HotDatasetConfig {
        HotDatasetConfig {
            chain_id: Some(10143),
            ..HotDatasetConfig::new("blocks", "public.blocks")
        }
    }

    #[test]
    fn output_layout_follows_chain_and_dataset() {
        let hot = blocks();
        assert_eq!(hot.output_dir(), "cold/10143/blocks/");
        let range = KeyRange {
            start: 1_000_000,
            end: 1_010_000,
        };
        assert_eq!(hot.range_dir(range), "cold/10143/blocks/1000000-1010000/");
        let unchained = HotDatasetConfig::new("logs", "logs");
        assert_eq!(unchained.output_dir(), "cold/logs/");
        let custom = HotDatasetConfig {
            output_prefix: Some("archive/{dataset}/chain={chain}".into()),
            ..blocks()
        };
        assert_eq!(custom.output_dir(), "archive/blocks/chain=10143/");
    }

    #[test]
    fn keys_must_sit_on_the_grid() {
        let hot = blocks();
        assert_eq!(
            hot.range_of_key("1000000-1010000").unwrap(),
            KeyRange {
                start: 1_000_000,
                end: 1_010_000
            }
        );
        for bad in [
            "1000001-1010001",
            "1000000-1020000",
            "10-5",
            "x-y",
            "1000000",
        ] {
            assert!(hot.range_of_key(bad).is_err(), "{bad}");
        }
        let e = hot.range_of_key("1000005-1010005").unwrap_err().to_string();
        assert!(e.contains("\"1000000-1010000\""), "{e}");
        let offset = HotDatasetConfig {
            range_start: 5,
            ..blocks()
        };
        assert!(offset.range_of_key("10005-20005").is_ok());
        assert_eq!(offset.range_containing(4).start, 5 - 10_000);
        assert_eq!(offset.range_containing(10_004).start, 5);
    }

    #[test]
    fn invalid_fields_are_named() {
        let check = |hot: HotDatasetConfig, field: &str| {
            let e = hot.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        };
        blocks().validate().unwrap();
        check(
            HotDatasetConfig {
                table: "a.b.c".into(),
                ..blocks()
            },
            "table",
        );
        check(
            HotDatasetConfig {
                range_column: "".into(),
                ..blocks()
            },
            "range_column",
        );
        check(
            HotDatasetConfig {
                range_size: 0,
                ..blocks()
            },
            "range_size",
        );
        check(
            HotDatasetConfig {
                columns: vec!["hash".into()],
                ..blocks()
            },
            "columns",
        );
        check(
            HotDatasetConfig {
                tip_query: Some("delete from blocks".into()),
                ..blocks()
            },
            "tip_query",
        );
        check(
            HotDatasetConfig {
                output_prefix: Some("cold/{chain}".into()),
                ..HotDatasetConfig::new("x", "x")
            },
            "output_prefix",
        );
        check(
            HotDatasetConfig {
                compression: "brotli".into(),
                ..blocks()
            },
            "compression",
        );
    }

    #[test]
    fn derived_uuids_are_stable_per_name() {
        assert_eq!(
            derived_dataset_uuid("blocks"),
            derived_dataset_uuid("blocks")
        );
        assert_ne!(derived_dataset_uuid("blocks"), derived_dataset_uuid("logs"));
        assert_eq!(blocks().dataset_uuid(), derived_dataset_uuid("blocks"));
    }
}
