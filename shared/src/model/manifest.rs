//! The two manifests of the commit protocol: the task manifest a merger writes into staging,
//! and the partition manifest of live files the committer keeps next to the outputs.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::dataset::Mode;
use crate::model::hot::export::ExportRecord;
use crate::model::object::ObjectMeta;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub staging_key: String,
    pub final_key: String,
    pub size: u64,
    pub rows: u64,
    pub row_groups: usize,
    /// Of `row_groups`, those copied verbatim from inputs (the rest were encoded here).
    #[serde(default)]
    pub row_groups_copied: usize,
    /// Bytes of the row groups copied from inputs as they were (by the store or through the
    /// merger); the rest of the inputs' bytes were decoded and encoded again.
    #[serde(default)]
    pub bytes_copied: u64,
    /// Bytes the store copied from inputs itself (S3 `UploadPartCopy`, a ranged file copy
    /// locally), which never passed through the merger.
    #[serde(default)]
    pub bytes_copied_in_store: u64,
    /// CRC32C of the whole file, lowercase hex (the checksum S3 can verify natively); empty
    /// when the store copied some of its bytes (then `footer` identifies the file).
    pub crc32c: String,
    /// The file's footer: its last `bytes` bytes (metadata, length, magic) and their CRC32C.
    /// The footer names the staged output it was written as, so it identifies the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footer: Option<FooterMark>,
}

/// What a sort-mode merge did: rows sorted in memory, rows taken as runs as they were because
/// their input was already in key order (an earlier output), and the runs merged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SortWork {
    pub rows_sorted: u64,
    pub rows_in_order: u64,
    pub runs: usize,
    /// A sort in passes ([`crate::model::passes`]): its run steps and merge steps (0: the
    /// partition was sorted in one step).
    #[serde(default)]
    pub run_steps: usize,
    #[serde(default)]
    pub merge_steps: usize,
}

impl SortWork {
    /// The work of several steps together.
    pub fn add(&mut self, other: &SortWork) {
        self.rows_sorted += other.rows_sorted;
        self.rows_in_order += other.rows_in_order;
        self.runs += other.runs;
    }
}

/// The tail of a Parquet file that identifies it: see [`OutputFile::footer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FooterMark {
    pub bytes: u64,
    pub crc32c: String,
}

impl OutputFile {
    /// Row groups encoded by the merger.
    pub fn row_groups_encoded(&self) -> usize {
        self.row_groups.saturating_sub(self.row_groups_copied)
    }
}

/// Why an input was left out of a merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipKind {
    /// Corrupt or not Parquet: quarantined until the file changes.
    Unreadable,
    /// Rewritten since planning: left for the next round.
    Changed,
    /// Gone before it could be read.
    Vanished,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedInput {
    pub key: String,
    pub size: u64,
    pub version: String,
    pub kind: SkipKind,
    pub reason: String,
}

impl SkippedInput {
    pub fn is_unreadable(&self) -> bool {
        self.kind == SkipKind::Unreadable
    }
}

/// The record of `meta` left out of a merge.
pub fn skipped(meta: &ObjectMeta, kind: SkipKind, reason: impl Into<String>) -> SkippedInput {
    SkippedInput {
        key: meta.key.clone(),
        size: meta.size,
        version: meta.version.clone(),
        kind,
        reason: reason.into(),
    }
}

/// Splits inputs into the unchanged ones and those that vanished or changed since planning.
pub fn check_versions(
    inputs: &[ObjectMeta],
    current: &HashMap<String, ObjectMeta>,
) -> (Vec<ObjectMeta>, Vec<SkippedInput>) {
    let mut keep = Vec::new();
    let mut skip = Vec::new();
    for input in inputs {
        match current.get(&input.key) {
            Some(now) if now.version == input.version => keep.push(input.clone()),
            Some(_) => skip.push(skipped(
                input,
                SkipKind::Changed,
                "changed since planning; left for the next round",
            )),
            None => skip.push(skipped(input, SkipKind::Vanished, "no longer exists")),
        }
    }
    (keep, skip)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDesc {
    pub name: String,
    pub data_type: String,
    pub nullable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskManifest {
    pub format_version: u32,
    pub task_id: String,
    pub dataset: String,
    pub partition: String,
    pub generation: u64,
    pub attempt: u32,
    pub mode: Mode,
    /// Inputs whose rows are all in `outputs`; the committer deletes exactly these (by version).
    pub inputs: Vec<ObjectMeta>,
    /// Inputs that could not be read; never deleted.
    pub skipped: Vec<SkippedInput>,
    pub outputs: Vec<OutputFile>,
    pub schema: Vec<ColumnDesc>,
    pub rows: u64,
    pub created_at_ms: i64,
    /// How long the merge took (the measured throughput the planner's estimates use).
    #[serde(default)]
    pub merge_ms: u64,
    /// Sort mode: what the sort did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<SortWork>,
    /// A run step of a sort in passes: its sampled keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<crate::model::passes::RunSamples>,
    /// A merge step of a sort in passes: the `seq` of its first row (the rows of every run
    /// below its range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_start: Option<u64>,
    /// For an export of a hot range: what the committer needs to delete it from Postgres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportRecord>,
    /// For a rewrite (delete or update): rows read and matched, row groups copied and redone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<crate::model::rewrite::RewriteRecord>,
}

impl TaskManifest {
    pub fn input_bytes(&self) -> u64 {
        self.inputs.iter().map(|i| i.size).sum()
    }
    pub fn output_bytes(&self) -> u64 {
        self.outputs.iter().map(|o| o.size).sum()
    }
}

/// What the committer (or a planner cleaning up) decided for a staged task. Written once with
/// create-if-absent, so the first decision wins and every later actor follows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: String,
    pub at_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The swap has begun and must be rolled forward by anyone who finds it unfinished.
    Commit,
    /// The staged outputs are discarded; inputs stay.
    Abandon,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveFile {
    pub key: String,
    pub size: u64,
    /// True for files this product wrote (the planner never re-triggers on them alone).
    pub compacted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub task_id: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub at_ms: i64,
}

/// The live files of one output partition after the latest commit. Readers that must not see
/// the short overlap of a swap read only `files`; files newer than `updated_at_ms` that are not
/// listed arrived after it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionManifest {
    pub format_version: u32,
    pub dataset: String,
    pub partition: String,
    pub updated_at_ms: i64,
    pub files: Vec<LiveFile>,
    /// The most recent commits, newest last; a replayed commit finds itself here.
    pub commits: Vec<CommitRecord>,
    /// Unreadable files kept in the partition. The planner ignores them until they change
    /// (another version), so one bad file does not re-trigger compaction on every run.
    #[serde(default)]
    pub quarantined: Vec<SkippedInput>,
    /// For a hot range: its ledger (which files hold rows that left Postgres, and how far the
    /// delete of the latest export got).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot: Option<crate::model::hot::ledger::RangeLedger>,
}

/// How many commit records the partition manifest keeps.
const COMMIT_HISTORY: usize = 32;

impl PartitionManifest {
    pub fn has_commit(&self, task_id: &str) -> bool {
        self.commits.iter().any(|c| c.task_id == task_id)
    }

    /// Keys of the live files this product wrote.
    pub fn compacted_keys(&self) -> std::collections::HashSet<String> {
        self.files
            .iter()
            .filter(|f| f.compacted)
            .map(|f| f.key.clone())
            .collect()
    }

    /// Applies a commit: `listing` is what the partition holds now (outputs already moved in);
    /// removed inputs are dropped, outputs marked as compacted.
    pub fn apply_commit(&mut self, task: &TaskManifest, listing: &[ObjectMeta], now_ms: i64) {
        let removed: std::collections::HashSet<&str> =
            task.inputs.iter().map(|i| i.key.as_str()).collect();
        let added: std::collections::HashSet<&str> =
            task.outputs.iter().map(|o| o.final_key.as_str()).collect();
        let previously_compacted = self.compacted_keys();
        self.files = listing
            .iter()
            .filter(|o| !removed.contains(o.key.as_str()))
            .map(|o| LiveFile {
                key: o.key.clone(),
                size: o.size,
                compacted: added.contains(o.key.as_str()) || previously_compacted.contains(&o.key),
            })
            .collect();
        self.files.sort_by(|a, b| a.key.cmp(&b.key));
        let live: std::collections::HashSet<&str> =
            listing.iter().map(|o| o.key.as_str()).collect();
        self.quarantined.retain(|q| live.contains(q.key.as_str()));
        for s in task.skipped.iter().filter(|s| s.is_unreadable()) {
            if !self
                .quarantined
                .iter()
                .any(|q| q.key == s.key && q.version == s.version)
            {
                self.quarantined.push(s.clone());
            }
        }
        self.commits.push(CommitRecord {
            task_id: task.task_id.clone(),
            added: added.iter().map(|s| s.to_string()).collect(),
            removed: removed.iter().map(|s| s.to_string()).collect(),
            at_ms: now_ms,
        });
        if self.commits.len() > COMMIT_HISTORY {
            let excess = self.commits.len() - COMMIT_HISTORY;
            self.commits.drain(..excess);
        }
        self.format_version = FORMAT_VERSION;
        self.dataset = task.dataset.clone();
        self.partition = task.partition.clone();
        self.updated_at_ms = now_ms;
    }
}

pub fn to_json<T: Serialize>(value: &T) -> bytes::Bytes {
    // Serialising these plain structs cannot fail.
    bytes::Bytes::from(serde_json::to_vec_pretty(value).unwrap_or_default())
}

pub fn from_json<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Manifest {
        key: key.to_string(),
        message: format!("unreadable JSON ({e})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            version: format!("v-{key}"),
            last_modified_ms: 1,
        }
    }

    fn manifest() -> TaskManifest {
        TaskManifest {
            format_version: FORMAT_VERSION,
            task_id: "g000001-t0000".into(),
            dataset: "events".into(),
            partition: "dt=2024-01-01".into(),
            generation: 1,
            attempt: 1,
            mode: Mode::Concat,
            inputs: vec![meta("p/a.parquet", 10), meta("p/b.parquet", 20)],
            skipped: vec![SkippedInput {
                key: "p/bad.parquet".into(),
                size: 3,
                version: "v".into(),
                kind: SkipKind::Unreadable,
                reason: "bad magic".into(),
            }],
            outputs: vec![OutputFile {
                staging_key: "s/a1-00000.parquet".into(),
                final_key: "p/compacted-g000001-t0000-00000.parquet".into(),
                size: 25,
                rows: 7,
                row_groups: 1,
                row_groups_copied: 0,
                bytes_copied: 0,
                bytes_copied_in_store: 0,
                crc32c: "deadbeef".into(),
                footer: None,
            }],
            schema: vec![ColumnDesc {
                name: "id".into(),
                data_type: "Int64".into(),
                nullable: false,
            }],
            rows: 7,
            created_at_ms: 5,
            merge_ms: 0,
            sort: None,
            samples: None,
            seq_start: None,
            export: None,
            rewrite: None,
        }
    }

    #[test]
    fn task_manifest_round_trips_through_json() {
        let m = manifest();
        let back: TaskManifest = from_json("k", &to_json(&m)).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.input_bytes(), 30);
        assert!(from_json::<TaskManifest>("k", b"{not json").is_err());
    }

    #[test]
    fn partition_manifest_tracks_live_files_and_replays() {
        let task = manifest();
        let listing = vec![
            meta("p/a.parquet", 10),
            meta("p/b.parquet", 20),
            meta("p/bad.parquet", 3),
            meta("p/compacted-g000001-t0000-00000.parquet", 25),
            meta("p/late.parquet", 4),
        ];
        let mut pm = PartitionManifest::default();
        pm.apply_commit(&task, &listing, 9);
        let keys: Vec<(&str, bool)> = pm
            .files
            .iter()
            .map(|f| (f.key.as_str(), f.compacted))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("p/bad.parquet", false),
                ("p/compacted-g000001-t0000-00000.parquet", true),
                ("p/late.parquet", false)
            ]
        );
        assert!(pm.has_commit("g000001-t0000"));
        assert_eq!(
            pm.quarantined.len(),
            1,
            "the unreadable input is quarantined"
        );
        // Once the bad file is gone, it leaves the quarantine.
        let mut later = task.clone();
        later.task_id = "g000002-t0000".into();
        later.skipped.clear();
        pm.apply_commit(&later, &listing[3..4], 10);
        assert!(pm.quarantined.is_empty());
        let back: PartitionManifest = from_json("k", &to_json(&pm)).unwrap();
        assert_eq!(back, pm);
    }
}
