//! Parquet compaction: a planner, a merger and a committer over small ports (object store,
//! partition state, dispatch, hot source), with embedded local adapters.
//!
//! The modules are layers; each imports only from the layers above it in this list (the
//! contract every change keeps, and the layers in detail: `docs/architecture.md`).
//!
//! 1. [`error`] and [`support`]: the one error enum, units, the clock, progress, crash points.
//! 2. [`model`]: pure data and rules (configuration, partition templates, plans, tasks and their
//!    kinds, manifests, schema unification, the hot-range rules). No I/O.
//! 3. [`ports`]: the traits the services need from the outside world, each with its adapters
//!    (object store: local + S3; state: embedded + DynamoDB; dispatch; hot source: Postgres).
//! 4. [`format`]: Parquet and Arrow mechanics over the object store (footers, readers, the
//!    rolling writer every task kind writes with, the external sorter).
//! 5. [`services`]: the planner, the merger (one module per task kind), the committer, the
//!    hot-range delete protocol, leases.
//! 6. [`drivers`]: what runs the services: the Lambda handlers, the local pipeline, event
//!    parsing, the sample data of the demo.

pub mod error;
pub mod support;

pub mod model;

pub mod ports;

pub mod format;

pub mod services;

pub mod drivers;

pub use error::{Error, Result};
