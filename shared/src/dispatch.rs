//! The dispatch port: how the planner hands merge tasks to mergers. On AWS it is an asynchronous
//! Lambda invoke; locally, a channel into the in-process worker pool.

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::task::MergeTask;

#[async_trait]
pub trait Dispatcher: Send + Sync {
    async fn dispatch(&self, task: MergeTask) -> Result<()>;
}

/// Sends tasks to local workers; waits when they are all busy (bounded queue).
pub struct ChannelDispatcher {
    tx: mpsc::Sender<MergeTask>,
}

impl ChannelDispatcher {
    pub fn new(tx: mpsc::Sender<MergeTask>) -> Self {
        Self { tx }
    }
}

#[async_trait]
impl Dispatcher for ChannelDispatcher {
    async fn dispatch(&self, task: MergeTask) -> Result<()> {
        self.tx.send(task).await.map_err(|e| {
            Error::Other(format!(
                "local worker pool stopped before task {} could run",
                e.0.task_id
            ))
        })
    }
}

/// Collects tasks without running them (used by dry runs and tests of the planner alone).
#[derive(Default)]
pub struct CollectingDispatcher {
    pub tasks: tokio::sync::Mutex<Vec<MergeTask>>,
}

#[async_trait]
impl Dispatcher for CollectingDispatcher {
    async fn dispatch(&self, task: MergeTask) -> Result<()> {
        self.tasks.lock().await.push(task);
        Ok(())
    }
}
