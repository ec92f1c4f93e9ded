//! Parquet compaction: a planner, a merger and a committer over small ports (object store,
//! partition state, dispatch), with embedded local adapters. See DESIGN.md for the contract.

pub mod aws;
pub mod committer;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod functions;
pub mod hot;
pub mod lease;
pub mod manifest;
pub mod metrics;
pub mod parquet_io;
pub mod partition;
pub mod pipeline;
pub mod plan;
pub mod planner;
pub mod process;
pub mod state;
pub mod store;
pub mod task;
pub mod units;

pub use error::{Error, Result};
pub mod faults;
pub mod merge;
pub mod progress;
pub mod sample;
pub mod schema;
