//! The planner Lambda: S3 events, EventBridge events, schedules and manual commands in; merge
//! tasks out, as asynchronous invocations of the merger. See `compaction::drivers::lambda::planner`.

use compaction::drivers::lambda::planner::PlannerFunction;
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
    let planner: &'static PlannerFunction = Box::leak(Box::new(
        PlannerFunction::from_env()
            .await?
            .with_row_changes(row_changes),
    ));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = deadline_from_epoch_ms(event.context.deadline);
        planner
            .handle(&event.payload, &event.context.request_id, deadline)
            .await
            .inspect_err(|e| tracing::error!(error = %e, "planner invocation failed"))
            .map_err(Error::from)
    }))
    .await
}
