//! The pure model: configuration, partition templates, object keys, the partition state record,
//! plans, tasks and their kinds, manifests, schema unification, and the hot-range rules. Nothing
//! here does I/O, so every rule is unit-tested directly.

pub mod batch;
pub mod config;
pub mod dataset;
pub mod estimate;
pub mod hot;
pub mod manifest;
pub mod memory;
pub mod object;
pub mod partition;
pub mod passes;
pub mod plan;
pub mod repartition;
pub mod report;
pub mod rewrite;
pub mod schema;
pub mod state;
pub mod task;
