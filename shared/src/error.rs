//! One error type for the library. Every variant says what failed and where; the `Display`
//! text ends with what to do when the caller can do something about it.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    #[error("object {key:?} not found")]
    NotFound { key: String },

    #[error("conditional write of {key:?} refused: {reason}")]
    PreconditionFailed { key: String, reason: String },

    #[error("object store I/O on {key:?} failed: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },

    #[error("object store request {operation} on {key:?} failed: {message}")]
    Store {
        operation: &'static str,
        key: String,
        message: String,
    },

    #[error("state store {path}: {message}")]
    State { path: String, message: String },

    #[error("lease on partition {partition:?} is fenced off: {reason}")]
    LeaseLost { partition: String, reason: String },

    #[error("config {field}: {message}")]
    Config { field: String, message: String },

    #[error("config file {path}: {message}")]
    ConfigFile { path: PathBuf, message: String },

    #[error("partition key {key:?} does not match template {template:?}: {reason}")]
    Partition {
        key: String,
        template: String,
        reason: String,
    },

    #[error("incompatible schemas in partition {partition:?}: {details}. Rewrite the listed files to a common schema or move them out of the partition; nothing was deleted")]
    IncompatibleSchema { partition: String, details: String },

    #[error("parquet input {key:?} is unreadable: {reason}")]
    CorruptInput { key: String, reason: String },

    #[error("parquet/arrow processing of {context} failed: {message}")]
    Parquet { context: String, message: String },

    #[error("manifest {key:?}: {message}")]
    Manifest { key: String, message: String },

    #[error("commit of task {task_id} refused: {reason}")]
    CommitRefused { task_id: String, reason: String },

    #[error("postgres {context} failed: {message}")]
    Postgres { context: String, message: String },

    /// A delete that stopped part-way (a lock wait timed out): `deleted` rows did leave
    /// Postgres, and the next attempt resumes.
    #[error("{context} stopped: {message}")]
    DeleteInterrupted {
        context: String,
        message: String,
        deleted: u64,
    },

    #[error("table {table}: column {column:?} ({declared}) cannot be exported: {reason}. Nothing was written")]
    UnsupportedColumn {
        table: String,
        column: String,
        declared: String,
        reason: String,
    },

    /// A `WHERE` predicate or `SET` assignment that does not fit the data (found while
    /// planning, before anything is written).
    #[error("{0}; nothing was written")]
    Expression(String),

    #[error("event rejected: {0}")]
    BadEvent(String),

    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn parquet(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Error::Parquet {
            context: context.into(),
            message: err.to_string(),
        }
    }

    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn state(path: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::State {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub fn io(key: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            key: key.into(),
            source,
        }
    }

    /// True when a conditional write lost a race; callers treat that as "someone else did it".
    pub fn is_precondition_failed(&self) -> bool {
        matches!(self, Error::PreconditionFailed { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// Rows a failed step had already deleted from Postgres (so reports stay truthful).
    pub fn postgres_rows_deleted(&self) -> u64 {
        match self {
            Error::DeleteInterrupted { deleted, .. } => *deleted,
            _ => 0,
        }
    }
}
