//! The committer function: commits a staged task when its `_SUCCESS` appears (S3 or EventBridge
//! event) or on a manual command, and announces the compacted partition on EventBridge.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::drivers::events::{parse_committer_event, CommitterEvent};
use crate::drivers::lambda::metrics::Metrics;
use crate::error::{Error, Result};
use crate::model::hot::cold::DeleteState;
use crate::services::committer::{CommitOutcome, Committer};
use crate::support::env::env_var;

use super::Deployment;

pub struct CommitterFunction {
    deployment: Deployment,
    committer: Committer,
    events: Option<(aws_sdk_eventbridge::Client, String)>,
}

/// The EventBridge source and detail type of the "partition compacted" event.
pub const EVENT_SOURCE: &str = "parquet-compactor";
pub const EVENT_DETAIL_TYPE: &str = "Partition Compacted";

impl CommitterFunction {
    /// `COMPACTOR_EVENT_BUS` (optional) names the bus for "Partition Compacted" events.
    pub async fn from_env() -> Result<Self> {
        let deployment = Deployment::from_env().await?;
        let events = env_var("COMPACTOR_EVENT_BUS")
            .map(|bus| (aws_sdk_eventbridge::Client::new(&deployment.sdk), bus));
        Ok(Self::new(deployment, events))
    }

    pub fn new(
        deployment: Deployment,
        events: Option<(aws_sdk_eventbridge::Client, String)>,
    ) -> Self {
        let committer = Committer::new(
            Arc::clone(&deployment.store),
            Arc::clone(&deployment.state),
            &deployment.config.staging_prefix,
        )
        .with_hot_source(deployment.hot.clone());
        Self {
            deployment,
            committer,
            events,
        }
    }

    pub async fn handle(&self, event: &Value) -> Result<Value> {
        let started = Instant::now();
        let dirs = match parse_committer_event(
            event,
            &self.deployment.config.staging_prefix,
            &self.deployment.bucket,
        )? {
            CommitterEvent::Ignored(why) => return Ok(json!({"ignored": why})),
            CommitterEvent::Tasks(dirs) => dirs,
        };
        let mut metrics = Metrics::new("committer");
        let mut results = Vec::new();
        for dir in dirs {
            let outcome = self.committer.commit(&dir).await?;
            results.push(match &outcome {
                CommitOutcome::Committed(report) => {
                    let corrupt = report
                        .skipped
                        .iter()
                        .filter(|s| s.kind == crate::model::manifest::SkipKind::Unreadable)
                        .count();
                    metrics
                        .count("CompactionRuns", 1)
                        .count("FilesCompacted", report.inputs_deleted as u64)
                        .bytes("BytesIn", report.input_bytes)
                        .bytes("BytesOut", report.output_bytes)
                        .count("CorruptFilesSkipped", corrupt as u64);
                    if let Some(cold) = &report.cold {
                        metrics
                            .count("RangesExported", 1)
                            .count("RowsExported", cold.exported);
                        match &cold.delete {
                            DeleteState::Moved { deleted, .. } => {
                                metrics.count("PostgresRowsDeleted", *deleted);
                            }
                            DeleteState::Flagged {
                                deleted,
                                left,
                                detail,
                            } => {
                                metrics
                                    .count("PostgresRowsDeleted", *deleted)
                                    .count("PostgresRowsLeft", *left)
                                    .count("RangesFlagged", 1);
                                tracing::warn!(
                                    anomaly = "range_flagged",
                                    dataset = report.partition.dataset,
                                    range = report.partition.partition,
                                    deleted,
                                    left,
                                    detail,
                                    "range flagged"
                                );
                            }
                            DeleteState::Kept | DeleteState::Legacy => {}
                        }
                    }
                    self.announce(report).await?;
                    json!({"task_dir": dir, "committed": true, "task_id": report.task_id,
                           "inputs_deleted": report.inputs_deleted, "outputs": report.output_keys,
                           "rows": report.rows, "kept": report.kept.len()})
                }
                CommitOutcome::AlreadyCommitted { task_dir } => {
                    json!({"task_dir": task_dir, "already_committed": true})
                }
                CommitOutcome::NotReady { task_dir } => {
                    json!({"task_dir": task_dir, "not_ready": true})
                }
                CommitOutcome::Refused { task_dir, reason } => {
                    metrics.count("CommitsRefused", 1);
                    tracing::warn!(task_dir, reason, "commit refused");
                    json!({"task_dir": task_dir, "refused": reason})
                }
            });
        }
        metrics.millis("Duration", started.elapsed().as_millis());
        metrics.emit();
        Ok(json!({"results": results}))
    }

    async fn announce(&self, report: &crate::services::committer::CommitReport) -> Result<()> {
        let mut detail = report.event();
        detail["bucket"] = json!(self.deployment.bucket);
        tracing::info!(event = %detail, "{EVENT_DETAIL_TYPE}");
        let Some((client, bus)) = &self.events else {
            return Ok(());
        };
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .event_bus_name(bus)
            .source(EVENT_SOURCE)
            .detail_type(EVENT_DETAIL_TYPE)
            .detail(detail.to_string())
            .build();
        let response = client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| {
                Error::Other(format!(
                    "emitting {EVENT_DETAIL_TYPE} to bus {bus}: {}",
                    crate::ports::aws::ErrorInfo::of(&e).message
                ))
            })?;
        if response.failed_entry_count() > 0 {
            return Err(Error::Other(format!(
                "EventBridge refused the {EVENT_DETAIL_TYPE} event on bus {bus}: {:?}",
                response.entries()
            )));
        }
        Ok(())
    }
}
