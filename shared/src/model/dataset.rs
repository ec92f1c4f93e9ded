//! One dataset of Parquet files: where its partitions are, how they are laid out, and how they
//! are compacted (the `[[dataset]]` table of the configuration file; see the README's
//! "Configuration reference").

use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::object::validate_prefix;
use crate::model::partition::{ColdRule, Granularity, PartitionTemplate};
use crate::support::units::{ByteSize, HumanDuration};

/// Dataset names: letters, digits, `-`, `_` and `.` (they appear in keys and state).
pub fn is_valid_dataset_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Concatenate small files into large ones, keeping row order per input.
    #[default]
    Concat,
    /// Globally sort each partition by `sort_key` (k-way merge), optionally adding `seq_column`.
    Sort,
}

/// Which healthy row groups a concat merge copies into its outputs as bytes instead of decoding
/// and encoding them again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RowGroupCopy {
    /// Healthy row groups are copied whatever their codec (fastest; an output may then mix
    /// codecs, which every reader handles).
    #[default]
    AnyCodec,
    /// Only healthy row groups compressed with the dataset's `compression` are copied; others
    /// are recompressed.
    SameCodec,
    /// Every row group is decoded and encoded again.
    Off,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub name: String,
    /// Prefix (directory) holding the dataset's partitions, e.g. `events/`.
    pub source_prefix: String,
    /// Directory layout of one partition below `source_prefix`, e.g. `dt={date}/hour={hour}`.
    pub partition_template: String,
    /// Span that must be over before a partition is compacted; defaults to the template's finest
    /// time field. May be coarser than the template (hourly partitions, compacted per day).
    #[serde(default)]
    pub granularity: Option<Granularity>,
    /// Extra wait after the span ends, for late writers (with `coldness = "quiet"`: how long a
    /// partition must have had no new file).
    #[serde(default = "default_grace")]
    pub grace: HumanDuration,
    /// How a partition is found cold: `time` (its span is over; templates with time fields),
    /// `quiet` (no new file for `grace`; the default without time fields) or `range`
    /// (`{start}-{end}` layouts: see `range_finality` and `range_tip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coldness: Option<ColdRule>,
    /// `coldness = "range"`: a range is cold once a later range of its family starts at least
    /// this far past its end (0: as soon as any later range exists).
    #[serde(default)]
    pub range_finality: u64,
    /// `coldness = "range"`: ranges ending at or below this value are cold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_tip: Option<i64>,
    #[serde(default = "default_target_file_size")]
    pub target_file_size: ByteSize,
    /// Compressed bytes per row group in outputs.
    #[serde(default = "default_row_group_size")]
    pub row_group_size: ByteSize,
    /// Upper bound on rows per row group.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// Input bytes per merge task (concat mode). Outputs roll at `target_file_size` inside a
    /// task, so only the last output of each task is smaller than the target; larger tasks mean
    /// fewer such remainders, smaller ones more parallel mergers.
    #[serde(default = "default_max_task_bytes")]
    pub max_task_bytes: ByteSize,
    /// Files smaller than this are compaction candidates.
    #[serde(default = "default_small_file_threshold")]
    pub small_file_threshold: ByteSize,
    /// A row group smaller than this (compressed; at most `row_group_size`), holding fewer than
    /// `row_group_rows` rows, is fragmented; a file larger than `small_file_threshold` with two
    /// or more such row groups is a candidate too (its last row group may be short without
    /// making it one).
    #[serde(default = "default_healthy_row_group_size")]
    pub healthy_row_group_size: ByteSize,
    /// Concat mode: `any-codec` copies healthy row groups (those of `healthy_row_group_size` or
    /// `row_group_rows` and more, with the output's schema) into outputs as bytes, `same-codec`
    /// only those compressed with `compression`, `off` re-encodes everything.
    #[serde(default)]
    pub row_group_copy: RowGroupCopy,
    /// A partition is compacted only when it has at least this many candidate files.
    #[serde(default = "default_min_file_count")]
    pub min_file_count: usize,
    #[serde(default)]
    pub mode: Mode,
    /// Sort key columns (sort mode), ascending, nulls last.
    #[serde(default)]
    pub sort_key: Vec<String>,
    /// Name of a column numbering rows 0..N-1 in sort order (sort mode only).
    #[serde(default)]
    pub seq_column: Option<String>,
    /// `zstd`, `zstd(LEVEL)`, `snappy`, `lz4`, `gzip`, `gzip(LEVEL)` or `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Write outputs under this prefix instead of next to the inputs (same partition layout).
    #[serde(default)]
    pub output_prefix: Option<String>,
    /// Only keys ending with this suffix are data files (empty: every non-hidden file).
    #[serde(default = "default_file_suffix")]
    pub file_suffix: String,
}

fn default_grace() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(15 * 60))
}
fn default_target_file_size() -> ByteSize {
    ByteSize::mib(128)
}
fn default_row_group_size() -> ByteSize {
    ByteSize::mib(64)
}
fn default_row_group_rows() -> usize {
    1_048_576
}
fn default_max_task_bytes() -> ByteSize {
    ByteSize::mib(1024)
}
fn default_small_file_threshold() -> ByteSize {
    ByteSize::mib(32)
}
fn default_healthy_row_group_size() -> ByteSize {
    ByteSize::mib(8)
}
fn default_min_file_count() -> usize {
    2
}
fn default_compression() -> String {
    "zstd".to_string()
}
fn default_file_suffix() -> String {
    ".parquet".to_string()
}

impl DatasetConfig {
    /// A dataset with every optional field at its default.
    pub fn new(name: &str, source_prefix: &str, partition_template: &str) -> Self {
        Self {
            name: name.to_string(),
            source_prefix: source_prefix.to_string(),
            partition_template: partition_template.to_string(),
            granularity: None,
            grace: default_grace(),
            coldness: None,
            range_finality: 0,
            range_tip: None,
            target_file_size: default_target_file_size(),
            row_group_size: default_row_group_size(),
            row_group_rows: default_row_group_rows(),
            max_task_bytes: default_max_task_bytes(),
            small_file_threshold: default_small_file_threshold(),
            healthy_row_group_size: default_healthy_row_group_size(),
            row_group_copy: RowGroupCopy::default(),
            min_file_count: default_min_file_count(),
            mode: Mode::default(),
            sort_key: Vec::new(),
            seq_column: None,
            compression: default_compression(),
            output_prefix: None,
            file_suffix: default_file_suffix(),
        }
    }

    pub fn template(&self) -> Result<PartitionTemplate> {
        PartitionTemplate::parse(&self.partition_template).map_err(|e| {
            self.field_error(
                "partition_template",
                format!("{e}; e.g. \"dt={{date}}/hour={{hour}}\""),
            )
        })
    }

    /// How partitions are found cold: the configured rule or the template's default.
    pub fn cold_rule(&self) -> Result<ColdRule> {
        Ok(match self.coldness {
            Some(rule) => rule,
            None => self.template()?.default_cold_rule(),
        })
    }

    /// The span used for coldness: the configured one or the template's finest.
    pub fn effective_granularity(&self) -> Result<Granularity> {
        let finest = self.template()?.granularity();
        Ok(self.granularity.unwrap_or(finest))
    }

    /// Prefix of the dataset's partitions, always ending with `/` (or empty for the root).
    pub fn source_dir(&self) -> String {
        crate::model::object::dir_prefix(&self.source_prefix)
    }

    /// Prefix under which outputs are written.
    pub fn output_dir(&self) -> String {
        crate::model::object::dir_prefix(
            self.output_prefix.as_deref().unwrap_or(&self.source_prefix),
        )
    }

    pub fn parquet_compression(&self) -> Result<Compression> {
        parse_compression(&self.compression).map_err(|m| self.field_error("compression", m))
    }

    fn field_error(&self, field: &str, message: impl Into<String>) -> Error {
        Error::config(format!("dataset {:?}: {field}", self.name), message)
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |field: &str, msg: String| Err(self.field_error(field, msg));
        if !is_valid_dataset_name(&self.name) {
            return fail(
                "name",
                "must be non-empty and use only letters, digits, '-', '_' and '.'".into(),
            );
        }
        validate_prefix(&self.source_prefix).or_else(|e| {
            fail(
                "source_prefix",
                format!("{e}; use a relative prefix such as \"events/\""),
            )
        })?;
        if let Some(out) = &self.output_prefix {
            validate_prefix(out)
                .or_else(|e| fail("output_prefix", format!("{e}; use a relative prefix")))?;
        }
        let template = self.template()?;
        match self.cold_rule()? {
            ColdRule::Time if !template.has_time() => {
                return fail(
                    "coldness",
                    "\"time\" needs a template with {date} or {year}; use \"quiet\" (no new file \
                     for `grace`) or, for {start}-{end} layouts, \"range\""
                        .into(),
                )
            }
            ColdRule::Range if !template.has_range() => {
                return fail(
                    "coldness",
                    "\"range\" needs a template with integer {start} and {end} fields, e.g. \
                     \"chain={chain}/range={start}-{end}\""
                        .into(),
                )
            }
            _ => {}
        }
        if let Some(g) = self.granularity {
            if g < template.granularity() {
                return fail(
                    "granularity",
                    format!(
                        "{g:?} is finer than the template's {:?}; a partition cannot be cold before its whole span is over",
                        template.granularity()
                    ),
                );
            }
        }
        if self.target_file_size.bytes() < 1 << 20 {
            return fail(
                "target_file_size",
                "must be at least 1MiB (128MiB to 256MiB is typical)".into(),
            );
        }
        if self.row_group_size.bytes() < 1 << 20 || self.row_group_size > self.target_file_size {
            return fail(
                "row_group_size",
                "must be at least 1MiB and at most target_file_size (64MiB is typical)".into(),
            );
        }
        if self.row_group_rows < 1024 {
            return fail("row_group_rows", "must be at least 1024".into());
        }
        // Concat tasks smaller than a target file would leave outputs that are compacted again;
        // in sort mode it is the size of a step of a sort in passes.
        if self.mode == Mode::Concat && self.max_task_bytes < self.target_file_size {
            return fail(
                "max_task_bytes",
                "must be at least target_file_size in concat mode (1GiB is typical)".into(),
            );
        }
        if self.max_task_bytes.bytes() < 64 << 10 {
            return fail(
                "max_task_bytes",
                "must be at least 64KiB (1GiB is typical)".into(),
            );
        }
        if self.small_file_threshold > self.target_file_size {
            return fail(
                "small_file_threshold",
                "must not exceed target_file_size, or outputs would be compacted again".into(),
            );
        }
        if self.min_file_count == 0 {
            return fail("min_file_count", "must be at least 1 (2 is typical)".into());
        }
        match self.mode {
            Mode::Sort if self.sort_key.is_empty() => {
                return fail("sort_key", "mode = \"sort\" needs at least one key column, e.g. sort_key = [\"ts\"]".into())
            }
            Mode::Concat if !self.sort_key.is_empty() || self.seq_column.is_some() => {
                return fail(
                    "mode",
                    "sort_key and seq_column only apply to mode = \"sort\"; set mode = \"sort\" or remove them".into(),
                )
            }
            _ => {}
        }
        if let Some(seq) = &self.seq_column {
            if seq.is_empty() || self.sort_key.contains(seq) {
                return fail(
                    "seq_column",
                    "must be a non-empty name that is not a sort key column".into(),
                );
            }
        }
        self.parquet_compression()?;
        Ok(())
    }
}

fn parse_compression(spec: &str) -> std::result::Result<Compression, String> {
    let spec = spec.trim().to_ascii_lowercase();
    let (name, level) = match spec.split_once('(') {
        Some((name, rest)) => {
            let level = rest
                .strip_suffix(')')
                .and_then(|l| l.trim().parse::<i32>().ok())
                .ok_or_else(|| format!("{spec:?} is not NAME(LEVEL)"))?;
            (name.trim().to_string(), Some(level))
        }
        None => (spec.clone(), None),
    };
    let bad_level = |e: parquet::errors::ParquetError| format!("{spec:?}: {e}");
    Ok(match (name.as_str(), level) {
        ("zstd", l) => Compression::ZSTD(ZstdLevel::try_new(l.unwrap_or(3)).map_err(bad_level)?),
        ("gzip", l) => Compression::GZIP(GzipLevel::try_new(l.unwrap_or(6) as u32).map_err(bad_level)?),
        ("snappy", None) => Compression::SNAPPY,
        ("lz4", None) => Compression::LZ4_RAW,
        ("none" | "uncompressed", None) => Compression::UNCOMPRESSED,
        _ => {
            return Err(format!(
                "{spec:?} is not supported; use zstd, zstd(1..22), snappy, lz4, gzip, gzip(0..9) or none"
            ))
        }
    })
}
