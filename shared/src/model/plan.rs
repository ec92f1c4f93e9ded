//! Pure planning: which files of a partition to compact and how to group them into merge tasks.
//! No I/O here, so every rule is unit-tested directly.

use std::collections::{HashMap, HashSet};

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

/// A codec's name without its level: `ZSTD(ZstdLevel(1))`, `zstd(3)` -> `ZSTD`.
pub fn codec_name(codec: &str) -> String {
    codec
        .split('(')
        .next()
        .unwrap_or(codec)
        .trim()
        .to_ascii_uppercase()
}

/// One row group as a file's footer describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowGroupLayout {
    pub rows: u64,
    /// Bytes of its column chunks as stored (compressed).
    pub compressed: u64,
    pub uncompressed: u64,
}

/// A file's row groups and codecs, from its footer alone (two small ranged reads).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileLayout {
    pub row_groups: Vec<RowGroupLayout>,
    /// The distinct codecs of its column chunks, e.g. `["SNAPPY"]`.
    pub codecs: Vec<String>,
}

impl RowGroupLayout {
    /// A row group of at least `healthy_row_group_size` (capped at `row_group_size`, so the
    /// product's own row groups are healthy whatever the setting) or of `row_group_rows` rows.
    /// Healthy row groups are copied into outputs as they are; the others are re-encoded.
    pub fn is_healthy(&self, dataset: &DatasetConfig) -> bool {
        let healthy = dataset
            .healthy_row_group_size
            .bytes()
            .min(dataset.row_group_size.bytes());
        self.compressed >= healthy || self.rows >= dataset.row_group_rows as u64
    }
}

impl FileLayout {
    /// Row groups that are not healthy, not counting the last one (a writer's remainder).
    pub fn fragmented_row_groups(&self, dataset: &DatasetConfig) -> usize {
        let all_but_last = self.row_groups.len().saturating_sub(1);
        self.row_groups[..all_but_last]
            .iter()
            .filter(|g| !g.is_healthy(dataset))
            .count()
    }
}

/// Why a file is, or is not, a compaction candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileVerdict {
    /// Under `small_file_threshold`.
    Small,
    /// Large, but with `tiny` of its `row_groups` under the healthy size.
    Fragmented { tiny: usize, row_groups: usize },
    /// Large, and its row groups are healthy (or only its last one is short).
    Healthy { row_groups: usize },
    /// Large, and its footer was not read (an output of this product, or unreadable).
    Large,
    /// Sort mode: every file of the partition is merged.
    Sorted,
}

impl FileVerdict {
    pub fn is_candidate(&self) -> bool {
        matches!(
            self,
            FileVerdict::Small | FileVerdict::Fragmented { .. } | FileVerdict::Sorted
        )
    }
}

impl std::fmt::Display for FileVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileVerdict::Small => write!(f, "small: under small_file_threshold"),
            FileVerdict::Fragmented { tiny, row_groups } => write!(
                f,
                "fragmented: {tiny} of its {row_groups} row groups under healthy_row_group_size"
            ),
            FileVerdict::Healthy { row_groups } => {
                write!(
                    f,
                    "healthy: large, {row_groups} healthy row group(s); left alone"
                )
            }
            FileVerdict::Large => write!(f, "large; left alone"),
            FileVerdict::Sorted => write!(f, "sort mode: merged with the whole partition"),
        }
    }
}

/// The verdict on one file, given the layouts read from large files' footers.
pub fn verdict(
    file: &ObjectMeta,
    layouts: &HashMap<String, FileLayout>,
    dataset: &DatasetConfig,
) -> FileVerdict {
    if dataset.mode == Mode::Sort {
        return FileVerdict::Sorted;
    }
    if file.size < dataset.small_file_threshold.bytes() {
        return FileVerdict::Small;
    }
    match layouts.get(&file.key) {
        None => FileVerdict::Large,
        Some(layout) => {
            let tiny = layout.fragmented_row_groups(dataset);
            let row_groups = layout.row_groups.len();
            if tiny >= 2 {
                FileVerdict::Fragmented { tiny, row_groups }
            } else {
                FileVerdict::Healthy { row_groups }
            }
        }
    }
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
    /// A rewrite: the predicate cannot match the partition's template fields (no file read).
    Pruned,
    /// A rewrite: no row of the partition matches the predicate.
    NoMatchingRows,
    /// Interrupted work of the partition is being finished first (its commit, or its merge
    /// dispatched again); the partition is planned anew by the next run.
    Resuming,
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
            SkipReason::Pruned => write!(f, "pruned: the predicate rules out the partition"),
            SkipReason::NoMatchingRows => write!(f, "no matching row"),
            SkipReason::Resuming => write!(
                f,
                "interrupted work was finished first; run again to look at it anew"
            ),
        }
    }
}

/// Decides what to do with a partition's data files. `own_outputs` holds the keys this product
/// wrote in earlier rounds (from the partition manifest): they never trigger work on their own,
/// which makes a second run a no-op, but they are merged again when new files arrive (small
/// leftovers in concat mode, everything in sort mode so the partition stays globally sorted).
/// `layouts` holds the footers read from large files: a fragmented one is a candidate.
pub fn decide(
    files: &[ObjectMeta],
    own_outputs: &HashSet<String>,
    layouts: &HashMap<String, FileLayout>,
    dataset: &DatasetConfig,
) -> PartitionDecision {
    let (own, new): (Vec<&ObjectMeta>, Vec<&ObjectMeta>) =
        files.iter().partition(|f| own_outputs.contains(&f.key));
    let is_candidate = |f: &ObjectMeta| verdict(f, layouts, dataset).is_candidate();
    let candidates: Vec<ObjectMeta> = new
        .iter()
        .chain(own.iter())
        .filter(|f| is_candidate(f))
        .map(|f| (*f).clone())
        .collect();
    let new_candidates = new.iter().filter(|f| is_candidate(f)).count();
    if new_candidates == 0 {
        return PartitionDecision::Skip(SkipReason::NothingNew);
    }
    // A fragmented file is worth rewriting on its own; small files wait for company.
    let fragmented = candidates
        .iter()
        .any(|f| matches!(verdict(f, layouts, dataset), FileVerdict::Fragmented { .. }));
    if candidates.len() < dataset.min_file_count && !fragmented {
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

    fn layout(groups: &[(u64, u64)]) -> FileLayout {
        FileLayout {
            row_groups: groups
                .iter()
                .map(|&(rows, compressed)| RowGroupLayout {
                    rows,
                    compressed,
                    uncompressed: compressed * 3,
                })
                .collect(),
            codecs: vec!["SNAPPY".into()],
        }
    }

    #[test]
    fn large_files_are_candidates_only_when_fragmented() {
        let mut d = dataset(Mode::Concat);
        d.healthy_row_group_size = ByteSize(20);
        d.row_group_rows = 1000;
        let files = vec![
            file("p/fragmented.parquet", 90),
            file("p/healthy.parquet", 90),
            file("p/short-tail.parquet", 90),
            file("p/compressible.parquet", 90),
            file("p/unread.parquet", 90),
            file("p/small.parquet", 10),
        ];
        let layouts = HashMap::from([
            ("p/fragmented.parquet".to_string(), layout(&[(10, 5); 18])),
            (
                "p/healthy.parquet".to_string(),
                layout(&[(500, 45), (500, 45)]),
            ),
            (
                "p/short-tail.parquet".to_string(),
                layout(&[(800, 80), (100, 10)]),
            ),
            // Tiny in bytes, but each holds the row target: healthy.
            (
                "p/compressible.parquet".to_string(),
                layout(&[(1000, 5); 18]),
            ),
        ]);
        let verdicts: Vec<String> = files
            .iter()
            .map(|f| verdict(f, &layouts, &d).to_string())
            .collect();
        assert_eq!(
            verdicts,
            vec![
                "fragmented: 17 of its 18 row groups under healthy_row_group_size",
                "healthy: large, 2 healthy row group(s); left alone",
                "healthy: large, 2 healthy row group(s); left alone",
                "healthy: large, 18 healthy row group(s); left alone",
                "large; left alone",
                "small: under small_file_threshold",
            ]
        );
        match decide(&files, &HashSet::new(), &layouts, &d) {
            PartitionDecision::Compact(groups) => {
                let keys: Vec<&str> = groups.iter().flatten().map(|f| f.key.as_str()).collect();
                assert_eq!(keys, vec!["p/fragmented.parquet", "p/small.parquet"]);
            }
            other => panic!("{other:?}"),
        }
        // A fragmented file alone is rewritten: it is as slow to read as many small files.
        assert!(matches!(
            decide(&files[..1], &HashSet::new(), &layouts, &d),
            PartitionDecision::Compact(groups) if groups.len() == 1
        ));
        // Without the fragmented file's footer, only the small file is a candidate: too few.
        assert!(matches!(
            decide(&files, &HashSet::new(), &HashMap::new(), &d),
            PartitionDecision::Skip(SkipReason::TooFewFiles { candidates: 1, .. })
        ));
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
        match decide(
            &files,
            &HashSet::new(),
            &HashMap::new(),
            &dataset(Mode::Concat),
        ) {
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
                decide(&files, &own, &HashMap::new(), &dataset(mode)),
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
        match decide(&files, &own, &HashMap::new(), &dataset(Mode::Concat)) {
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
        match decide(&files, &own, &HashMap::new(), &dataset(Mode::Sort)) {
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
            decide(
                &files,
                &HashSet::new(),
                &HashMap::new(),
                &dataset(Mode::Concat)
            ),
            PartitionDecision::Skip(SkipReason::TooFewFiles {
                candidates: 1,
                min: 2
            })
        );
    }
}
