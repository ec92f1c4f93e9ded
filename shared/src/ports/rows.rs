//! The row-change port: a rewrite's `WHERE` predicate and `SET` assignments, planned against a
//! schema and evaluated over record batches. The library plans and runs rewrites through it;
//! the `compaction-sql` crate implements it with DataFusion, so only the binaries that run
//! maintenance link a SQL engine.

use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::SchemaRef;

use crate::error::Result;
use crate::model::rewrite::RewriteSpec;

/// A rewrite's predicate and assignments, planned against one schema.
pub trait RowChange: Send + Sync {
    /// The columns the predicate reads.
    fn predicate_columns(&self) -> Vec<String>;

    /// The columns the predicate and the assignments read or set.
    fn read_columns(&self) -> Vec<String>;

    /// The columns the assignments set (none: a delete).
    fn set_columns(&self) -> Vec<String>;

    /// For each row of `mins` and `maxes` (the lower and upper bounds of the columns they hold,
    /// by name; a null or a missing column is no bound): false when no row within these bounds
    /// can match, true when one may.
    fn may_match(&self, mins: &RecordBatch, maxes: &RecordBatch) -> Result<Vec<bool>>;

    /// Which rows of `batch` match (a null predicate is no match).
    fn matches(&self, batch: &RecordBatch) -> Result<BooleanArray>;

    /// `batch` with the assignments applied to the rows `mask` selects, every expression
    /// reading the row as it was (SQL `UPDATE ... SET`).
    fn apply(&self, batch: &RecordBatch, mask: &BooleanArray) -> Result<RecordBatch>;
}

/// A select list planned against one schema (`compactor repartition --select`).
pub trait RowSelection: Send + Sync {
    /// The columns the list reads.
    fn read_columns(&self) -> Vec<String>;

    /// The selected columns of every row of `batch`.
    fn project(&self, batch: &RecordBatch) -> Result<RecordBatch>;
}

/// Plans a rewrite's expressions against a schema.
pub trait RowChanges: Send + Sync + std::fmt::Debug {
    /// Fails, before anything is read, when an expression does not fit `schema` (unknown
    /// column, type error, anything but one expression).
    fn plan(&self, spec: &RewriteSpec, schema: &SchemaRef) -> Result<Arc<dyn RowChange>>;

    /// Plans a SQL select list against `schema` (e.g. `*, price * 100 AS cents`).
    fn plan_select(&self, select: &str, _schema: &SchemaRef) -> Result<Arc<dyn RowSelection>> {
        Err(crate::error::Error::Expression(format!(
            "the select list {select:?} needs the SQL engine, which this build does not link"
        )))
    }
}
