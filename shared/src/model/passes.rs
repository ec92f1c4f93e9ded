//! A sort in passes: how a partition too large for one merger invocation is sorted across as
//! many as it needs. The partition's task stays one task (one commit, so readers never see a
//! half-sorted partition); its work is split into steps, each of about `step_bytes`, run one
//! after the other, each recorded in staging when done so a resumed task continues after the
//! last finished step:
//!
//! ```text
//! <task dir>/_passes.json            the run steps: which inputs each sorts (create-if-absent)
//! <task dir>/run-0001/…              a run step: its inputs sorted into staged Parquet files,
//!                                    with a sample of its keys, _manifest.json when done
//! <task dir>/_ranges.json            the key ranges of the merge steps, chosen from the samples
//! <task dir>/merge-0001/…            a merge step: the rows of every run in its key range,
//!                                    merged and numbered from the rows of the ranges before it
//! <task dir>/_manifest.json          the task's manifest: the merge steps' outputs in order
//! ```
//!
//! Pure: the step plan, the range choice and the assembly checks are unit-tested here.

use serde::{Deserialize, Serialize};

use crate::model::object::ObjectMeta;
use crate::model::plan::bin_pack;

/// The plan of the run steps.
pub const PASSES: &str = "_passes.json";
/// The key ranges of the merge steps.
pub const RANGES: &str = "_ranges.json";
/// Rows between two sampled keys of a run.
pub const SAMPLE_EVERY: u64 = 1024;

/// The run steps of a sort in passes, written once when the task starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassPlan {
    /// Input bytes a step handles at most.
    pub step_bytes: u64,
    /// The input keys each run step sorts, in input order.
    pub runs: Vec<Vec<String>>,
}

impl PassPlan {
    /// Groups `inputs` (in key order) into run steps of at most `step_bytes` each.
    pub fn new(inputs: &[ObjectMeta], step_bytes: u64) -> Self {
        let mut sorted: Vec<&ObjectMeta> = inputs.iter().collect();
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        let runs = bin_pack(sorted, step_bytes.max(1), |f| f.size)
            .into_iter()
            .map(|group| group.into_iter().map(|f| f.key.clone()).collect())
            .collect();
        Self { step_bytes, runs }
    }
}

/// The key ranges of the merge steps: `bounds[i]` is where range `i + 1` starts (its rows have
/// keys at least that; range 0 takes every key below `bounds[0]`, the last every key from the
/// last bound on). Each bound is one key, Arrow IPC in base64.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangePlan {
    pub bounds: Vec<String>,
}

impl RangePlan {
    pub fn ranges(&self) -> usize {
        self.bounds.len() + 1
    }
}

/// What a run step recorded besides its outputs: every `every`-th key of its sorted rows
/// (ranks 0, every, 2·every, …), Arrow IPC in base64, for choosing the merge ranges and for
/// skipping to a range without reading the rows before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSamples {
    pub every: u64,
    pub keys: String,
}

/// The task directory (`…/<task>/`) whose step finished with the manifest at `key`
/// (`…/<task>/<step>/_manifest.json`); `None` for any other key. A task's finished steps are
/// its progress: counted from a listing, they tell a resumed task from one that is stuck.
pub fn finished_step_of(key: &str) -> Option<&str> {
    let step_dir = key
        .strip_suffix(crate::model::task::MANIFEST)?
        .strip_suffix('/')?;
    let (task_dir, step) = step_dir.rsplit_once('/')?;
    let is_step = step.starts_with("run-") || step.starts_with("merge-");
    is_step.then(|| &key[..task_dir.len() + 1])
}

/// The name of run step `i` (from 0) and of merge step `i`.
pub fn run_step_name(i: usize) -> String {
    format!("run-{:04}", i + 1)
}

pub fn merge_step_name(i: usize) -> String {
    format!("merge-{:04}", i + 1)
}

/// Chooses range bounds from the runs' sampled keys so that each range holds about
/// `step_bytes`: `samples` are (key, bytes of the run's rows from that key to the next sample).
/// Bounds are strictly increasing, so equal keys never straddle two ranges.
pub fn choose_bounds<K: Ord + Clone>(mut samples: Vec<(K, u64)>, step_bytes: u64) -> Vec<K> {
    samples.sort_by(|a, b| a.0.cmp(&b.0));
    let mut bounds: Vec<K> = Vec::new();
    let mut filled = 0u64;
    let mut previous: Option<K> = None;
    for (key, bytes) in samples {
        // A bound above the key before it: no range is empty, equal keys stay together.
        if filled >= step_bytes.max(1) && previous.as_ref().is_some_and(|p| *p < key) {
            bounds.push(key.clone());
            filled = 0;
        }
        filled += bytes;
        previous = Some(key);
    }
    bounds
}

/// The first row's `seq` of each merge step, from the rows of the steps before it, checked
/// against what each step found below its range; and that the steps hold every run's row.
pub fn check_assembly(
    run_rows: u64,
    steps: &[(u64 /* seq start found */, u64 /* rows */)],
) -> Result<(), String> {
    let mut next = 0u64;
    for (i, &(start, rows)) in steps.iter().enumerate() {
        if start != next {
            return Err(format!(
                "merge step {} starts at seq {start}, but the steps before it hold {next} rows",
                i + 1
            ));
        }
        next += rows;
    }
    if next != run_rows {
        return Err(format!(
            "the merge steps hold {next} rows, the runs {run_rows}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            version: "v".into(),
            last_modified_ms: 0,
        }
    }

    #[test]
    fn run_steps_take_inputs_in_key_order_up_to_the_step_size() {
        let inputs = vec![file("c", 40), file("a", 40), file("b", 40), file("d", 40)];
        let plan = PassPlan::new(&inputs, 80);
        assert_eq!(plan.runs, vec![vec!["a", "b"], vec!["c", "d"]]);
        let one = PassPlan::new(&inputs, 1 << 30);
        assert_eq!(one.runs.len(), 1);
    }

    #[test]
    fn bounds_split_the_sampled_bytes_evenly_and_never_split_equal_keys() {
        // Two runs sampled at 0,10,20,... and 5,15,25,...: 100 bytes per sample.
        let samples: Vec<(u32, u64)> = (0..10)
            .flat_map(|i| [(i * 10, 100), (i * 10 + 5, 100)])
            .collect();
        let bounds = choose_bounds(samples, 500);
        assert_eq!(bounds, vec![25, 50, 75]);
        // Many equal keys: one bound at most between them.
        let same: Vec<(u32, u64)> = (0..10).map(|_| (7, 100)).chain([(9, 100)]).collect();
        assert_eq!(choose_bounds(same, 100), vec![9]);
        assert!(choose_bounds(Vec::<(u32, u64)>::new(), 100).is_empty());
    }

    #[test]
    fn finished_steps_are_told_by_their_manifests() {
        assert_eq!(
            finished_step_of("st/ds/p=1/g000001-t0000/run-0002/_manifest.json"),
            Some("st/ds/p=1/g000001-t0000/")
        );
        assert_eq!(
            finished_step_of("st/ds/g000001-t0000/merge-0001/_manifest.json"),
            Some("st/ds/g000001-t0000/")
        );
        // The task's own manifest, and a step's outputs, are not finished steps.
        assert_eq!(
            finished_step_of("st/ds/p=1/g000001-t0000/_manifest.json"),
            None
        );
        assert_eq!(
            finished_step_of("st/ds/p=1/g000001-t0000/run-0002/a1-00000.parquet"),
            None
        );
    }

    #[test]
    fn assembly_needs_contiguous_seq_and_every_row() {
        assert!(check_assembly(10, &[(0, 4), (4, 6)]).is_ok());
        let gap = check_assembly(10, &[(0, 4), (5, 5)]).unwrap_err();
        assert!(gap.contains("merge step 2 starts at seq 5"), "{gap}");
        let short = check_assembly(10, &[(0, 4), (4, 5)]).unwrap_err();
        assert!(short.contains("hold 9 rows, the runs 10"), "{short}");
    }
}
