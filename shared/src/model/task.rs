//! Tasks (one unit of work for a merger, of one [`TaskKind`]) and the staging layout they live in:
//!
//! ```text
//! <staging>/<dataset>/<partition>/<task_id>/_task.json        the task spec (planner)
//! <staging>/<dataset>/<partition>/<task_id>/a<N>-<i>.parquet  outputs of attempt N (merger)
//! <staging>/<dataset>/<partition>/<task_id>/_manifest.json    what the outputs hold (merger)
//! <staging>/<dataset>/<partition>/<task_id>/_SUCCESS          merge finished (merger)
//! <staging>/<dataset>/<partition>/<task_id>/_DECISION         commit or abandon (committer/planner)
//! ```

use serde::de::Deserializer;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::model::dataset::DatasetConfig;
use crate::model::hot::export::ExportSpec;
use crate::model::object::{dir_prefix, join_key, ObjectMeta};
use crate::model::repartition::RepartitionWrite;
use crate::model::rewrite::RewriteSpec;
use crate::model::state::PartitionId;

pub const TASK_SPEC: &str = "_task.json";
pub const MANIFEST: &str = "_manifest.json";
pub const SUCCESS: &str = "_SUCCESS";
pub const DECISION: &str = "_DECISION";
/// The partition-level manifest of live files, next to the outputs.
pub const PARTITION_MANIFEST: &str = "_compactor_manifest.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub task_id: String,
    pub partition: PartitionId,
    /// Generation of the lease the task was planned under; the committer fences on it.
    pub generation: u64,
    pub dataset: DatasetConfig,
    pub staging_prefix: String,
    pub memory_budget: u64,
    /// For [`TaskKind::MergeFiles`]: the files to merge. For [`TaskKind::ExportRange`]: the
    /// range's current files, which the new ones replace.
    pub inputs: Vec<ObjectMeta>,
    pub created_at_ms: i64,
    /// What kind of work this is.
    #[serde(flatten)]
    pub kind: TaskKind,
    /// A random token in the task's output names: they are unique without the state store
    /// (whose generations restart when it is lost), so no output can land on another's key.
    #[serde(default)]
    pub nonce: String,
    /// The owner of the lease the task was planned under, so whoever runs it can renew it.
    #[serde(default)]
    pub lease_owner: String,
}

/// What kind of work a task is. The merger runs one module per kind
/// ([`crate::services::merger`]); every kind stages its outputs with the same writer and is
/// committed by the same committer. To add a kind: a variant here (with the data it needs), a
/// module in the merger, and the planner code that plans it (see docs/architecture.md).
///
/// In the task's JSON a kind is the key of its data, next to the task's other fields (no key:
/// a file merge), so tasks staged by earlier versions read back unchanged.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum TaskKind {
    /// Merge the input files into outputs of about the target size (concat or sort mode).
    #[default]
    MergeFiles,
    /// Export a hot dataset's range from Postgres into a new cold copy of the range.
    ExportRange(Box<ExportSpec>),
    /// One step of a partition sorted in passes ([`crate::model::passes`]): staged in a
    /// directory of its own inside its partition task's, never committed on its own.
    SortStep(Box<SortStep>),
    /// Delete or update the rows matching a predicate in the input files, each rewritten into
    /// its own output ([`crate::model::rewrite`]).
    Rewrite(Box<RewriteSpec>),
    /// Split a group of a repartition's source files into pieces by target partition
    /// ([`crate::model::repartition`]): recorded once, never committed (the pieces are the
    /// inputs of the destination's compaction).
    RepartitionWrite(Box<RepartitionWrite>),
}

/// A step of a sort in passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SortStep {
    /// The step's directory in the task's: `run-0001`, `merge-0001`.
    pub name: String,
    /// A run step writes row groups of at most this many bytes, so that a merge step holds
    /// one of every run at once within its budget.
    #[serde(default)]
    pub row_group_bytes: u64,
    /// A merge step: its key range (see [`crate::model::passes::RangePlan`]); none: a run step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeRange>,
}

/// The key range `[lower, upper)` of a merge step (no bound: open on that side), each bound one
/// key as Arrow IPC in base64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRange {
    pub index: usize,
    pub lower: Option<String>,
    pub upper: Option<String>,
}

impl TaskKind {
    /// The kind's name, for logs and messages.
    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::MergeFiles => "merge_files",
            TaskKind::ExportRange(_) => "export_range",
            TaskKind::SortStep(_) => "sort_step",
            TaskKind::Rewrite(_) => "rewrite",
            TaskKind::RepartitionWrite(_) => "repartition_write",
        }
    }

    /// The step of a sort in passes this task is, if it is one.
    pub fn sort_step(&self) -> Option<&SortStep> {
        match self {
            TaskKind::SortStep(step) => Some(step),
            _ => None,
        }
    }
}

impl Serialize for TaskKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self {
            TaskKind::MergeFiles => {}
            TaskKind::ExportRange(spec) => map.serialize_entry("export", spec.as_ref())?,
            TaskKind::SortStep(step) => map.serialize_entry("sort_step", step.as_ref())?,
            TaskKind::Rewrite(spec) => map.serialize_entry("rewrite", spec.as_ref())?,
            TaskKind::RepartitionWrite(w) => {
                map.serialize_entry("repartition_write", w.as_ref())?
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TaskKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Keys {
            #[serde(default)]
            export: Option<ExportSpec>,
            #[serde(default)]
            sort_step: Option<SortStep>,
            #[serde(default)]
            rewrite: Option<RewriteSpec>,
            #[serde(default)]
            repartition_write: Option<RepartitionWrite>,
        }
        let keys = Keys::deserialize(deserializer)?;
        Ok(
            match (
                keys.export,
                keys.sort_step,
                keys.rewrite,
                keys.repartition_write,
            ) {
                (Some(spec), ..) => TaskKind::ExportRange(Box::new(spec)),
                (None, Some(step), ..) => TaskKind::SortStep(Box::new(step)),
                (None, None, Some(spec), _) => TaskKind::Rewrite(Box::new(spec)),
                (None, None, None, Some(w)) => TaskKind::RepartitionWrite(Box::new(w)),
                (None, None, None, None) => TaskKind::MergeFiles,
            },
        )
    }
}

impl Task {
    /// The lease the task was planned under (its expiry is the state store's to say).
    pub fn lease(&self) -> Option<crate::model::state::Lease> {
        (!self.lease_owner.is_empty()).then(|| crate::model::state::Lease {
            owner: self.lease_owner.clone(),
            generation: self.generation,
            expires_at_ms: 0,
        })
    }
}

/// A new random token for [`Task::nonce`].
pub fn new_nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

pub fn task_id(generation: u64, index: usize) -> String {
    format!("g{generation:06}-t{index:04}")
}

/// The lease generation a task id was planned under.
pub fn generation_of(task_id: &str) -> Option<u64> {
    task_id.strip_prefix('g')?.split('-').next()?.parse().ok()
}

/// Is `name` a task id as [`task_id`] writes them (`g<6 digits>-t<4 digits>`)?
pub fn is_task_id(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 13
        && b[0] == b'g'
        && b[7] == b'-'
        && b[8] == b't'
        && b[1..7].iter().chain(&b[9..]).all(u8::is_ascii_digit)
}

/// `(dataset, partition, task id)` of a task directory `<staging>/<dataset>/<partition>/<task>/`
/// (the partition may be empty: a dataset without directory levels).
pub fn parse_task_dir<'a>(
    staging_prefix: &str,
    dir: &'a str,
) -> Option<(&'a str, &'a str, &'a str)> {
    let rest = dir
        .strip_prefix(dir_prefix(staging_prefix).as_str())?
        .trim_end_matches('/');
    let (dataset, rest) = rest.split_once('/')?;
    let (partition, task) = rest.rsplit_once('/').unwrap_or(("", rest));
    is_task_id(task).then_some((dataset, partition, task))
}

/// `<staging>/<dataset>/<partition>/`
pub fn partition_staging_dir(staging_prefix: &str, partition: &PartitionId) -> String {
    dir_prefix(&join_key(&[
        staging_prefix,
        &partition.dataset,
        &partition.partition,
    ]))
}

/// `<staging>/<dataset>/` — what a recovery sweep lists.
pub fn dataset_staging_dir(staging_prefix: &str, dataset: &str) -> String {
    dir_prefix(&join_key(&[staging_prefix, dataset]))
}

impl Task {
    pub fn input_bytes(&self) -> u64 {
        self.inputs.iter().map(|i| i.size).sum()
    }

    /// `<staging>/<dataset>/<partition>/<task_id>/` (a sort step: `<task_id>/<step>/`)
    pub fn task_dir(&self) -> String {
        let dir = format!(
            "{}{}/",
            partition_staging_dir(&self.staging_prefix, &self.partition),
            self.task_id
        );
        match self.kind.sort_step() {
            Some(step) => format!("{dir}{}/", step.name),
            None => dir,
        }
    }

    /// This task's step `step` of a sort in passes: the same task, staged in the step's own
    /// directory, over `inputs`.
    pub fn step(&self, step: SortStep, inputs: Vec<ObjectMeta>) -> Task {
        Task {
            inputs,
            kind: TaskKind::SortStep(Box::new(step)),
            ..self.clone()
        }
    }

    pub fn staging_key(&self, name: &str) -> String {
        format!("{}{name}", self.task_dir())
    }

    pub fn staging_output_key(&self, attempt: u32, index: usize) -> String {
        self.staging_key(&format!("a{attempt}-{index:05}.parquet"))
    }

    /// Final location of output `index`: deterministic for the task, so a replayed commit
    /// finds it, and unique across tasks and state stores thanks to the nonce.
    pub fn final_output_key(&self, index: usize) -> String {
        let dir = partition_output_dir(&self.dataset, &self.partition.partition);
        if self.nonce.is_empty() {
            format!("{dir}compacted-{}-{index:05}.parquet", self.task_id)
        } else {
            format!(
                "{dir}compacted-{}-{}-{index:05}.parquet",
                self.task_id, self.nonce
            )
        }
    }
}

/// `<output prefix>/<partition>/`
pub fn partition_output_dir(dataset: &DatasetConfig, partition: &str) -> String {
    dir_prefix(&join_key(&[&dataset.output_dir(), partition]))
}

/// `<source prefix>/<partition>/`
pub fn partition_source_dir(dataset: &DatasetConfig, partition: &str) -> String {
    dir_prefix(&join_key(&[&dataset.source_dir(), partition]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        Task {
            task_id: task_id(3, 1),
            partition: PartitionId::new("events", "dt=2024-01-01/hour=05"),
            generation: 3,
            dataset: DatasetConfig::new("events", "raw/events", "dt={date}/hour={hour}"),
            staging_prefix: "_compactor/staging".into(),
            memory_budget: 1 << 30,
            inputs: vec![],
            created_at_ms: 0,
            kind: TaskKind::MergeFiles,
            nonce: String::new(),
            lease_owner: String::new(),
        }
    }

    #[test]
    fn task_directories_are_parsed_with_or_without_a_partition() {
        let staging = "_compactor/staging";
        assert_eq!(
            parse_task_dir(
                staging,
                "_compactor/staging/ev/dt=2024-01-01/hour=05/g000003-t0001/"
            ),
            Some(("ev", "dt=2024-01-01/hour=05", "g000003-t0001"))
        );
        assert_eq!(
            parse_task_dir(staging, "_compactor/staging/ev/g000003-t0001/"),
            Some(("ev", "", "g000003-t0001"))
        );
        assert_eq!(
            parse_task_dir(staging, "_compactor/staging/ev/notatask/"),
            None
        );
        assert_eq!(parse_task_dir(staging, "elsewhere/ev/g000003-t0001/"), None);
    }

    #[test]
    fn task_ids_name_their_generation() {
        assert_eq!(generation_of("g000012-t0003"), Some(12));
        assert_eq!(generation_of("junk"), None);
        assert!(is_task_id("g000012-t0003"));
        assert!(!is_task_id("g12-t3"));
    }

    #[test]
    fn layout_is_deterministic() {
        let t = task();
        assert_eq!(t.task_id, "g000003-t0001");
        assert_eq!(
            t.task_dir(),
            "_compactor/staging/events/dt=2024-01-01/hour=05/g000003-t0001/"
        );
        assert_eq!(
            t.staging_output_key(2, 7),
            "_compactor/staging/events/dt=2024-01-01/hour=05/g000003-t0001/a2-00007.parquet"
        );
        assert_eq!(
            t.final_output_key(0),
            "raw/events/dt=2024-01-01/hour=05/compacted-g000003-t0001-00000.parquet"
        );
        let with_output = Task {
            dataset: DatasetConfig {
                output_prefix: Some("cold/events/".into()),
                ..t.dataset.clone()
            },
            ..t
        };
        assert!(with_output
            .final_output_key(0)
            .starts_with("cold/events/dt=2024-01-01/hour=05/"));
    }

    #[test]
    fn the_kind_is_recorded_beside_the_task_and_earlier_tasks_read_back() {
        use crate::model::hot::config::HotDatasetConfig;
        use crate::model::hot::range::KeyRange;
        let merge = task();
        let json = serde_json::to_value(&merge).unwrap();
        assert!(json.get("export").is_none(), "{json}");
        assert_eq!(serde_json::from_value::<Task>(json).unwrap(), merge);

        let export = Task {
            kind: TaskKind::ExportRange(Box::new(ExportSpec {
                hot: HotDatasetConfig::new("blocks", "public.blocks"),
                range: KeyRange { start: 0, end: 100 },
                legacy_moved: false,
            })),
            ..task()
        };
        let json = serde_json::to_value(&export).unwrap();
        assert_eq!(json["export"]["range"]["end"], 100, "{json}");
        let back: Task = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, export);
        assert_eq!(back.kind.name(), "export_range");

        // A task staged before kinds existed: the same JSON, so it reads back as it was meant.
        let mut earlier = json;
        earlier.as_object_mut().unwrap().remove("nonce");
        let back: Task = serde_json::from_value(earlier).unwrap();
        assert!(matches!(back.kind, TaskKind::ExportRange(_)));
    }
}
