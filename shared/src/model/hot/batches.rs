//! The delete batches of an export, cut while its rows stream past (pure; no I/O).
//!
//! Rows arrive in range-column order. Consecutive values are grouped into batches of at most
//! `max_rows` rows, each covering a sub-range of the range column (so a row arriving later
//! anywhere in it is seen by the batch's delete). A single value holding more rows than that
//! (a very busy block) is cut into batches of exactly located rows instead: each lists the
//! rows' locators (table and ctid as the export saw them), so no DELETE ever removes more than
//! `max_rows` rows whatever the distribution of rows over the range column. Every batch knows
//! the rows it covers in export order (`first_row`) and their [`RowDigest`].

use serde::{Deserialize, Serialize};

use crate::model::hot::digest::RowDigest;
use crate::model::hot::range::KeyRange;

/// Where a row lives: the oid of its (leaf) table and its ctid (block, offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RowLocator(pub u32, pub u32, pub u16);

impl RowLocator {
    /// From the binary forms of `tableoid::oid` (4 bytes) and `ctid` (6 bytes).
    pub fn from_binary(table: &[u8], ctid: &[u8]) -> Result<Self, String> {
        match (table, ctid) {
            ([t0, t1, t2, t3], [b0, b1, b2, b3, o0, o1]) => Ok(RowLocator(
                u32::from_be_bytes([*t0, *t1, *t2, *t3]),
                u32::from_be_bytes([*b0, *b1, *b2, *b3]),
                u16::from_be_bytes([*o0, *o1]),
            )),
            _ => Err(format!(
                "unexpected row locator ({} byte oid, {} byte ctid)",
                table.len(),
                ctid.len()
            )),
        }
    }

    /// The ctid as Postgres writes it, `(block,offset)`.
    pub fn ctid_text(&self) -> String {
        format!("({},{})", self.1, self.2)
    }
}

/// Which rows a batch deletes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchScope {
    /// Every row of this sub-range (no more than the batch's row count).
    Range(KeyRange),
    /// The rows at these locators, all with range value `value`.
    Located { value: i64, rows: Vec<RowLocator> },
}

impl BatchScope {
    /// The sub-range of the range column the batch's rows lie in.
    pub fn range(&self) -> KeyRange {
        match self {
            BatchScope::Range(r) => *r,
            BatchScope::Located { value, .. } => KeyRange {
                start: *value,
                end: *value + 1,
            },
        }
    }
}

impl std::fmt::Display for BatchScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchScope::Range(r) => write!(f, "{r}"),
            BatchScope::Located { value, rows } => {
                write!(f, "{} located rows of value {value}", rows.len())
            }
        }
    }
}

/// One delete batch: rows `[first_row, first_row + digest.rows)` of the export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteBatch {
    pub first_row: u64,
    pub digest: RowDigest,
    pub scope: BatchScope,
}

impl DeleteBatch {
    pub fn rows(&self) -> u64 {
        self.digest.rows
    }
}

/// The rows seen so far of the value being streamed.
struct CurrentValue {
    value: i64,
    /// Rows of this value before the open part (already cut into located batches).
    parts: Vec<DeleteBatch>,
    part_first_row: u64,
    part: RowDigest,
    locators: Vec<RowLocator>,
}

/// Cuts an export into delete batches as its rows stream past.
pub struct BatchCutter {
    range: KeyRange,
    max_rows: u64,
    batches: Vec<DeleteBatch>,
    /// The sub-range batch being filled: its start, first row and digest.
    open_start: i64,
    open_first_row: u64,
    open: RowDigest,
    current: Option<CurrentValue>,
    rows: u64,
}

impl BatchCutter {
    pub fn new(range: KeyRange, max_rows: u64) -> Self {
        Self {
            range,
            max_rows: max_rows.max(1),
            batches: Vec::new(),
            open_start: range.start,
            open_first_row: 0,
            open: RowDigest::default(),
            current: None,
            rows: 0,
        }
    }

    /// Takes the next row in export order: its range value, hash and locator.
    pub fn push(&mut self, value: i64, hash: u128, locator: RowLocator) -> Result<(), String> {
        if value < self.range.start || value >= self.range.end {
            return Err(format!(
                "range column value {value} is outside the exported range {}",
                self.range
            ));
        }
        match &self.current {
            Some(c) if c.value == value => {}
            Some(c) if c.value > value => {
                return Err(format!(
                    "the export is not in range-column order ({value} after {})",
                    c.value
                ))
            }
            _ => {
                self.finish_value();
                self.current = Some(CurrentValue {
                    value,
                    parts: Vec::new(),
                    part_first_row: self.rows,
                    part: RowDigest::default(),
                    locators: Vec::new(),
                });
            }
        }
        let max_rows = self.max_rows;
        let row = self.rows;
        self.rows += 1;
        let Some(c) = self.current.as_mut() else {
            return Err("no value is open".into());
        };
        if c.part.rows == max_rows {
            c.parts.push(DeleteBatch {
                first_row: c.part_first_row,
                digest: std::mem::take(&mut c.part),
                scope: BatchScope::Located {
                    value: c.value,
                    rows: std::mem::take(&mut c.locators),
                },
            });
            c.part_first_row = row;
        }
        c.part.add_hash(hash);
        c.locators.push(locator);
        Ok(())
    }

    /// Closes the sub-range batch being filled at `end`.
    fn close_open(&mut self, end: i64) {
        if self.open.rows > 0 {
            self.batches.push(DeleteBatch {
                first_row: self.open_first_row,
                digest: std::mem::take(&mut self.open),
                scope: BatchScope::Range(KeyRange {
                    start: self.open_start,
                    end,
                }),
            });
        }
        self.open_start = end;
        self.open_first_row = self.rows;
    }

    fn finish_value(&mut self) {
        let Some(mut c) = self.current.take() else {
            return;
        };
        if c.parts.is_empty() {
            // A value that fits a batch joins the sub-range batch, or starts the next one.
            if self.open.rows + c.part.rows > self.max_rows {
                self.close_open(c.value);
                self.open_first_row = c.part_first_row;
            }
            if self.open.rows == 0 {
                self.open_first_row = c.part_first_row;
            }
            self.open.add(&c.part);
            return;
        }
        // A busy value: its rows go in located batches of their own.
        self.close_open(c.value);
        c.parts.push(DeleteBatch {
            first_row: c.part_first_row,
            digest: c.part,
            scope: BatchScope::Located {
                value: c.value,
                rows: c.locators,
            },
        });
        self.batches.extend(c.parts);
        self.open_start = c.value + 1;
        self.open_first_row = self.rows;
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The batches, in export order.
    pub fn finish(mut self) -> Vec<DeleteBatch> {
        self.finish_value();
        let end = self.range.end;
        self.close_open(end);
        self.batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(range: KeyRange, max: u64, values: &[i64]) -> Vec<DeleteBatch> {
        let mut cutter = BatchCutter::new(range, max);
        for (i, v) in values.iter().enumerate() {
            cutter
                .push(*v, i as u128 + 1, RowLocator(7, i as u32, 1))
                .unwrap();
        }
        cutter.finish()
    }

    fn r(start: i64, end: i64) -> KeyRange {
        KeyRange { start, end }
    }

    /// Batches hold every row once, in order, within the bound.
    fn check(batches: &[DeleteBatch], total: u64, max: u64) {
        let mut next = 0;
        for b in batches {
            assert_eq!(b.first_row, next, "{batches:?}");
            assert!(b.rows() <= max && b.rows() > 0, "{b:?}");
            if let BatchScope::Located { rows, .. } = &b.scope {
                assert_eq!(rows.len() as u64, b.rows());
            }
            next += b.rows();
        }
        assert_eq!(next, total);
        let sum: u128 = (1..=total as u128).sum();
        assert_eq!(RowDigest::of(batches.iter().map(|b| &b.digest)).sum, sum);
    }

    #[test]
    fn values_group_into_sub_ranges_that_tile_the_range() {
        let values: Vec<i64> = (100..200).flat_map(|v| vec![v; (v % 7) as usize]).collect();
        let batches = cut(r(100, 200), 40, &values);
        check(&batches, values.len() as u64, 40);
        let ranges: Vec<KeyRange> = batches.iter().map(|b| b.scope.range()).collect();
        assert_eq!(ranges.first().unwrap().start, 100);
        assert_eq!(ranges.last().unwrap().end, 200);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert!(batches
            .iter()
            .all(|b| matches!(b.scope, BatchScope::Range(_))));
    }

    #[test]
    fn a_value_with_more_rows_than_a_batch_is_cut_by_locators() {
        let mut values = vec![3, 3];
        values.extend(std::iter::repeat_n(5, 25));
        values.extend([6, 9]);
        let batches = cut(r(0, 10), 10, &values);
        check(&batches, values.len() as u64, 10);
        let scopes: Vec<String> = batches.iter().map(|b| b.scope.to_string()).collect();
        assert_eq!(
            scopes,
            vec![
                "[0, 5)",
                "10 located rows of value 5",
                "10 located rows of value 5",
                "5 located rows of value 5",
                "[6, 10)"
            ]
        );
        match &batches[2].scope {
            BatchScope::Located { rows, .. } => {
                assert_eq!(rows[0], RowLocator(7, 12, 1));
                assert_eq!(rows[0].ctid_text(), "(12,1)");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exactly_full_values_and_empty_exports() {
        let values: Vec<i64> = vec![1; 10];
        let batches = cut(r(0, 10), 10, &values);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].scope, BatchScope::Range(r(0, 10)));
        assert!(cut(r(0, 10), 10, &[]).is_empty());
        let one_each: Vec<i64> = (0..10).collect();
        let batches = cut(r(0, 10), 3, &one_each);
        check(&batches, 10, 3);
        assert_eq!(batches.len(), 4);
    }

    #[test]
    fn rows_out_of_range_or_order_are_refused() {
        let mut cutter = BatchCutter::new(r(10, 20), 5);
        assert!(cutter.push(9, 1, RowLocator(1, 1, 1)).is_err());
        assert!(cutter.push(20, 1, RowLocator(1, 1, 1)).is_err());
        cutter.push(15, 1, RowLocator(1, 1, 1)).unwrap();
        assert!(cutter.push(14, 1, RowLocator(1, 1, 1)).is_err());
        assert_eq!(
            RowLocator::from_binary(&[0, 0, 0, 9], &[0, 0, 1, 0, 0, 3]).unwrap(),
            RowLocator(9, 256, 3)
        );
        assert!(RowLocator::from_binary(&[0], &[0]).is_err());
    }
}
