//! Parquet and Arrow mechanics over the object store, shared by every task kind: footers and
//! ranged readers ([`io`]), the rolling writer of staged outputs ([`writer`]) with its parallel
//! column encoder ([`encoder`]), byte spool ([`spool`]) and verbatim row-group copies
//! ([`copy`]), time zones kept through a merge ([`zones`]), and the external sorter of sort mode
//! ([`sort`]).

pub mod copy;
pub mod encoder;
pub mod io;
pub mod sort;
pub mod spool;
pub mod writer;
pub mod zones;
