//! Ports and their adapters: what the services need from the outside world, as small traits,
//! each with the adapters that implement it.
//!
//! - [`store`]: objects (a local directory; S3), with a contract suite every adapter runs;
//! - [`state`]: partition records and leases (an embedded redb file; DynamoDB), likewise;
//! - [`dispatch`]: handing tasks to mergers (an in-process channel; an asynchronous Lambda invoke);
//! - [`hot`]: the Postgres table of a hot dataset;
//! - [`aws`]: the AWS SDK set-up the AWS adapters share.

pub mod aws;
pub mod dispatch;
pub mod hot;
pub mod rows;
pub mod state;
pub mod store;
