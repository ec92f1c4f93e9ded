//! How a merge divides its `memory_budget`, so that the budget is the bound on its peak memory:
//! a reserve for the process itself (runtime, allocator, footers, encoder queues), and the rest
//! shared by the buffers of each phase. Reading (decoded read-ahead) and, in sort mode, the run
//! buffer being filled and sorted live together; the k-way merge's open batches and the row
//! group being encoded live together later. Pure: unit-tested here.

const MIB: u64 = 1 << 20;
/// What the process needs besides its buffers.
pub const RESERVE: u64 = 40 * MIB;
/// The smallest budget a merge accepts.
pub const MIN_BUDGET: u64 = 96 * MIB;

/// The buffers of one merge, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeMemory {
    /// Decoded batches read ahead of the consumer.
    pub read_ahead: u64,
    /// Sort mode: Arrow bytes buffered into one sorted run before it is spilled. Sorting it
    /// costs as much again (key rows, indices, the run's output batches).
    pub sort_run: u64,
    /// Sort mode: the batches the k-way merge holds open, one per run.
    pub merge: u64,
    /// Compressed bytes of the row group being encoded (at most the dataset's
    /// `row_group_size`), with as much again for its uncompressed pages.
    pub row_group: u64,
}

impl MergeMemory {
    /// Splits `budget` for a merge in sort mode (`sort`) or concat mode.
    pub fn split(budget: u64, sort: bool, row_group_size: u64) -> Self {
        let rest = budget.max(MIN_BUDGET) - RESERVE;
        if sort {
            // Reading: read-ahead + run + its sorting overhead. Merging: open batches + row group.
            Self {
                read_ahead: rest / 8,
                sort_run: rest / 4,
                merge: rest / 2,
                row_group: (rest / 8).min(row_group_size),
            }
        } else {
            Self {
                read_ahead: rest / 2,
                sort_run: 0,
                merge: 0,
                row_group: (rest / 4).min(row_group_size),
            }
        }
    }

    /// Peak of the reading phase and of the writing phase, overheads included.
    pub fn peaks(&self) -> (u64, u64) {
        let reading = self.read_ahead + 2 * self.sort_run + 2 * self.row_group;
        let writing = self.merge + 2 * self.row_group;
        (RESERVE + reading, RESERVE + writing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_fits_the_budget() {
        for budget in [MIN_BUDGET, 128 * MIB, 256 * MIB, 1 << 30, 8 << 30] {
            for sort in [false, true] {
                for row_group_size in [MIB, 64 * MIB, 1 << 30] {
                    let m = MergeMemory::split(budget, sort, row_group_size);
                    let (reading, writing) = m.peaks();
                    assert!(
                        reading <= budget && writing <= budget,
                        "{budget} {sort} {m:?}"
                    );
                    assert!(m.row_group <= row_group_size);
                    assert!(m.read_ahead > 0);
                    assert_eq!(sort, m.sort_run > 0 && m.merge > 0);
                }
            }
        }
    }

    #[test]
    fn a_budget_under_the_minimum_is_raised_to_it() {
        assert_eq!(
            MergeMemory::split(10 * MIB, true, 64 * MIB),
            MergeMemory::split(MIN_BUDGET, true, 64 * MIB)
        );
    }
}
