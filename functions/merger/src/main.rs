//! The merger Lambda: one merge task in (inline or by reference to its `_task.json`); outputs,
//! `_manifest.json` and `_SUCCESS` out, in staging. See `compaction::drivers::lambda::merger`.

use compaction::drivers::lambda::merger::MergerFunction;
use compaction::drivers::lambda::{deadline_from_epoch_ms, init_logging};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

fn main() -> Result<(), Error> {
    compaction::drivers::lambda::run_function(run())?
}

async fn run() -> Result<(), Error> {
    init_logging();
    #[cfg(feature = "sql")]
    let row_changes = compaction_sql::row_changes();
    #[cfg(not(feature = "sql"))]
    let row_changes = None;
    let merger: &'static MergerFunction = Box::leak(Box::new(
        MergerFunction::from_env()
            .await?
            .with_row_changes(row_changes),
    ));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = deadline_from_epoch_ms(event.context.deadline);
        merger
            .handle(&event.payload, deadline)
            .await
            .inspect_err(|e| tracing::error!(error = %e, "merger invocation failed"))
            .map_err(Error::from)
    }))
    .await
}
