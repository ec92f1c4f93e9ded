//! Where record batches go: the one consumer interface of a stream of Arrow batches (a sorter,
//! a Parquet writer, an export's writer task).

use arrow::array::RecordBatch;
use async_trait::async_trait;

use crate::error::Result;

/// Where batches go, in order.
#[async_trait]
pub trait BatchSink: Send {
    async fn push(&mut self, batch: RecordBatch) -> Result<()>;
}
