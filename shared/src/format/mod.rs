//! Parquet and Arrow mechanics over the object store, shared by every task kind: footers and
//! ranged readers ([`io`]), the rolling writer of staged outputs ([`writer`]), time zones kept
//! through a merge ([`zones`]), and the external sorter of sort mode ([`sort`]).

pub mod io;
pub mod sort;
pub mod writer;
pub mod zones;
