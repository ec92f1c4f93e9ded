//! The configuration file shared by the CLI and the Lambda functions (TOML). See the README's
//! "Configuration reference" for every field with its default.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::dataset::DatasetConfig;
use crate::model::hot::config::HotDatasetConfig;
use crate::model::object::validate_prefix;
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
    /// Input bytes a second one merge decodes and encodes, for the plan's estimates of
    /// partitions whose merges were not measured yet (and, on Lambda, for sizing tasks to the
    /// merger's time limit). Measured figures replace it once a partition was compacted.
    #[serde(default = "default_merge_throughput")]
    pub merge_throughput: ByteSize,
    /// Where the planner's `report` event writes the health report (`latest.json`,
    /// `latest.html` and a dated copy of each).
    #[serde(default = "default_report_prefix")]
    pub report_prefix: String,
    /// The window of time partitions the health report and the sweep's health metrics cover.
    #[serde(default = "default_report_since")]
    pub report_since: HumanDuration,
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

fn default_staging() -> String {
    DEFAULT_STAGING_PREFIX.to_string()
}
fn default_memory_budget() -> ByteSize {
    ByteSize::mib(1024)
}
/// Conservative: a merger of 1 vCPU encodes zstd at several times this.
pub const DEFAULT_MERGE_THROUGHPUT: ByteSize = ByteSize(20 * 1024 * 1024);
fn default_merge_throughput() -> ByteSize {
    DEFAULT_MERGE_THROUGHPUT
}
fn default_report_prefix() -> String {
    "_compactor/reports".to_string()
}
fn default_report_since() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(14 * 24 * 3600))
}
fn default_lease_ttl() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(15 * 60))
}
impl Default for Config {
    fn default() -> Self {
        Self {
            staging_prefix: default_staging(),
            memory_budget: default_memory_budget(),
            lease_ttl: default_lease_ttl(),
            merge_throughput: default_merge_throughput(),
            report_prefix: default_report_prefix(),
            report_since: default_report_since(),
            datasets: Vec::new(),
            hot_datasets: Vec::new(),
        }
    }
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
        validate_prefix(&self.report_prefix).map_err(|e| {
            Error::config(
                "report_prefix",
                format!("{e}; use a relative prefix such as \"_compactor/reports\""),
            )
        })?;
        if self.memory_budget.bytes() < crate::model::memory::MIN_BUDGET {
            return Err(Error::config(
                "memory_budget",
                format!(
                    "must be at least {} (the process itself needs {})",
                    crate::support::units::human_bytes(crate::model::memory::MIN_BUDGET),
                    crate::support::units::human_bytes(crate::model::memory::RESERVE)
                ),
            ));
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
    use crate::model::dataset::Mode;
    use crate::model::partition::Granularity;
    use parquet::basic::Compression;

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
        // A template without time fields is accepted, but not with the time rule.
        assert!(parse(&MINIMAL.replace("dt={date}/hour={hour}", "region={region}")).is_ok());
        let e = parse(&format!(
            "{}coldness = \"time\"\n",
            MINIMAL.replace("dt={date}/hour={hour}", "region={region}")
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("coldness") && e.contains("quiet"), "{e}");
        let e = parse(&format!(
            "{}coldness = \"range\"\n",
            MINIMAL.replace("dt={date}/hour={hour}", "region={region}")
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("coldness") && e.contains("{start}"), "{e}");
        let e = parse(&MINIMAL.replace("dt={date}/hour={hour}", "region={region}/h={hour}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("partition_template") && e.contains("{year}"),
            "{e}"
        );
        let e = parse("").unwrap_err().to_string();
        assert!(e.contains("[[dataset]]"), "{e}");
    }
}
