//! A repartition's record and layout: the phases, the groups of source files its write tasks
//! take, what a finished group leaves behind, and where all of it lives.
//!
//! ```text
//! <staging>/repartition/<dataset>/record.json                      the record (phase, files, groups)
//! <staging>/repartition/<dataset>/groups/<group>.json              a written group (create-once)
//! <staging>/repartition/<dataset>/pieces/<partition>/<file>-<attempt>.parquet   its pieces
//! ```
//!
//! Pieces stay in staging, out of the dataset: nothing compacts or reads them until every group
//! is written, and then only the pieces the group records name (a retried or late write task
//! writes under an attempt of its own, which no record names). The destination's compaction
//! takes the named pieces as inputs, so the committer deletes each once its rows are published.

use serde::{Deserialize, Serialize};

use crate::model::hot::digest::RowDigest;
use crate::model::object::{join_key, ObjectMeta};

/// How far a repartition got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Write tasks split the source files into pieces, group by group.
    Writing,
    /// Every group is written (the source digest is their sum); the pieces are being compacted
    /// into the destination's partitions.
    Written,
    /// The destination's digest equals the source's.
    Validated,
    SourceDeleted,
}

/// The record of a repartition (`record.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Where the source is, for messages (`s3://bucket`, a directory).
    pub source: String,
    pub source_prefix: String,
    pub template: String,
    #[serde(default)]
    pub select: Option<String>,
    pub phase: Phase,
    /// The source files, as listed at the start: exactly what is copied (and deleted).
    pub files: Vec<ObjectMeta>,
    /// Where each group of `files` starts; group `g` is `files[starts[g]..starts[g + 1]]`.
    pub group_starts: Vec<usize>,
    /// When each group's write task was last sent (milliseconds; 0: never).
    #[serde(default)]
    pub dispatched_at_ms: Vec<i64>,
    #[serde(default)]
    pub source_digest: Option<RowDigest>,
    #[serde(default)]
    pub target_digest: Option<RowDigest>,
    /// Source files the write tasks found changed or gone (from the groups, once written):
    /// not copied, never deleted.
    #[serde(default)]
    pub skipped: Vec<SkippedSource>,
    /// What the last run asked for once validated (what a scheduled run carries on with).
    #[serde(default)]
    pub delete_source: bool,
    #[serde(default)]
    pub backup: Option<String>,
}

/// A source file a write task did not copy: changed or removed since it was listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkippedSource {
    pub key: String,
    pub reason: String,
}

impl Record {
    /// Whether anything is left to do (a validated copy whose source is to stay is done).
    pub fn unfinished(&self) -> bool {
        match self.phase {
            Phase::Writing | Phase::Written => true,
            Phase::Validated => self.delete_source,
            Phase::SourceDeleted => false,
        }
    }

    pub fn groups(&self) -> usize {
        self.group_starts.len()
    }

    /// The files of group `g` and the index of its first file.
    pub fn group(&self, g: usize) -> (usize, &[ObjectMeta]) {
        let start = self
            .group_starts
            .get(g)
            .copied()
            .unwrap_or(self.files.len());
        let end = self
            .group_starts
            .get(g + 1)
            .copied()
            .unwrap_or(self.files.len());
        (start, &self.files[start.min(end)..end])
    }

    /// Whether `other` describes the same repartition (same source, layout and select list).
    pub fn same_job(&self, other: &Record) -> bool {
        self.source == other.source
            && self.source_prefix == other.source_prefix
            && self.template == other.template
            && self.select == other.select
    }
}

/// What a write task left for its group (`groups/<group>.json`, created once: the first
/// attempt to finish is the one that counts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupWritten {
    pub group: usize,
    /// The attempt whose pieces these are.
    pub attempt: String,
    /// The digest of the group's rows (target partition and every value).
    pub digest: RowDigest,
    pub pieces: Vec<Piece>,
    /// The group's files not copied (the digest covers only the others).
    #[serde(default)]
    pub skipped: Vec<SkippedSource>,
}

/// A piece: rows of one source file for one target partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Piece {
    pub partition: String,
    pub object: ObjectMeta,
}

/// The data of a write task ([`crate::model::task::TaskKind::RepartitionWrite`]): the task's
/// inputs are the group's files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepartitionWrite {
    /// The repartition's directory in staging ([`repartition_dir`]).
    pub dir: String,
    pub group: usize,
    /// The index of the group's first file among the record's (names its pieces).
    pub first_file: usize,
    pub source_prefix: String,
    #[serde(default)]
    pub select: Option<String>,
}

/// Where every repartition's directory is (`<staging>/repartition/`).
pub fn repartitions_dir(staging_prefix: &str) -> String {
    join_key(&[staging_prefix, "repartition"]) + "/"
}

/// The directory of `dataset`'s repartition in staging.
pub fn repartition_dir(staging_prefix: &str, dataset: &str) -> String {
    format!("{}{dataset}/", repartitions_dir(staging_prefix))
}

pub fn record_key(dir: &str) -> String {
    format!("{dir}record.json")
}

pub fn group_key(dir: &str, group: usize) -> String {
    format!("{dir}groups/{group:06}.json")
}

pub fn groups_dir(dir: &str) -> String {
    format!("{dir}groups/")
}

/// Where the write tasks' specs are staged (as the staging prefix of their tasks).
pub fn tasks_dir(dir: &str) -> String {
    format!("{dir}tasks/")
}

pub fn pieces_dir(dir: &str) -> String {
    format!("{dir}pieces/")
}

/// The piece of file `file` for `partition`, written by `attempt`.
pub fn piece_key(dir: &str, partition: &str, file: usize, attempt: &str) -> String {
    join_key(&[
        &pieces_dir(dir),
        partition,
        &format!("{file:06}-{attempt}.parquet"),
    ])
}

/// Splits `files` into groups of consecutive files of at most `max_bytes` each (a larger file
/// is a group of its own): where each group starts.
pub fn group_starts(files: &[ObjectMeta], max_bytes: u64) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut bytes = 0u64;
    for (i, f) in files.iter().enumerate() {
        if starts.is_empty() || bytes + f.size > max_bytes.max(1) {
            starts.push(i);
            bytes = 0;
        }
        bytes += f.size;
    }
    starts
}

/// Whether two prefixes of one store overlap (one holds the other): a repartition may not write
/// into its source.
pub fn overlapping(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> ObjectMeta {
        ObjectMeta {
            key: format!("f{size}"),
            size,
            version: "v".into(),
            last_modified_ms: 0,
        }
    }

    #[test]
    fn groups_hold_consecutive_files_up_to_the_byte_limit() {
        let files: Vec<ObjectMeta> = [4, 4, 4, 9, 1, 1].into_iter().map(file).collect();
        let starts = group_starts(&files, 8);
        assert_eq!(starts, vec![0, 2, 3, 4]);
        let record = Record {
            source: "s".into(),
            source_prefix: String::new(),
            template: "dt={date}".into(),
            select: None,
            phase: Phase::Writing,
            files: files.clone(),
            group_starts: starts,
            dispatched_at_ms: Vec::new(),
            source_digest: None,
            target_digest: None,
            skipped: Vec::new(),
            delete_source: false,
            backup: None,
        };
        assert_eq!(record.groups(), 4);
        // Every file in exactly one group, in order.
        let all: Vec<ObjectMeta> = (0..record.groups())
            .flat_map(|g| record.group(g).1.to_vec())
            .collect();
        assert_eq!(all, files);
        assert_eq!(record.group(2), (3, &files[3..4]));
        assert!(group_starts(&[], 8).is_empty());
        // What a schedule carries on: anything before validation; after it, only a deletion.
        let at = |phase, delete_source| Record {
            phase,
            delete_source,
            ..record.clone()
        };
        assert!(at(Phase::Writing, false).unfinished() && at(Phase::Written, false).unfinished());
        assert!(
            !at(Phase::Validated, false).unfinished() && at(Phase::Validated, true).unfinished()
        );
        assert!(!at(Phase::SourceDeleted, true).unfinished());
    }

    #[test]
    fn layout_keys() {
        let dir = repartition_dir("_compactor/staging", "ticks");
        assert_eq!(dir, "_compactor/staging/repartition/ticks/");
        assert_eq!(
            piece_key(&dir, "venue=A/dt=2024-01-01", 7, "ab12"),
            "_compactor/staging/repartition/ticks/pieces/venue=A/dt=2024-01-01/000007-ab12.parquet"
        );
        assert_eq!(group_key(&dir, 3), format!("{dir}groups/000003.json"));
        assert!(overlapping("data/", "data/ticks/"));
        assert!(!overlapping("raw/", "ticks/"));
    }
}
