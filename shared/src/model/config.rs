//! The configuration file shared by the CLI and the Lambda functions (TOML). See the README's
//! "Configuration reference" for every field with its default.

use std::path::Path;

use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::hot::config::HotDatasetConfig;
use crate::model::object::validate_prefix;
use crate::model::partition::{Granularity, PartitionTemplate};
use crate::support::units::{ByteSize, HumanDuration};

/// Where staged outputs go when nothing else is configured; `_`-prefixed so that query engines
/// and the planner ignore it.
pub const DEFAULT_STAGING_PREFIX: &str = "_compactor/staging";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Prefix under which mergers stage outputs before the committer swaps them in.
    #[serde(default = "default_staging")]
    pub staging_prefix: String,
    /// Memory a merger may use; the engine sizes its buffers to stay under it.
    #[serde(default = "default_memory_budget")]
    pub memory_budget: ByteSize,
    /// How long a partition lease lasts before another planner may take it over.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: HumanDuration,
    #[serde(default, rename = "dataset")]
    pub datasets: Vec<DatasetConfig>,
    /// Postgres tables whose finalized ranges move to cold Parquet (see [`HotDatasetConfig`]).
    #[serde(default, rename = "hot_dataset", skip_serializing_if = "Vec::is_empty")]
    pub hot_datasets: Vec<HotDatasetConfig>,
}

/// A configured dataset of either kind.
#[derive(Clone, Copy, Debug)]
pub enum AnyDataset<'a> {
    Files(&'a DatasetConfig),
    Hot(&'a HotDatasetConfig),
}

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
    /// Extra wait after the span ends, for late writers.
    #[serde(default = "default_grace")]
    pub grace: HumanDuration,
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

fn default_staging() -> String {
    DEFAULT_STAGING_PREFIX.to_string()
}
fn default_memory_budget() -> ByteSize {
    ByteSize::mib(1024)
}
fn default_lease_ttl() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(15 * 60))
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
fn default_min_file_count() -> usize {
    2
}
fn default_compression() -> String {
    "zstd".to_string()
}
fn default_file_suffix() -> String {
    ".parquet".to_string()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            staging_prefix: default_staging(),
            memory_budget: default_memory_budget(),
            lease_ttl: default_lease_ttl(),
            datasets: Vec::new(),
            hot_datasets: Vec::new(),
        }
    }
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
            target_file_size: default_target_file_size(),
            row_group_size: default_row_group_size(),
            row_group_rows: default_row_group_rows(),
            max_task_bytes: default_max_task_bytes(),
            small_file_threshold: default_small_file_threshold(),
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
        if self.max_task_bytes < self.target_file_size {
            return fail(
                "max_task_bytes",
                "must be at least target_file_size (1GiB is typical)".into(),
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

impl Config {
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        let config: Config = toml::from_str(text).map_err(|e| Error::ConfigFile {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
            path: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::from_toml(&text, path)
    }

    pub fn validate(&self) -> Result<()> {
        validate_prefix(&self.staging_prefix).map_err(|e| {
            Error::config(
                "staging_prefix",
                format!("{e}; use a relative prefix such as \"_compactor/staging\""),
            )
        })?;
        if self.memory_budget.bytes() < 64 << 20 {
            return Err(Error::config("memory_budget", "must be at least 64MiB"));
        }
        if self.datasets.is_empty() && self.hot_datasets.is_empty() {
            return Err(Error::config(
                "dataset",
                "no dataset configured; add a [[dataset]] table with name, source_prefix and partition_template \
                 (or a [[hot_dataset]] with name and table)",
            ));
        }
        for ds in &self.datasets {
            ds.validate()?;
        }
        for hot in &self.hot_datasets {
            hot.validate()?;
        }
        self.check_cold_prefixes()?;
        let mut names = std::collections::HashSet::new();
        let all = self
            .datasets
            .iter()
            .map(|d| d.name.as_str())
            .chain(self.hot_datasets.iter().map(|h| h.name.as_str()));
        for name in all {
            if !names.insert(name) {
                return Err(Error::config(
                    format!("dataset {name:?}: name"),
                    "is used twice; dataset names must be unique across [[dataset]] and [[hot_dataset]]",
                ));
            }
        }
        Ok(())
    }

    /// A hot dataset's ranges live under a prefix of their own: nested in (or holding) a file
    /// dataset's source or output, or the staging area, cold files would be taken for data
    /// files to compact, or S3 events of them would reach the planner.
    fn check_cold_prefixes(&self) -> Result<()> {
        let nested =
            |a: &str, b: &str| a.is_empty() || b.is_empty() || a.starts_with(b) || b.starts_with(a);
        let staging = crate::model::object::dir_prefix(&self.staging_prefix);
        for (i, hot) in self.hot_datasets.iter().enumerate() {
            let cold = hot.output_dir();
            let mut others: Vec<(String, String)> =
                vec![("staging_prefix".into(), staging.clone())];
            for ds in &self.datasets {
                others.push((
                    format!("dataset {:?} source_prefix", ds.name),
                    ds.source_dir(),
                ));
                others.push((format!("dataset {:?} output", ds.name), ds.output_dir()));
            }
            for other in &self.hot_datasets[i + 1..] {
                others.push((
                    format!("hot_dataset {:?} output", other.name),
                    other.output_dir(),
                ));
            }
            if let Some((what, prefix)) = others.iter().find(|(_, p)| nested(&cold, p)) {
                return Err(Error::config(
                    format!("hot_dataset {:?}: output_prefix", hot.name),
                    format!(
                        "{cold:?} and the {what} {prefix:?} contain one another; give the cold ranges a prefix of their own"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The dataset of either kind named `name`.
    pub fn find(&self, name: &str) -> Result<AnyDataset<'_>> {
        if let Some(hot) = self.hot_datasets.iter().find(|h| h.name == name) {
            return Ok(AnyDataset::Hot(hot));
        }
        self.dataset(name).map(AnyDataset::Files).map_err(|_| {
            let known: Vec<&str> = self
                .datasets
                .iter()
                .map(|d| d.name.as_str())
                .chain(self.hot_datasets.iter().map(|h| h.name.as_str()))
                .collect();
            Error::config(
                "dataset",
                format!("no dataset named {name:?}; configured: {known:?}"),
            )
        })
    }

    pub fn dataset(&self, name: &str) -> Result<&DatasetConfig> {
        self.datasets
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.datasets.iter().map(|d| d.name.as_str()).collect();
                Error::config(
                    "dataset",
                    format!("no dataset named {name:?}; configured: {known:?}"),
                )
            })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::from_toml(text, Path::new("test.toml"))
    }

    const MINIMAL: &str = r#"
        [[dataset]]
        name = "events"
        source_prefix = "events/"
        partition_template = "dt={date}/hour={hour}"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        let d = &c.datasets[0];
        assert_eq!(d.target_file_size, ByteSize::mib(128));
        assert_eq!(d.mode, Mode::Concat);
        assert_eq!(d.min_file_count, 2);
        assert!(matches!(
            d.parquet_compression().unwrap(),
            Compression::ZSTD(_)
        ));
        assert_eq!(c.staging_prefix, DEFAULT_STAGING_PREFIX);
        assert_eq!(d.effective_granularity().unwrap(), Granularity::Hour);
        assert_eq!(d.output_dir(), "events/");
    }

    #[test]
    fn full_config_round_trips() {
        let text = r#"
            staging_prefix = "_stage"
            memory_budget = "512MiB"
            lease_ttl = "5m"
            [[dataset]]
            name = "ticks"
            source_prefix = "raw/ticks"
            partition_template = "date={date}"
            granularity = "day"
            grace = "2h"
            target_file_size = "256MiB"
            row_group_size = "128MiB"
            row_group_rows = 500000
            small_file_threshold = "16MiB"
            max_task_bytes = "2GiB"
            min_file_count = 5
            mode = "sort"
            sort_key = ["ts_event", "symbol"]
            seq_column = "seq"
            compression = "zstd(9)"
            output_prefix = "compact/ticks"
            file_suffix = ""
        "#;
        let c = parse(text).unwrap();
        assert_eq!(c.memory_budget, ByteSize::mib(512));
        let d = c.dataset("ticks").unwrap();
        assert_eq!(d.sort_key, vec!["ts_event", "symbol"]);
        assert_eq!(d.output_dir(), "compact/ticks/");
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(again, c);
    }

    fn error_of(extra: &str) -> String {
        parse(&format!("{MINIMAL}{extra}")).unwrap_err().to_string()
    }

    #[test]
    fn hot_datasets_parse_alone_or_beside_file_datasets() {
        let hot_only = r#"
            [[hot_dataset]]
            name = "blocks"
            table = "public.blocks"
            chain_id = 10143
            range_size = 10000
            finality_depth_blocks = 100
            chunk_size = 10000
            delete_after_compact = true
        "#;
        let c = parse(hot_only).unwrap();
        let hot = &c.hot_datasets[0];
        assert_eq!(hot.range_column, "block_number");
        assert_eq!(hot.output_dir(), "cold/10143/blocks/");
        assert!(matches!(c.find("blocks").unwrap(), AnyDataset::Hot(_)));
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
        let both = format!("{MINIMAL}{hot_only}");
        let c = parse(&both).unwrap();
        assert!(matches!(c.find("events").unwrap(), AnyDataset::Files(_)));
        let e = c.find("nope").unwrap_err().to_string();
        assert!(e.contains("blocks") && e.contains("events"), "{e}");
        let clash = format!("{MINIMAL}{}", hot_only.replace("\"blocks\"", "\"events\""));
        let e = parse(&clash).unwrap_err().to_string();
        assert!(e.contains("used twice"), "{e}");
        let e = parse(&hot_only.replace("chunk_size = 10000", "chunk_size = 0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("chunk_size"), "{e}");
        let e = parse(&format!("{hot_only}colour = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let nested = format!(
            "{}{hot_only}output_prefix = \"events/cold\"\n",
            MINIMAL.replace("events/", "events")
        );
        let e = parse(&nested).unwrap_err().to_string();
        assert!(
            e.contains("output_prefix") && e.contains("source_prefix"),
            "{e}"
        );
    }

    #[test]
    fn invalid_fields_are_named_with_a_fix() {
        let e = error_of("mode = \"sort\"\n");
        assert!(e.contains("sort_key") && e.contains("e.g."), "{e}");
        let e = error_of("compression = \"brotli\"\n");
        assert!(e.contains("compression") && e.contains("zstd"), "{e}");
        let e = error_of("target_file_size = \"12 parsecs\"\n");
        assert!(
            e.contains("target_file_size") || e.contains("parsecs"),
            "{e}"
        );
        let e = error_of("small_file_threshold = \"1GiB\"\n");
        assert!(e.contains("small_file_threshold"), "{e}");
        let e = error_of("colour = \"blue\"\n");
        assert!(e.contains("colour"), "{e}");
        let e = error_of("granularity = \"minute\"\n");
        assert!(e.contains("granularity"), "{e}");
        let e = error_of("seq_column = \"seq\"\n");
        assert!(e.contains("mode"), "{e}");
        let e = parse(&MINIMAL.replace("events/", "../etc"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("source_prefix"), "{e}");
        let e = parse(&MINIMAL.replace("dt={date}/hour={hour}", "region={region}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("partition_template") && e.contains("time field"),
            "{e}"
        );
        let e = parse("").unwrap_err().to_string();
        assert!(e.contains("[[dataset]]"), "{e}");
    }
}
