//! A partition's state record (status, counters, lease, round, backoff, cold ranges) and its
//! transitions as pure functions. The embedded state adapter applies them inside one
//! transaction; the DynamoDB adapter expresses the same rules as condition expressions.

use serde::{Deserialize, Serialize};

use crate::error::Result;

use crate::model::hot::cold::ColdRange;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionId {
    pub dataset: String,
    /// The partition's path relative to the dataset's source prefix, e.g. `dt=2024-01-01/hour=03`.
    pub partition: String,
}

impl PartitionId {
    pub fn new(dataset: impl Into<String>, partition: impl Into<String>) -> Self {
        Self {
            dataset: dataset.into(),
            partition: partition.into(),
        }
    }
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.dataset, self.partition)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionStatus {
    /// Known (files seen) but not being compacted.
    Active,
    /// A lease is held and a compaction round is planned or running.
    Compacting,
    /// The last round committed.
    Compacted,
    /// The last round failed; `last_error` says why. The next sweep retries.
    Failed,
    /// A hot range whose cold copy is committed but whose Postgres rows disagree with it;
    /// `cold` says how. Nothing more is deleted until the range is re-exported.
    Flagged,
}

impl PartitionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionStatus::Active => "active",
            PartitionStatus::Compacting => "compacting",
            PartitionStatus::Compacted => "compacted",
            PartitionStatus::Failed => "failed",
            PartitionStatus::Flagged => "flagged",
        }
    }
}

/// Monotonic counters; every field is added atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub files_seen: u64,
    pub bytes_seen: u64,
    pub late_files: u64,
    pub compactions: u64,
    pub files_compacted: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rows_out: u64,
    pub corrupt_skipped: u64,
    /// Input bytes copied into outputs as they were (healthy row groups).
    pub bytes_copied: u64,
    /// Milliseconds the merges took: with `bytes_in - bytes_copied`, the throughput this
    /// partition's merges reached.
    pub merge_ms: u64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.files_seen += other.files_seen;
        self.bytes_seen += other.bytes_seen;
        self.late_files += other.late_files;
        self.compactions += other.compactions;
        self.files_compacted += other.files_compacted;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.rows_out += other.rows_out;
        self.corrupt_skipped += other.corrupt_skipped;
        self.bytes_copied += other.bytes_copied;
        self.merge_ms += other.merge_ms;
    }
}

/// The right to compact one partition until `expires_at_ms`. `generation` increases with every
/// grant, so a holder whose lease was taken over is fenced off by comparing generations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub generation: u64,
    pub expires_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub id: PartitionId,
    pub status: PartitionStatus,
    pub counters: Counters,
    pub lease: Option<Lease>,
    /// The generation of the latest lease ever granted (0 = never leased).
    pub generation: u64,
    /// Task ids of the round planned under `generation`.
    pub round_tasks: Vec<String>,
    /// Task ids of that round already committed.
    pub committed_tasks: Vec<String>,
    pub last_error: Option<String>,
    pub last_compacted_ms: Option<i64>,
    pub updated_at_ms: i64,
    /// For a hot range: its committed cold copy and what became of its Postgres rows. Kept
    /// across rounds, so a range whose rows left Postgres is never replaced by a re-export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold: Option<ColdRange>,
    /// Rounds that failed in a row (0 after one that did not).
    #[serde(default)]
    pub failures: u32,
}

/// The first retry of a partition that keeps failing waits this long; each further failure
/// doubles it, up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: i64 = 5 * 60 * 1000;
pub const MAX_BACKOFF_MS: i64 = 24 * 60 * 60 * 1000;

impl PartitionRecord {
    pub fn new(id: PartitionId, now_ms: i64) -> Self {
        Self {
            id,
            status: PartitionStatus::Active,
            counters: Counters::default(),
            lease: None,
            generation: 0,
            round_tasks: Vec::new(),
            committed_tasks: Vec::new(),
            last_error: None,
            last_compacted_ms: None,
            updated_at_ms: now_ms,
            cold: None,
            failures: 0,
        }
    }

    /// Until when a partition that failed in a row is left alone: none after a single failure
    /// (the next run retries it), then 5 minutes, doubling with each failure, at most a day.
    pub fn backoff_until_ms(&self) -> Option<i64> {
        if self.status != PartitionStatus::Failed || self.failures < 2 {
            return None;
        }
        let wait = FIRST_BACKOFF_MS
            .saturating_mul(1 << (self.failures - 2).min(20))
            .min(MAX_BACKOFF_MS);
        Some(self.updated_at_ms + wait)
    }

    /// A lease that has not expired at `now_ms`.
    pub fn live_lease(&self, now_ms: i64) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| l.expires_at_ms > now_ms)
    }

    pub fn round_complete(&self) -> bool {
        self.round_tasks
            .iter()
            .all(|t| self.committed_tasks.contains(t))
    }
}

/// What a commit did to the partition's round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitProgress {
    /// False when this task had been recorded before (a replay); counters were not added again.
    pub newly_recorded: bool,
    /// True when every task of the round under the task's generation is now committed.
    pub round_complete: bool,
}

/// The state transitions as pure functions on a record. The embedded adapter applies them inside
/// one transaction; the DynamoDB adapter expresses the same rules as condition expressions.
impl PartitionRecord {
    pub fn try_acquire(&mut self, owner: &str, now_ms: i64, ttl_ms: i64) -> Option<Lease> {
        if self.live_lease(now_ms).is_some() {
            return None;
        }
        self.generation += 1;
        let lease = Lease {
            owner: owner.to_string(),
            generation: self.generation,
            expires_at_ms: now_ms + ttl_ms,
        };
        self.lease = Some(lease.clone());
        self.status = PartitionStatus::Compacting;
        self.round_tasks.clear();
        self.committed_tasks.clear();
        self.last_error = None;
        self.updated_at_ms = now_ms;
        Some(lease)
    }

    /// [`StateStore::take_over_lease`] on a record.
    pub fn try_take_over(
        &mut self,
        generation: u64,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Option<Lease> {
        if self
            .lease
            .as_ref()
            .is_some_and(|l| l.generation == generation)
        {
            self.lease = None;
        }
        self.try_acquire(owner, now_ms, ttl_ms)
    }

    fn check_holder(&self, lease: &Lease, now_ms: i64) -> Result<()> {
        let lost = |reason: String| {
            Err(crate::Error::LeaseLost {
                partition: self.id.to_string(),
                reason,
            })
        };
        match &self.lease {
            Some(current)
                if current.generation == lease.generation && current.owner == lease.owner =>
            {
                if current.expires_at_ms <= now_ms {
                    lost(format!("lease generation {} expired", lease.generation))
                } else {
                    Ok(())
                }
            }
            Some(current) => lost(format!(
                "generation {} held by {:?} replaced generation {} of {:?}",
                current.generation, current.owner, lease.generation, lease.owner
            )),
            None => lost(format!(
                "lease generation {} was released",
                lease.generation
            )),
        }
    }

    pub fn try_renew(&mut self, lease: &Lease, now_ms: i64, ttl_ms: i64) -> Result<Lease> {
        self.check_holder(lease, now_ms)?;
        let renewed = Lease {
            expires_at_ms: now_ms + ttl_ms,
            ..lease.clone()
        };
        self.lease = Some(renewed.clone());
        self.updated_at_ms = now_ms;
        Ok(renewed)
    }

    pub fn try_set_round(&mut self, lease: &Lease, task_ids: &[String], now_ms: i64) -> Result<()> {
        self.check_holder(lease, now_ms)?;
        self.round_tasks = task_ids.to_vec();
        self.committed_tasks.retain(|t| task_ids.contains(t));
        self.updated_at_ms = now_ms;
        Ok(())
    }

    pub fn apply_commit(
        &mut self,
        generation: u64,
        task_id: &str,
        delta: &Counters,
        now_ms: i64,
    ) -> CommitProgress {
        let current_round = generation == self.generation;
        let already = current_round && self.committed_tasks.iter().any(|t| t == task_id);
        if !already {
            self.counters.add(delta);
            if current_round {
                self.committed_tasks.push(task_id.to_string());
            }
            self.last_compacted_ms = Some(now_ms);
            self.updated_at_ms = now_ms;
        }
        CommitProgress {
            newly_recorded: !already,
            round_complete: current_round && self.round_complete(),
        }
    }

    pub fn apply_cold_range(&mut self, cold: &ColdRange, now_ms: i64) {
        if self.cold.as_ref().is_some_and(|c| c.version > cold.version) {
            return;
        }
        self.cold = Some(cold.clone());
        self.updated_at_ms = now_ms;
    }

    pub fn apply_finish_round(
        &mut self,
        generation: u64,
        status: PartitionStatus,
        error: Option<String>,
        now_ms: i64,
    ) -> bool {
        if generation != self.generation {
            return false;
        }
        self.lease = None;
        self.failures = match status {
            PartitionStatus::Failed => self.failures.saturating_add(1),
            _ => 0,
        };
        self.status = status;
        self.last_error = error;
        self.updated_at_ms = now_ms;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> PartitionRecord {
        PartitionRecord::new(PartitionId::new("ds", "dt=2024-01-01"), 0)
    }

    #[test]
    fn lease_is_exclusive_until_it_expires() {
        let mut r = record();
        let first = r.try_acquire("a", 1_000, 500).unwrap();
        assert_eq!(first.generation, 1);
        assert_eq!(r.status, PartitionStatus::Compacting);
        assert!(r.try_acquire("b", 1_499, 500).is_none());
        let second = r.try_acquire("b", 1_500, 500).unwrap();
        assert_eq!(second.generation, 2);
        // The first holder is fenced off by generation.
        assert!(r.try_renew(&first, 1_600, 500).is_err());
        assert!(r.try_set_round(&first, &["t".into()], 1_600).is_err());
        let renewed = r.try_renew(&second, 1_600, 500).unwrap();
        assert_eq!(renewed.expires_at_ms, 2_100);
    }

    #[test]
    fn expired_lease_cannot_be_renewed() {
        let mut r = record();
        let lease = r.try_acquire("a", 0, 10).unwrap();
        assert!(r.try_renew(&lease, 10, 10).is_err());
    }

    #[test]
    fn commits_are_counted_once_and_complete_the_round() {
        let mut r = record();
        let lease = r.try_acquire("a", 0, 1_000).unwrap();
        r.try_set_round(&lease, &["t1".into(), "t2".into()], 1)
            .unwrap();
        let delta = Counters {
            files_compacted: 3,
            ..Counters::default()
        };
        let p = r.apply_commit(lease.generation, "t1", &delta, 2);
        assert!(p.newly_recorded && !p.round_complete);
        let replay = r.apply_commit(lease.generation, "t1", &delta, 3);
        assert!(!replay.newly_recorded);
        assert_eq!(r.counters.files_compacted, 3);
        let p = r.apply_commit(lease.generation, "t2", &delta, 4);
        assert!(p.round_complete);
        assert!(r.apply_finish_round(lease.generation, PartitionStatus::Compacted, None, 5));
        assert!(r.lease.is_none());
        assert_eq!(r.status, PartitionStatus::Compacted);
    }

    #[test]
    fn cold_ranges_keep_the_newest_version() {
        let mut r = record();
        let cold = |version, delete| ColdRange {
            version,
            rows: 10,
            moved_rows: 0,
            exported: 10,
            delete,
            at_ms: 0,
        };
        let moved = crate::model::hot::cold::DeleteState::Moved {
            deleted: 10,
            partition: None,
        };
        r.apply_cold_range(&cold(2, crate::model::hot::cold::DeleteState::Kept), 1);
        r.apply_cold_range(&cold(1, moved.clone()), 2);
        assert_eq!(r.cold.as_ref().unwrap().version, 2);
        r.apply_cold_range(&cold(2, moved.clone()), 3);
        assert_eq!(r.cold.as_ref().unwrap().delete, moved);
        // A new lease keeps the record of the cold copy.
        r.try_acquire("a", 10, 10).unwrap();
        assert!(r.cold.is_some());
    }

    #[test]
    fn a_partition_failing_again_and_again_backs_off() {
        let mut r = record();
        let fail = |r: &mut PartitionRecord, at: i64| {
            let lease = r.try_acquire("a", at, 10).unwrap();
            r.apply_finish_round(
                lease.generation,
                PartitionStatus::Failed,
                Some("x".into()),
                at,
            );
        };
        fail(&mut r, 100);
        assert_eq!(r.failures, 1);
        assert_eq!(r.backoff_until_ms(), None, "one failure: retried at once");
        fail(&mut r, 200);
        assert_eq!(r.backoff_until_ms(), Some(200 + FIRST_BACKOFF_MS));
        fail(&mut r, 300);
        assert_eq!(r.backoff_until_ms(), Some(300 + 2 * FIRST_BACKOFF_MS));
        for at in 400..440 {
            fail(&mut r, at);
        }
        assert_eq!(r.backoff_until_ms(), Some(439 + MAX_BACKOFF_MS));
        let lease = r.try_acquire("a", 500, 10).unwrap();
        r.apply_finish_round(lease.generation, PartitionStatus::Compacted, None, 500);
        assert_eq!((r.failures, r.backoff_until_ms()), (0, None));
    }

    #[test]
    fn stale_round_cannot_finish_a_newer_one() {
        let mut r = record();
        let old = r.try_acquire("a", 0, 10).unwrap();
        let new = r.try_acquire("b", 20, 10).unwrap();
        // A late commit of the old round is still counted, but does not complete the new round.
        let p = r.apply_commit(old.generation, "old-task", &Counters::default(), 21);
        assert!(p.newly_recorded && !p.round_complete);
        assert!(!r.apply_finish_round(old.generation, PartitionStatus::Compacted, None, 22));
        assert_eq!(r.lease.as_ref().unwrap().generation, new.generation);
    }
}
