//! The dispatch port: how the planner hands merge tasks to mergers. On AWS it is an asynchronous
//! Lambda invoke; locally, a channel into the in-process worker pool.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, Mutex, Semaphore};
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::model::task::{Task, TASK_SPEC};

#[async_trait]
pub trait Dispatcher: Send + Sync {
    async fn dispatch(&self, task: Task) -> Result<()>;

    /// Waits for dispatches still in flight; returns the first failure.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// Fans tasks out as asynchronous Lambda invocations of the merger, at most `concurrency` in
/// flight. A task whose JSON is larger than `inline_limit` is passed by reference: the payload
/// is `{"task_key": ...}`, the `_task.json` the planner already wrote to staging.
pub struct LambdaDispatcher {
    client: aws_sdk_lambda::Client,
    function: String,
    inline_limit: usize,
    permits: Arc<Semaphore>,
    in_flight: Mutex<JoinSet<Result<()>>>,
}

impl LambdaDispatcher {
    pub fn new(
        client: aws_sdk_lambda::Client,
        function: impl Into<String>,
        inline_limit: usize,
        concurrency: usize,
    ) -> Self {
        Self {
            client,
            function: function.into(),
            inline_limit,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            in_flight: Mutex::new(JoinSet::new()),
        }
    }
}

/// The invoke payload of a task: inline, or a reference when it is too large.
pub fn task_payload(task: &Task, inline_limit: usize) -> Result<Vec<u8>> {
    let inline = serde_json::to_vec(task).map_err(|e| Error::Other(e.to_string()))?;
    if inline.len() <= inline_limit {
        return Ok(inline);
    }
    serde_json::to_vec(&serde_json::json!({ "task_key": task.staging_key(TASK_SPEC) }))
        .map_err(|e| Error::Other(e.to_string()))
}

#[async_trait]
impl Dispatcher for LambdaDispatcher {
    async fn dispatch(&self, task: Task) -> Result<()> {
        let payload = task_payload(&task, self.inline_limit)?;
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
        let (client, function, task_id) = (
            self.client.clone(),
            self.function.clone(),
            task.task_id.clone(),
        );
        self.in_flight.lock().await.spawn(async move {
            let _permit = permit;
            let response = client
                .invoke()
                .function_name(&function)
                .invocation_type(aws_sdk_lambda::types::InvocationType::Event)
                .payload(aws_sdk_lambda::primitives::Blob::new(payload))
                .send()
                .await
                .map_err(|e| {
                    Error::Other(format!(
                        "invoking merger {function} for task {task_id}: {}",
                        crate::ports::aws::ErrorInfo::of(&e).message
                    ))
                })?;
            if let Some(error) = response.function_error() {
                return Err(Error::Other(format!(
                    "merger {function} failed task {task_id}: {error}"
                )));
            }
            tracing::info!(task_id, function, "merge task dispatched");
            Ok(())
        });
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        let mut in_flight = self.in_flight.lock().await;
        let mut first_error = None;
        while let Some(joined) = in_flight.join_next().await {
            let result = joined
                .map_err(|e| Error::Other(e.to_string()))
                .and_then(|r| r);
            if let Err(e) = result {
                tracing::error!(error = %e, "dispatch failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Sends tasks to local workers; waits when they are all busy (bounded queue).
pub struct ChannelDispatcher {
    tx: mpsc::Sender<Task>,
}

impl ChannelDispatcher {
    pub fn new(tx: mpsc::Sender<Task>) -> Self {
        Self { tx }
    }
}

#[async_trait]
impl Dispatcher for ChannelDispatcher {
    async fn dispatch(&self, task: Task) -> Result<()> {
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
    pub tasks: tokio::sync::Mutex<Vec<Task>>,
}

#[async_trait]
impl Dispatcher for CollectingDispatcher {
    async fn dispatch(&self, task: Task) -> Result<()> {
        self.tasks.lock().await.push(task);
        Ok(())
    }
}
