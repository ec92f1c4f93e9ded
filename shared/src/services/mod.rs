//! The services, over the ports: the planner decides and dispatches, the merger runs a task
//! (one module per task kind), the committer swaps staged outputs in. [`hot_delete`] is the
//! delete-from-Postgres protocol the merger and committer share; [`lease`] keeps a partition's
//! lease alive while work runs; [`report`] tells how healthy the lake is.

pub mod backup;
pub mod committer;
pub mod hot_delete;
pub mod lease;
pub mod merger;
pub mod planner;
pub mod repartition;
pub mod report;
pub mod upsert;
