//! The content digest that a delete from Postgres is checked against.
//!
//! A row's hash is XXH3-128 of its exported values exactly as Postgres sends them in binary
//! (each value's 32-bit length, -1 for NULL, then its bytes, in the exported column order):
//! the same bytes whether they arrive in the export's `COPY ... (FORMAT binary)` or in the rows
//! a `DELETE ... RETURNING` removes. A multiset of rows digests to its row count and the sum of
//! its rows' hashes modulo 2^128: independent of order, sensitive to every byte of every value,
//! to the number of copies of a row, and to a swapped row; and additive, so the digest of a
//! delete batch is the sum of its rows' and a range's is the sum of its batches'.
//!
//! Odds: two different multisets of the same size agree only if their hash sums collide, about
//! 2^-128 for rows that differ by accident (late inserts, updates, reorgs); with a billion
//! batches checked, a false match stays below 10^-29. XXH3 is not a cryptographic hash: someone
//! able to write chosen rows into the table could craft a collision on purpose; the check
//! guards against concurrent writers, not against an adversary with write access.

use serde::{Deserialize, Serialize};

/// The seed of the row hash (any fixed value; it only has to be the same on both sides).
const SEED: u64 = 0x636f_6d70_6163_746f;

/// The hash of one row: `fields` are its exported values in binary COPY layout.
pub fn row_hash(fields: &[u8]) -> u128 {
    twox_hash::XxHash3_128::oneshot_with_seed(SEED, fields)
}

/// Appends one value in binary COPY layout (for rows that arrive one value at a time).
pub fn push_field(buf: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => {
            buf.extend_from_slice(&(v.len() as i32).to_be_bytes());
            buf.extend_from_slice(v);
        }
        None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

/// The digest of a multiset of rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowDigest {
    pub rows: u64,
    /// The sum of the rows' hashes modulo 2^128, as 32 hex digits.
    #[serde(with = "hex_u128")]
    pub sum: u128,
}

impl RowDigest {
    pub fn add_hash(&mut self, hash: u128) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(hash);
    }

    pub fn add(&mut self, other: &RowDigest) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
    }

    pub fn of<'a>(digests: impl IntoIterator<Item = &'a RowDigest>) -> RowDigest {
        let mut total = RowDigest::default();
        for d in digests {
            total.add(d);
        }
        total
    }
}

impl std::fmt::Display for RowDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} rows, digest {:032x}", self.rows, self.sum)
    }
}

mod hex_u128 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{value:032x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        u128::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&[u8]>]) -> u128 {
        let mut buf = Vec::new();
        for v in values {
            push_field(&mut buf, *v);
        }
        row_hash(&buf)
    }

    fn digest(rows: &[u128]) -> RowDigest {
        let mut d = RowDigest::default();
        for h in rows {
            d.add_hash(*h);
        }
        d
    }

    #[test]
    fn a_multiset_digest_ignores_order_and_sees_every_change() {
        let a = row(&[Some(b"1"), Some(b"x")]);
        let b = row(&[Some(b"2"), None]);
        let c = row(&[Some(b"2"), Some(b"")]);
        assert_ne!(b, c, "NULL and empty differ");
        assert_ne!(
            row(&[Some(b"ab"), Some(b"c")]),
            row(&[Some(b"a"), Some(b"bc")])
        );
        assert_eq!(digest(&[a, b]), digest(&[b, a]));
        assert_ne!(digest(&[a, b]), digest(&[a, c]), "a changed value");
        assert_ne!(digest(&[a, a]), digest(&[a]), "a missing copy");
        assert_ne!(digest(&[a, a, b]), digest(&[a, b, b]), "a swapped row");
        let mut split = digest(&[a]);
        split.add(&digest(&[b, c]));
        assert_eq!(split, digest(&[c, b, a]), "digests add up");
        assert_eq!(
            RowDigest::of([&digest(&[a]), &digest(&[b])]),
            digest(&[a, b])
        );
    }

    #[test]
    fn digests_round_trip_as_hex() {
        let d = digest(&[u128::MAX, 7]);
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains(&format!("{:032x}", d.sum)), "{json}");
        assert_eq!(serde_json::from_str::<RowDigest>(&json).unwrap(), d);
    }
}
