//! What a merge task will cost, estimated before it runs from its inputs' sizes and the footers
//! the planner read: the bytes the merger reads, copies as they are and encodes again, its
//! peak memory, its time at a throughput (measured on the partition's earlier merges when
//! there are some), and the Lambda GB-seconds that time costs. Pure: unit-tested here.

use std::collections::HashMap;

use serde::Serialize;

use crate::model::dataset::{DatasetConfig, Mode, RowGroupCopy};
use crate::model::object::ObjectMeta;
use crate::model::passes::PassPlan;
use crate::model::plan::{codec_name, FileLayout};
use crate::model::state::Counters;

const MIB: u64 = 1 << 20;
/// Copies of healthy row groups (a ranged file copy, S3 `UploadPartCopy`) are assumed to move
/// this many bytes a second: they are neither decoded nor encoded.
pub const COPY_BYTES_PER_SEC: u64 = 400 * MIB;
/// The process beyond its buffers: runtime, allocator, footers.
const BASE_MEMORY: u64 = 48 * MIB;

/// Input bytes a merger decodes and encodes a second, and where the figure comes from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Throughput {
    pub bytes_per_sec: u64,
    /// Merges of this partition the figure was measured on (0: the configured
    /// `merge_throughput`).
    pub measured_merges: u64,
}

impl Throughput {
    /// The throughput this partition's merges reached (re-encoded bytes over merge time), or
    /// `configured` when none was measured.
    pub fn of(counters: Option<&Counters>, configured: u64) -> Self {
        match counters {
            Some(c) if c.merge_ms >= 100 && c.bytes_in > c.bytes_copied => Self {
                bytes_per_sec: ((c.bytes_in - c.bytes_copied) * 1000 / c.merge_ms).max(1),
                measured_merges: c.compactions,
            },
            _ => Self {
                bytes_per_sec: configured.max(1),
                measured_merges: 0,
            },
        }
    }
}

/// The estimate of one task.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskEstimate {
    /// Bytes the merger reads itself (the inputs but the copied row groups, which the store
    /// copies; a store that cannot copies them through the merger).
    pub read_bytes: u64,
    /// Bytes of healthy row groups copied as they are.
    pub copy_bytes: u64,
    /// Bytes decoded and encoded again.
    pub encode_bytes: u64,
    pub peak_memory: u64,
    pub seconds: f64,
    /// Lambda GB-seconds of the merge, for a function whose merge budget is `memory_budget`
    /// (90% of its memory).
    pub gb_seconds: f64,
    pub throughput: Throughput,
    /// Sort mode, inputs over `max_task_bytes`: the run steps of the sort in passes (then as
    /// many merge steps, about); 0 when the partition is sorted in one step.
    pub sort_run_steps: usize,
}

/// A sort in passes reads and writes everything twice, partly in parallel: its measured
/// throughput is about this fraction of a one-step sort's (`bench/sort.py`).
pub const PASSES_SPEED: f64 = 0.7;

/// Bytes of `inputs` that a merge would copy as they are: the healthy row groups of files whose
/// footer the planner read (concat mode, copies allowed; with `same-codec`, only files in the
/// configured codec). Files whose footers were not read count as re-encoded.
pub fn copy_bytes(
    inputs: &[ObjectMeta],
    layouts: &HashMap<String, FileLayout>,
    dataset: &DatasetConfig,
) -> u64 {
    if dataset.mode != Mode::Concat || dataset.row_group_copy == RowGroupCopy::Off {
        return 0;
    }
    let codec = codec_name(&dataset.compression);
    inputs
        .iter()
        .filter_map(|f| layouts.get(&f.key))
        .filter(|l| {
            dataset.row_group_copy == RowGroupCopy::AnyCodec
                || l.codecs.iter().all(|c| codec_name(c) == codec)
        })
        .flat_map(|l| l.row_groups.iter())
        .filter(|g| g.is_healthy(dataset))
        .map(|g| g.compressed)
        .sum()
}

pub fn estimate_task(
    inputs: &[ObjectMeta],
    layouts: &HashMap<String, FileLayout>,
    dataset: &DatasetConfig,
    memory_budget: u64,
    throughput: Throughput,
) -> TaskEstimate {
    let total: u64 = inputs.iter().map(|f| f.size).sum();
    let copy = copy_bytes(inputs, layouts, dataset).min(total);
    let encode = total - copy;
    let working = match dataset.mode {
        // The external sorter fills its budget before it spills.
        Mode::Sort => memory_budget.min(encode.saturating_mul(4)),
        // Decoded read-ahead (a quarter of the budget) and the row group being encoded.
        Mode::Concat => {
            (memory_budget / 4).min(encode.saturating_mul(4))
                + (2 * dataset.row_group_size.bytes()).min(encode.saturating_mul(2))
        }
    };
    let sort_run_steps = match dataset.mode {
        Mode::Sort if total > dataset.max_task_bytes.bytes() => {
            PassPlan::new(inputs, dataset.max_task_bytes.bytes())
                .runs
                .len()
        }
        _ => 0,
    };
    let speed = if sort_run_steps > 0 {
        PASSES_SPEED
    } else {
        1.0
    };
    let seconds = encode as f64 / (throughput.bytes_per_sec as f64 * speed)
        + copy as f64 / COPY_BYTES_PER_SEC as f64;
    let function_gb = memory_budget as f64 / 0.9 / (1u64 << 30) as f64;
    TaskEstimate {
        read_bytes: encode,
        copy_bytes: copy,
        encode_bytes: encode,
        peak_memory: BASE_MEMORY + working.min(memory_budget),
        seconds,
        gb_seconds: seconds * function_gb,
        throughput,
        sort_run_steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::plan::RowGroupLayout;
    use crate::support::units::ByteSize;

    fn file(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            version: "v".into(),
            last_modified_ms: 0,
        }
    }

    fn group(compressed: u64) -> RowGroupLayout {
        RowGroupLayout {
            rows: 1000,
            compressed,
            uncompressed: compressed * 3,
        }
    }

    #[test]
    fn healthy_row_groups_are_copied_and_the_rest_encoded() {
        let mut ds = DatasetConfig::new("e", "e/", "dt={date}");
        ds.healthy_row_group_size = ByteSize::mib(8);
        let layouts = HashMap::from([(
            "e/big".to_string(),
            FileLayout {
                row_groups: vec![group(10 * MIB), group(MIB), group(20 * MIB)],
                codecs: vec!["SNAPPY".into()],
            },
        )]);
        let inputs = [file("e/big", 31 * MIB), file("e/small", 9 * MIB)];
        let rate = Throughput::of(None, 10 * MIB);
        let e = estimate_task(&inputs, &layouts, &ds, 1 << 30, rate);
        assert_eq!(e.copy_bytes, 30 * MIB);
        assert_eq!(e.encode_bytes, 10 * MIB);
        assert!(
            (e.seconds - (1.0 + 30.0 / 400.0)).abs() < 1e-9,
            "{}",
            e.seconds
        );
        assert!((e.gb_seconds - e.seconds / 0.9).abs() < 1e-9);
        assert!(e.peak_memory <= (1 << 30) + BASE_MEMORY);

        // same-codec copies only files in the configured codec (zstd here); off copies nothing.
        ds.row_group_copy = RowGroupCopy::SameCodec;
        assert_eq!(copy_bytes(&inputs, &layouts, &ds), 0);
        ds.row_group_copy = RowGroupCopy::Off;
        assert_eq!(copy_bytes(&inputs, &layouts, &ds), 0);
        ds.row_group_copy = RowGroupCopy::AnyCodec;
        ds.mode = Mode::Sort;
        assert_eq!(copy_bytes(&inputs, &layouts, &ds), 0);
    }

    #[test]
    fn a_partition_measured_before_uses_its_own_throughput() {
        let measured = Counters {
            compactions: 3,
            bytes_in: 300 * MIB,
            bytes_copied: 100 * MIB,
            merge_ms: 4_000,
            ..Counters::default()
        };
        let t = Throughput::of(Some(&measured), 7);
        assert_eq!((t.bytes_per_sec, t.measured_merges), (50 * MIB, 3));
        let t = Throughput::of(Some(&Counters::default()), 7);
        assert_eq!((t.bytes_per_sec, t.measured_merges), (7, 0));
    }
}
