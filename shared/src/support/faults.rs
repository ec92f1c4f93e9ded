//! Named crash points for crash-safety testing: when the environment variable
//! `COMPACTOR_CRASH_AT` names a point (`point`, or `point@N` for its N-th passage), the process
//! aborts there (no unwinding, no cleanup), the way a killed Lambda or a `kill -9` would stop
//! it. Unset, each point is one cached comparison.

use std::sync::OnceLock;

pub const ENV: &str = "COMPACTOR_CRASH_AT";

/// Every crash point, in protocol order.
pub const POINTS: &[&str] = &[
    "after-merge",
    "after-decision",
    "after-copy",
    "after-manifest",
    "after-delete",
];

/// Points inside a merge, passed once per row group: after a row group copied as it was, and
/// after an encoded one, has reached the staged output (`mid-copy@N` stops at the N-th).
pub const MERGE_POINTS: &[&str] = &["mid-copy", "mid-encode"];

/// Points of a sort in passes, passed once per step: after a run step, and after a merge step,
/// has recorded its manifest (`after-run-step@2` stops after the second).
pub const SORT_STEP_POINTS: &[&str] = &["after-run-step", "after-merge-step"];

/// Points of a rewrite (delete, update): after each input file is rewritten into staging
/// (`mid-rewrite@N`), and after the replaced files were kept under the backup prefix.
pub const REWRITE_POINTS: &[&str] = &["mid-rewrite", "after-backup"];

/// Points of a repartition: after each source file's pieces are written
/// (`mid-repartition@N`), once the write is recorded, and before each source file is deleted.
pub const REPARTITION_POINTS: &[&str] = &[
    "mid-repartition",
    "after-repartition-write",
    "before-source-delete",
];

/// The further points of a hot range's commit: "after-delete" (the cold copy is live, Postgres
/// untouched), inside a verified delete between recording its transaction id and committing
/// it, and after a delete committed but before it is recorded as done.
pub const POSTGRES_POINTS: &[&str] = &[
    "after-delete",
    "before-postgres-commit",
    "mid-postgres-delete",
];

/// The same for a partition drop (`drop_partitions`).
pub const POSTGRES_DROP_POINTS: &[&str] = &["before-partition-drop-commit", "after-partition-drop"];

/// Aborts the process when `COMPACTOR_CRASH_AT` names this point (`point`, or `point@N` for
/// its N-th passage in this process).
pub fn crash_point(name: &str) {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static PASSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let value = std::env::var(ENV).ok().filter(|v| !v.is_empty())?;
        Some(match value.split_once('@') {
            Some((point, n)) => (point.to_string(), n.parse().unwrap_or(1)),
            None => (value, 1),
        })
    });
    if let Some((point, nth)) = target {
        if point == name && PASSED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == *nth {
            eprintln!("{ENV}={name}@{nth}: aborting the process here");
            std::process::abort();
        }
    }
}
