//! The committer Lambda: a task's `_SUCCESS` (S3 or EventBridge event, or `{"task_dir": ...}`)
//! in; the outputs swapped in and the inputs deleted. See `compaction::drivers::lambda::committer`.

use compaction::drivers::lambda::committer::CommitterFunction;
use compaction::drivers::lambda::init_logging;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

fn main() -> Result<(), Error> {
    compaction::drivers::lambda::run_function(run())?
}

async fn run() -> Result<(), Error> {
    init_logging();
    let committer: &'static CommitterFunction =
        Box::leak(Box::new(CommitterFunction::from_env().await?));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        committer
            .handle(&event.payload)
            .await
            .inspect_err(|e| tracing::error!(error = %e, "committer invocation failed"))
            .map_err(Error::from)
    }))
    .await
}
