//! Ranges of a hot dataset's range column (`"start-end"`, end-exclusive: the partition key of
//! its cold copy) and finality: rows at or below the tip minus the finality depth no longer
//! change.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A range of the range column, `[start, end)`; its partition key is `"start-end"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyRange {
    pub start: i64,
    pub end: i64,
}

impl KeyRange {
    /// Parses `"start-end"` (non-negative integers, `start < end`).
    pub fn parse(key: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::BadEvent(format!(
                "partition key {key:?} {why}; write \"start-end\" with end exclusive, e.g. \"1000000-1010000\""
            ))
        };
        let (start, end) = key.split_once('-').ok_or_else(|| bad("has no '-'"))?;
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<i64>().ok())
                .flatten()
                .ok_or_else(|| bad("is not two non-negative integers"))
        };
        let range = KeyRange {
            start: number(start)?,
            end: number(end)?,
        };
        if range.start >= range.end {
            return Err(bad("is empty (start must be below end)"));
        }
        Ok(range)
    }

    pub fn key(&self) -> String {
        format!("{}-{}", self.start, self.end)
    }

    pub fn len(&self) -> u64 {
        (self.end - self.start) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

impl std::fmt::Display for KeyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// The last final value of the range column: rows at or below it can no longer change.
pub fn final_through(tip: i64, finality_depth: u64) -> i64 {
    tip.saturating_sub(finality_depth.min(i64::MAX as u64) as i64)
}

/// True when every value of `range` is final.
pub fn is_final(range: KeyRange, final_through: i64) -> bool {
    range.end - 1 <= final_through
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: i64, end: i64) -> KeyRange {
        KeyRange { start, end }
    }

    #[test]
    fn keys_round_trip_and_bad_keys_are_explained() {
        let range = KeyRange::parse("1000000-1010000").unwrap();
        assert_eq!(range, r(1_000_000, 1_010_000));
        assert_eq!(range.key(), "1000000-1010000");
        for bad in [
            "",
            "5",
            "5-5",
            "9-3",
            "-3-4",
            "a-b",
            "1-2-3",
            " 1-2",
            "1-99999999999999999999",
        ] {
            let e = KeyRange::parse(bad).unwrap_err().to_string();
            assert!(e.contains("start-end"), "{bad}: {e}");
        }
    }

    #[test]
    fn only_wholly_final_ranges_are_listed() {
        // tip 450, depth 50: rows <= 400 are final, so [300, 400) is the last whole range.
        let through = final_through(450, 50);
        assert_eq!(through, 400);
        assert!(is_final(r(300, 400), through));
        assert!(is_final(r(301, 401), through));
        assert!(!is_final(r(400, 500), through));
        assert_eq!(final_through(10, 100), -90);
    }
}
