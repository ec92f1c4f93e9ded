//! Pure planning: which files of a partition to compact and how to group them into merge tasks.
//! No I/O here, so every rule is unit-tested directly.

use std::collections::HashSet;

use crate::model::dataset::{DatasetConfig, Mode};
use crate::model::object::{file_name, ObjectMeta};

/// Is this key a data file of the dataset (not hidden, not a marker, right suffix)?
pub fn is_data_file(key: &str, suffix: &str) -> bool {
    let name = file_name(key);
    !name.is_empty()
        && !name.starts_with('_')
        && !name.starts_with('.')
        && (suffix.is_empty()
            || name
                .to_ascii_lowercase()
                .ends_with(&suffix.to_ascii_lowercase()))
}

/// What the planner decided for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionDecision {
    Skip(SkipReason),
    /// Groups of inputs; each becomes one merge task.
    Compact(Vec<Vec<ObjectMeta>>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// No file arrived since the last compaction.
    NothingNew,
    /// Fewer candidate files than `min_file_count`.
    TooFewFiles { candidates: usize, min: usize },
    /// A hot range with rows that are not final yet (`final_through` is the last final value;
    /// `None` for an empty table).
    NotFinal { final_through: Option<i64> },
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::NothingNew => write!(f, "already compacted, no new files"),
            SkipReason::TooFewFiles { candidates, min } => {
                write!(f, "{candidates} candidate file(s), min_file_count is {min}")
            }
            SkipReason::NotFinal {
                final_through: Some(through),
            } => write!(f, "not final: rows up to {through} are final"),
            SkipReason::NotFinal {
                final_through: None,
            } => write!(f, "not final: the table has no rows for this chain"),
        }
    }
}

/// Decides what to do with a partition's data files. `own_outputs` holds the keys this product
/// wrote in earlier rounds (from the partition manifest): they never trigger work on their own,
/// which makes a second run a no-op, but they are merged again when new files arrive (small
/// leftovers in concat mode, everything in sort mode so the partition stays globally sorted).
pub fn decide(
    files: &[ObjectMeta],
    own_outputs: &HashSet<String>,
    dataset: &DatasetConfig,
) -> PartitionDecision {
    let threshold = dataset.small_file_threshold.bytes();
    let (own, new): (Vec<&ObjectMeta>, Vec<&ObjectMeta>) =
        files.iter().partition(|f| own_outputs.contains(&f.key));
    let candidates: Vec<ObjectMeta> = match dataset.mode {
        Mode::Concat => new
            .iter()
            .chain(own.iter())
            .filter(|f| f.size < threshold)
            .map(|f| (*f).clone())
            .collect(),
        Mode::Sort => files.to_vec(),
    };
    let new_candidates = match dataset.mode {
        Mode::Concat => new.iter().filter(|f| f.size < threshold).count(),
        Mode::Sort => new.len(),
    };
    if new_candidates == 0 {
        return PartitionDecision::Skip(SkipReason::NothingNew);
    }
    if candidates.len() < dataset.min_file_count {
        return PartitionDecision::Skip(SkipReason::TooFewFiles {
            candidates: candidates.len(),
            min: dataset.min_file_count,
        });
    }
    let mut candidates = candidates;
    candidates.sort_by(|a, b| a.key.cmp(&b.key));
    let groups = match dataset.mode {
        // A global sort needs every row of the partition in one merge.
        Mode::Sort => vec![candidates],
        Mode::Concat => bin_pack(candidates, dataset.max_task_bytes.bytes(), |f| f.size),
    };
    PartitionDecision::Compact(groups)
}

/// Packs items, in their given order (key order keeps time-adjacent files together), into
/// consecutive groups of at most `target` total size; an item larger than `target` gets a group of
/// its own. A trailing group of a single item joins the previous group rather than being
/// "compacted" alone.
pub fn bin_pack<T>(items: Vec<T>, target: u64, size: impl Fn(&T) -> u64) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut current_size = 0u64;
    for item in items {
        let s = size(&item);
        if !current.is_empty() && current_size + s > target {
            groups.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current_size += s;
        current.push(item);
    }
    if !current.is_empty() {
        if current.len() == 1 && !groups.is_empty() {
            if let Some(last) = groups.last_mut() {
                last.extend(current);
            }
        } else {
            groups.push(current);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::units::ByteSize;

    fn file(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size,
            version: "v1".into(),
            last_modified_ms: 0,
        }
    }

    fn dataset(mode: Mode) -> DatasetConfig {
        let mut d = DatasetConfig::new("ds", "events/", "dt={date}");
        d.mode = mode;
        d.target_file_size = ByteSize(100);
        d.max_task_bytes = ByteSize(100);
        d.small_file_threshold = ByteSize(50);
        if mode == Mode::Sort {
            d.sort_key = vec!["ts".into()];
        }
        d
    }

    #[test]
    fn data_files_exclude_markers_and_hidden_files() {
        assert!(is_data_file("a/part-0.parquet", ".parquet"));
        assert!(is_data_file("a/PART.PARQUET", ".parquet"));
        assert!(!is_data_file("a/_SUCCESS", ".parquet"));
        assert!(!is_data_file("a/_manifest.json", ""));
        assert!(!is_data_file("a/.part.parquet.crc", ""));
        assert!(!is_data_file("a/notes.txt", ".parquet"));
        assert!(is_data_file("a/firehose-1-2024", ""));
    }

    #[test]
    fn bin_pack_respects_target_and_order() {
        let sizes = vec![40, 40, 40, 10, 90, 200, 5, 5];
        let groups = bin_pack(sizes, 100, |s| *s);
        assert_eq!(
            groups,
            vec![vec![40, 40], vec![40, 10], vec![90], vec![200], vec![5, 5]]
        );
        for g in &groups {
            assert!(g.iter().sum::<u64>() <= 100 || g.len() == 1);
        }
    }

    #[test]
    fn bin_pack_folds_a_trailing_single_into_the_previous_group() {
        assert_eq!(
            bin_pack(vec![60, 30, 20], 100, |s| *s),
            vec![vec![60, 30, 20]]
        );
        assert_eq!(bin_pack(vec![7], 100, |s| *s), vec![vec![7]]);
        assert!(bin_pack(Vec::<u64>::new(), 100, |s| *s).is_empty());
    }

    #[test]
    fn bin_pack_keeps_every_item_exactly_once() {
        let sizes: Vec<u64> = (0..500).map(|i| (i * 37 % 101) as u64).collect();
        let groups = bin_pack(sizes.clone(), 300, |s| *s);
        let flat: Vec<u64> = groups.into_iter().flatten().collect();
        assert_eq!(flat, sizes);
    }

    #[test]
    fn concat_selects_small_new_files_and_packs_them() {
        let files = vec![
            file("p/a", 30),
            file("p/b", 30),
            file("p/c", 30),
            file("p/big", 80),
        ];
        match decide(&files, &HashSet::new(), &dataset(Mode::Concat)) {
            PartitionDecision::Compact(groups) => {
                let keys: Vec<Vec<&str>> = groups
                    .iter()
                    .map(|g| g.iter().map(|f| f.key.as_str()).collect())
                    .collect();
                assert_eq!(keys, vec![vec!["p/a", "p/b", "p/c"]]);
            }
            other => panic!("expected compaction, got {other:?}"),
        }
    }

    #[test]
    fn own_outputs_alone_never_trigger_work() {
        let files = vec![file("p/out-0", 30), file("p/out-1", 90)];
        let own: HashSet<String> = files.iter().map(|f| f.key.clone()).collect();
        for mode in [Mode::Concat, Mode::Sort] {
            assert_eq!(
                decide(&files, &own, &dataset(mode)),
                PartitionDecision::Skip(SkipReason::NothingNew)
            );
        }
    }

    #[test]
    fn late_file_merges_with_small_leftover_in_concat_mode() {
        let files = vec![file("p/out-0", 90), file("p/out-1", 20), file("p/late", 10)];
        let own: HashSet<String> = ["p/out-0", "p/out-1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        match decide(&files, &own, &dataset(Mode::Concat)) {
            PartitionDecision::Compact(groups) => {
                assert_eq!(groups.len(), 1);
                let keys: Vec<&str> = groups[0].iter().map(|f| f.key.as_str()).collect();
                assert_eq!(keys, vec!["p/late", "p/out-1"]);
            }
            other => panic!("expected compaction, got {other:?}"),
        }
    }

    #[test]
    fn sort_mode_keeps_the_whole_partition_in_one_group() {
        let files = vec![file("p/out-0", 90), file("p/late", 10), file("p/big", 500)];
        let own: HashSet<String> = ["p/out-0".to_string()].into_iter().collect();
        match decide(&files, &own, &dataset(Mode::Sort)) {
            PartitionDecision::Compact(groups) => {
                assert_eq!(groups.len(), 1);
                assert_eq!(groups[0].len(), 3);
            }
            other => panic!("expected compaction, got {other:?}"),
        }
    }

    #[test]
    fn too_few_files_is_explained() {
        let files = vec![file("p/a", 10)];
        assert_eq!(
            decide(&files, &HashSet::new(), &dataset(Mode::Concat)),
            PartitionDecision::Skip(SkipReason::TooFewFiles {
                candidates: 1,
                min: 2
            })
        );
    }
}
