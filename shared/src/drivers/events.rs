//! The events the Lambda functions accept, parsed and routed without I/O.
//!
//! The planner takes S3 notifications (`Records[]`), EventBridge "Object Created" events from
//! S3, EventBridge scheduled events, and manual commands (`{"command": ...}`). The committer
//! takes the same two S3 shapes for `_SUCCESS` markers, or `{"task_dir": ...}`. The merger takes
//! a task inline or `{"task_key": ...}`. Anything else is a [`Error::BadEvent`] that says which
//! shapes are accepted; nothing is changed for it.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::s3::S3Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::dataset::DatasetConfig;
use crate::model::object::{dir_prefix, file_name, validate_key};
use crate::model::task::{Task, PARTITION_MANIFEST, SUCCESS};

/// An object S3 reported as created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedObject {
    pub bucket: String,
    /// The key, URL-decoded (S3 notifications encode it).
    pub key: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum PlannerCommand {
    /// Plan one partition now (for a hot dataset: export one range, `"start-end"`).
    Plan {
        dataset: String,
        #[serde(alias = "partition_key")]
        partition: String,
        #[serde(default)]
        dry_run: bool,
        #[serde(default)]
        force: bool,
    },
    /// Walk one dataset (or all) for partitions to compact, as the schedule does.
    Sweep {
        #[serde(default)]
        dataset: Option<String>,
        #[serde(default)]
        dry_run: bool,
        #[serde(default)]
        force: bool,
    },
    /// Plan every partition of a date (`date`) or of a date range (`from`..=`to`).
    Backfill {
        dataset: String,
        #[serde(default)]
        date: Option<String>,
        #[serde(default)]
        from: Option<String>,
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        dry_run: bool,
        #[serde(default)]
        force: bool,
    },
    /// Delete the rows of a file dataset matching a SQL predicate (`"where"`), as
    /// `compactor delete`: every partition planned before any task is sent.
    Delete {
        dataset: String,
        #[serde(rename = "where")]
        predicate: String,
        #[serde(default)]
        backup: Option<String>,
        #[serde(default)]
        dry_run: bool,
    },
    /// Set columns (`"set": ["col = expression", ...]`) of the rows matching `"where"`, as
    /// `compactor update`.
    Update {
        dataset: String,
        #[serde(rename = "where")]
        predicate: String,
        set: Vec<String>,
        #[serde(default)]
        backup: Option<String>,
        #[serde(default)]
        dry_run: bool,
    },
    /// Upsert the rows of the Parquet file(s) at `"from"` (a key, or a prefix, in the data's
    /// bucket) by `"key"`, as `compactor upsert`.
    Upsert {
        dataset: String,
        from: String,
        key: Vec<String>,
        #[serde(default)]
        update_cols: Vec<String>,
        #[serde(default)]
        backup: Option<String>,
        #[serde(default)]
        dry_run: bool,
    },
    /// Copy the data files under `"from"` (a prefix in the data's bucket) into the file
    /// dataset `"dataset"` (its template and sizes), as `compactor repartition`. Each invocation
    /// advances it as far as it can without waiting: write tasks sent to mergers, then the
    /// destination's compaction, then validation and (with `delete_source`) the source's
    /// deletion; the response's `phase` and `waiting` say where it stands. Invoke it again
    /// until `phase` is `validated` (or `source_deleted`).
    Repartition {
        dataset: String,
        from: String,
        #[serde(default)]
        select: Option<String>,
        #[serde(default)]
        delete_source: bool,
        #[serde(default)]
        backup: Option<String>,
        #[serde(default)]
        dry_run: bool,
    },
}

/// `{"report": {"since": "14d", "dataset": ["events"]}}`: both optional (default: the
/// configured `report_since`, every dataset).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub dataset: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlannerEvent {
    ObjectsCreated(Vec<CreatedObject>),
    Scheduled,
    Command(PlannerCommand),
    /// Write the lake health report (JSON and HTML) under `report_prefix`.
    Report(ReportRequest),
    /// Events that need no work (S3's `s3:TestEvent`, removals): acknowledged, not an error.
    Ignored(String),
}

const ACCEPTED_PLANNER: &str =
    "expected an S3 notification ({\"Records\": [...]}), an EventBridge \
    event from S3 (\"detail-type\": \"Object Created\") or the scheduler (\"Scheduled Event\"), or \
    a command ({\"command\": \"plan\" | \"sweep\" | \"backfill\" | \"delete\" | \"update\" | \"upsert\" | \"repartition\", ...}) or a report \
    ({\"report\": {...}}; see events/)";

/// The `detail` of an EventBridge "Object Created" event from S3.
#[derive(Debug, Deserialize, Serialize)]
struct S3Detail {
    bucket: S3DetailBucket,
    object: S3DetailObject,
}

#[derive(Debug, Deserialize, Serialize)]
struct S3DetailBucket {
    name: String,
}

#[derive(Debug, Deserialize, Serialize)]
struct S3DetailObject {
    key: String,
    #[serde(default)]
    size: Option<u64>,
}

/// S3 notification keys are form-URL-encoded (`+` is a space; moto also encodes `/`).
pub fn decode_s3_key(raw: &str) -> String {
    url::form_urlencoded::parse(format!("k={raw}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| raw.to_string())
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::BadEvent(what.to_string())
}

/// Objects of an S3 notification or an EventBridge S3 event; `Ok(None)` if `value` is neither.
fn created_objects(
    value: &Value,
) -> Result<Option<std::result::Result<Vec<CreatedObject>, String>>> {
    if value.get("Records").is_some() {
        let event: S3Event = serde_json::from_value(value.clone())
            .map_err(|e| bad(format!("malformed S3 notification: {e}")))?;
        let mut objects = Vec::new();
        let mut ignored = Vec::new();
        for record in event.records {
            let name = record.event_name.clone().unwrap_or_default();
            if record.event_source.as_deref() != Some("aws:s3") {
                return Err(bad(format!(
                    "record from {:?}, not aws:s3",
                    record.event_source.unwrap_or_default()
                )));
            }
            if !name.starts_with("ObjectCreated:") {
                ignored.push(name);
                continue;
            }
            let bucket = record.s3.bucket.name.clone().unwrap_or_default();
            let key = record.s3.object.key.clone().unwrap_or_default();
            if bucket.is_empty() || key.is_empty() {
                return Err(bad("S3 record without bucket name or object key"));
            }
            objects.push(CreatedObject {
                bucket,
                key: decode_s3_key(&key),
                size: record.s3.object.size.unwrap_or(0).max(0) as u64,
            });
        }
        if objects.is_empty() {
            return Ok(Some(Err(format!("no ObjectCreated records ({ignored:?})"))));
        }
        return Ok(Some(Ok(objects)));
    }
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Some(Err("S3 test event".to_string())));
    }
    if value.get("detail-type").and_then(Value::as_str) == Some("Object Created") {
        let event: EventBridgeEvent<S3Detail> = serde_json::from_value(value.clone())
            .map_err(|e| bad(format!("malformed EventBridge Object Created event: {e}")))?;
        if event.source != "aws.s3" {
            return Err(bad(format!(
                "Object Created event from {:?}, not aws.s3",
                event.source
            )));
        }
        return Ok(Some(Ok(vec![CreatedObject {
            bucket: event.detail.bucket.name,
            key: event.detail.object.key,
            size: event.detail.object.size.unwrap_or(0),
        }])));
    }
    Ok(None)
}

/// Parses any event the planner accepts.
pub fn parse_planner_event(value: &Value) -> Result<PlannerEvent> {
    if let Some(objects) = created_objects(value)? {
        return Ok(match objects {
            Ok(objects) => PlannerEvent::ObjectsCreated(objects),
            Err(why) => PlannerEvent::Ignored(why),
        });
    }
    if let Some(detail_type) = value.get("detail-type").and_then(Value::as_str) {
        let source = value.get("source").and_then(Value::as_str).unwrap_or("");
        return match (detail_type, source) {
            ("Scheduled Event", "aws.events" | "aws.scheduler") => Ok(PlannerEvent::Scheduled),
            _ => Err(bad(format!(
                "EventBridge event {detail_type:?} from {source:?} is not handled; {ACCEPTED_PLANNER}"
            ))),
        };
    }
    if let Some(request) = value.get("report") {
        let request: ReportRequest = serde_json::from_value(request.clone())
            .map_err(|e| bad(format!("report: {e}; see events/planner-report.json")))?;
        if let Some(since) = &request.since {
            humantime::parse_duration(since)
                .map_err(|e| bad(format!("report since {since:?}: {e}; write e.g. \"14d\"")))?;
        }
        return Ok(PlannerEvent::Report(request));
    }
    if value.get("command").is_some() {
        let command: PlannerCommand = serde_json::from_value(value.clone())
            .map_err(|e| bad(format!("command: {e}; see events/planner-*.json")))?;
        check_command(&command)?;
        return Ok(PlannerEvent::Command(command));
    }
    Err(bad(format!("unknown event shape; {ACCEPTED_PLANNER}")))
}

/// The keys a maintenance command names must be plain keys (no `..`, no leading `/`).
fn check_command(command: &PlannerCommand) -> Result<()> {
    let (backup, from) = match command {
        PlannerCommand::Delete { backup, .. } | PlannerCommand::Update { backup, .. } => {
            (backup, None)
        }
        PlannerCommand::Upsert { backup, from, .. } => (backup, Some(from)),
        _ => return Ok(()),
    };
    for (what, key) in [("backup", backup.as_ref()), ("from", from)] {
        if let Some(key) = key {
            validate_key(key).map_err(|e| bad(format!("{what} {key:?}: {e}")))?;
        }
    }
    Ok(())
}

/// Where a created key belongs, from the planner's point of view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRoute {
    /// A data file of a dataset's partition: count it, maybe plan the partition.
    Partition { dataset: String, partition: String },
    /// Written by the product itself (staging, outputs, manifests): never starts work, so an
    /// in-place layout cannot trigger itself.
    Own(&'static str),
    /// Not under any configured dataset, or not a data file.
    Foreign(String),
}

/// Routes a created key to its dataset and partition.
pub fn route_key(config: &Config, key: &str) -> KeyRoute {
    if let Err(e) = validate_key(key) {
        return KeyRoute::Foreign(e.to_string());
    }
    let staging = dir_prefix(&config.staging_prefix);
    if !staging.is_empty() && key.starts_with(&staging) {
        return KeyRoute::Own("staging");
    }
    let name = file_name(key);
    if name == PARTITION_MANIFEST {
        return KeyRoute::Own("partition manifest");
    }
    if config
        .hot_datasets
        .iter()
        .any(|hot| is_under(&hot.output_dir(), key))
    {
        return KeyRoute::Own("cold range of a hot dataset");
    }
    for dataset in &config.datasets {
        if let Some(partition) = partition_of(dataset, key) {
            if name.starts_with("compacted-") && is_under(&dataset.output_dir(), key) {
                return KeyRoute::Own("compacted output");
            }
            if !crate::model::plan::is_data_file(key, &dataset.file_suffix) {
                return KeyRoute::Foreign(format!(
                    "{name:?} is not a data file of dataset {} (suffix {:?}, no _ or . prefix)",
                    dataset.name, dataset.file_suffix
                ));
            }
            return KeyRoute::Partition {
                dataset: dataset.name.clone(),
                partition,
            };
        }
        if name.starts_with("compacted-") && is_under(&dataset.output_dir(), key) {
            return KeyRoute::Own("compacted output");
        }
    }
    KeyRoute::Foreign(format!(
        "{key:?} is under no configured dataset's source prefix and partition template"
    ))
}

fn is_under(dir: &str, key: &str) -> bool {
    let dir = dir_prefix(dir);
    dir.is_empty() || key.starts_with(&dir)
}

/// The partition of `key` in `dataset` (the directory levels the template describes).
fn partition_of(dataset: &DatasetConfig, key: &str) -> Option<String> {
    let source = dir_prefix(&dataset.source_dir());
    let relative = key.strip_prefix(source.as_str())?;
    let template = dataset.template().ok()?;
    let directory = match relative.rsplit_once('/') {
        Some((directory, _)) => directory,
        None => "",
    };
    template.parse_partition(directory).ok()?;
    Some(directory.to_string())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitterEvent {
    /// Task directories whose `_SUCCESS` marker appeared.
    Tasks(Vec<String>),
    Ignored(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManualCommit {
    task_dir: String,
}

/// Parses the committer's event and checks that each marker is a task's `_SUCCESS` under the
/// staging prefix (`<staging>/<dataset>/<partition...>/<task>/_SUCCESS`).
pub fn parse_committer_event(
    value: &Value,
    staging_prefix: &str,
    bucket: &str,
) -> Result<CommitterEvent> {
    let staging = dir_prefix(staging_prefix);
    let check_dir = |dir: &str| -> Result<String> {
        let dir = dir_prefix(dir);
        validate_key(&dir)?;
        let task = file_name(&dir);
        if !dir.starts_with(&staging) || !crate::model::task::is_task_id(task) {
            return Err(bad(format!(
                "{dir:?} is not a task directory under the staging prefix {staging:?} \
                 (<staging>/<dataset>/<partition>/<task id>/)"
            )));
        }
        Ok(dir)
    };
    if let Some(objects) = created_objects(value)? {
        let objects = match objects {
            Ok(objects) => objects,
            Err(why) => return Ok(CommitterEvent::Ignored(why)),
        };
        let mut dirs = Vec::new();
        for object in objects {
            if object.bucket != bucket {
                return Err(bad(format!(
                    "object in bucket {:?}, but this deployment compacts {bucket:?}",
                    object.bucket
                )));
            }
            let Some(dir) = object.key.strip_suffix(SUCCESS) else {
                return Err(bad(format!("{:?} is not a {SUCCESS} marker", object.key)));
            };
            dirs.push(check_dir(dir)?);
        }
        return Ok(CommitterEvent::Tasks(dirs));
    }
    if value.get("task_dir").is_some() {
        let manual: ManualCommit = serde_json::from_value(value.clone()).map_err(|e| {
            bad(format!(
                "manual commit: {e}; expected {{\"task_dir\": \"...\"}}"
            ))
        })?;
        return Ok(CommitterEvent::Tasks(vec![check_dir(&manual.task_dir)?]));
    }
    Err(bad(
        "unknown event shape; expected an S3 notification or EventBridge Object Created event \
         for a _SUCCESS marker, or {\"task_dir\": \"<staging>/<dataset>/<partition>/<task>/\"}",
    ))
}

#[derive(Clone, Debug)]
pub enum MergerEvent {
    Inline(Box<Task>),
    /// The key of the task's `_task.json` in staging (tasks too big for an async payload).
    Reference(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskReference {
    task_key: String,
}

pub fn parse_merger_event(value: &Value) -> Result<MergerEvent> {
    if value.get("task_key").is_some() {
        let reference: TaskReference = serde_json::from_value(value.clone()).map_err(|e| {
            bad(format!(
                "task reference: {e}; expected {{\"task_key\": \"...\"}}"
            ))
        })?;
        validate_key(&reference.task_key)?;
        return Ok(MergerEvent::Reference(reference.task_key));
    }
    if value.get("task_id").is_some() {
        let task: Task =
            serde_json::from_value(value.clone()).map_err(|e| bad(format!("merge task: {e}")))?;
        return Ok(MergerEvent::Inline(Box::new(task)));
    }
    Err(bad(
        "unknown event shape; expected a merge task (as in a _task.json) or {\"task_key\": \"<staging>/.../_task.json\"}",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            datasets: vec![DatasetConfig::new(
                "clicks",
                "raw/clicks",
                "dt={date}/hour={hour}",
            )],
            ..Config::default()
        }
    }

    fn sample(name: &str) -> Value {
        let path = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect("json")
    }

    #[test]
    fn every_sample_event_parses() {
        let created = CreatedObject {
            bucket: "compactor-example".into(),
            key: "raw/clicks/dt=2024-05-01/hour=13/part-00000.parquet".into(),
            size: 1024,
        };
        assert_eq!(
            parse_planner_event(&sample("planner-s3-put.json")).unwrap(),
            PlannerEvent::ObjectsCreated(vec![created.clone()])
        );
        assert_eq!(
            parse_planner_event(&sample("planner-eventbridge-object-created.json")).unwrap(),
            PlannerEvent::ObjectsCreated(vec![created])
        );
        assert_eq!(
            parse_planner_event(&sample("planner-scheduled.json")).unwrap(),
            PlannerEvent::Scheduled
        );
        assert_eq!(
            parse_planner_event(&sample("planner-report.json")).unwrap(),
            PlannerEvent::Report(ReportRequest {
                since: Some("14d".into()),
                dataset: vec!["clicks".into()],
            })
        );
        let bad_since =
            parse_planner_event(&serde_json::json!({"report": {"since": "soon"}})).unwrap_err();
        assert!(
            bad_since.to_string().contains("report since"),
            "{bad_since}"
        );
        // A layout without time fields: routed to its range partition.
        let PlannerEvent::ObjectsCreated(objects) =
            parse_planner_event(&sample("planner-s3-put-range-layout.json")).unwrap()
        else {
            panic!("not an object-created event")
        };
        let mut ranges = config();
        let mut transfers = DatasetConfig::new(
            "transfers",
            "raw/transfers",
            "chain={chain}/range={start}-{end}",
        );
        transfers.coldness = Some(crate::model::partition::ColdRule::Range);
        transfers.validate().unwrap();
        ranges.datasets.push(transfers);
        assert_eq!(
            route_key(&ranges, &objects[0].key),
            KeyRoute::Partition {
                dataset: "transfers".into(),
                partition: "chain=1/range=19000000-19010000".into()
            }
        );
        assert_eq!(
            parse_planner_event(&sample("planner-export-range.json")).unwrap(),
            PlannerEvent::Command(PlannerCommand::Plan {
                dataset: "blocks".into(),
                partition: "1000000-1010000".into(),
                dry_run: false,
                force: false
            })
        );
        for name in [
            "planner-plan-partition.json",
            "planner-sweep.json",
            "planner-backfill-date.json",
            "planner-backfill-range.json",
            "planner-dry-run.json",
            "planner-force.json",
            "planner-export-range.json",
            "planner-sweep-hot.json",
        ] {
            assert!(
                matches!(
                    parse_planner_event(&sample(name)).unwrap(),
                    PlannerEvent::Command(_)
                ),
                "{name}"
            );
        }
        let task_dir = "_compactor/staging/clicks/dt=2024-05-01/hour=13/g000001-t0000/";
        for name in [
            "committer-s3-success.json",
            "committer-eventbridge-success.json",
            "committer-manual.json",
        ] {
            assert_eq!(
                parse_committer_event(&sample(name), "_compactor/staging", "compactor-example")
                    .unwrap(),
                CommitterEvent::Tasks(vec![task_dir.to_string()]),
                "{name}"
            );
        }
        assert!(matches!(
            parse_merger_event(&sample("merger-task-ref.json")).unwrap(),
            MergerEvent::Reference(k) if k.ends_with("/_task.json")
        ));
    }

    #[test]
    fn keys_are_decoded_like_form_data() {
        assert_eq!(
            decode_s3_key("dt%3D2024-05-01%2Fa+b.parquet"),
            "dt=2024-05-01/a b.parquet"
        );
        assert_eq!(decode_s3_key("raw/x.parquet"), "raw/x.parquet");
    }

    #[test]
    fn malformed_and_unknown_events_are_rejected_with_the_accepted_shapes() {
        for value in [
            serde_json::json!({}),
            serde_json::json!({"hello": "world"}),
            serde_json::json!({"Records": "nope"}),
            serde_json::json!({"command": "explode"}),
            serde_json::json!({"command": "plan", "dataset": "clicks"}),
            serde_json::json!({"command": "sweep", "datset": "typo"}),
            serde_json::json!({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2", "detail": {}}),
            serde_json::json!({"Records": [{"eventSource": "aws:sqs", "eventName": "x"}]}),
        ] {
            let err = parse_planner_event(&value).unwrap_err();
            assert!(matches!(err, Error::BadEvent(_)), "{value}: {err}");
        }
        assert!(matches!(
            parse_planner_event(&serde_json::json!({"Event": "s3:TestEvent"})).unwrap(),
            PlannerEvent::Ignored(_)
        ));
    }

    #[test]
    fn own_and_foreign_keys_never_route_to_a_partition() {
        let c = config();
        assert_eq!(
            route_key(&c, "raw/clicks/dt=2024-05-01/hour=13/part-1.parquet"),
            KeyRoute::Partition {
                dataset: "clicks".into(),
                partition: "dt=2024-05-01/hour=13".into()
            }
        );
        assert_eq!(
            route_key(
                &c,
                "raw/clicks/dt=2024-05-01/hour=13/compacted-g000001-t0000-00000.parquet"
            ),
            KeyRoute::Own("compacted output")
        );
        assert_eq!(
            route_key(
                &c,
                "_compactor/staging/clicks/dt=2024-05-01/hour=13/g000001-t0000/a1-00000.parquet"
            ),
            KeyRoute::Own("staging")
        );
        assert_eq!(
            route_key(
                &c,
                "raw/clicks/dt=2024-05-01/hour=13/_compactor_manifest.json"
            ),
            KeyRoute::Own("partition manifest")
        );
        let with_hot = Config {
            hot_datasets: vec![crate::model::hot::config::HotDatasetConfig {
                chain_id: Some(1),
                ..crate::model::hot::config::HotDatasetConfig::new("blocks", "blocks")
            }],
            ..config()
        };
        assert_eq!(
            route_key(
                &with_hot,
                "cold/1/blocks/0-10000/compacted-g000001-t0000-00000.parquet"
            ),
            KeyRoute::Own("cold range of a hot dataset")
        );
        for foreign in [
            "elsewhere/x.parquet",
            "raw/clicks/notapartition/x.parquet",
            "raw/clicks/dt=2024-05-01/hour=13/notes.txt",
            "raw/clicks/dt=2024-05-01/hour=13/../../../etc/passwd",
            "/abs/x.parquet",
        ] {
            assert!(
                matches!(route_key(&c, foreign), KeyRoute::Foreign(_)),
                "{foreign}"
            );
        }
    }

    #[test]
    fn committer_accepts_only_task_markers_of_its_bucket() {
        let marker = |key: &str, bucket: &str| {
            serde_json::json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                "eventTime": "2024-05-01T00:00:00Z", "userIdentity": {"principalId": "x"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"}, "responseElements": {},
                "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 0}}}]})
        };
        let ok = marker(
            "_compactor/staging/clicks/dt=2024-05-01/hour=13/g000002-t0003/_SUCCESS",
            "b",
        );
        parse_committer_event(&ok, "_compactor/staging", "b").unwrap();
        for (key, bucket) in [
            (
                "_compactor/staging/clicks/dt=2024-05-01/hour=13/g000002-t0003/_SUCCESS",
                "other",
            ),
            ("raw/clicks/dt=2024-05-01/hour=13/_SUCCESS", "b"),
            ("_compactor/staging/clicks/x/_manifest.json", "b"),
            ("_compactor/staging/clicks/x/not-a-task/_SUCCESS", "b"),
        ] {
            assert!(
                parse_committer_event(&marker(key, bucket), "_compactor/staging", "b").is_err(),
                "{key} {bucket}"
            );
        }
        assert!(parse_committer_event(
            &serde_json::json!({"task_dir": "../x/"}),
            "_compactor/staging",
            "b"
        )
        .is_err());
    }
}
