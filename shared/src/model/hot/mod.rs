//! The pure rules of hot datasets: finalized rows of a Postgres table moved into cold Parquet
//! partitions, one per range of an integer range column, then deleted from Postgres in bounded
//! batches, each only if the rows it removes are exactly the cold copy's. No I/O here: the
//! export runs in the merger ([`crate::services::merger`]), the delete protocol in
//! [`crate::services::hot_delete`], and Postgres behind [`crate::ports::hot`].

pub mod batches;
pub mod cold;
pub mod config;
pub mod digest;
pub mod export;
pub mod ledger;
pub mod names;
pub mod range;
