//! `compactor repartition`: the repartition service ([`crate::services::repartition`]) with
//! every task run in this process: write tasks one after the other, the destination's
//! compaction by the local pipeline ([`run_local`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::pipeline::{run_local, RunOptions, RunSummary};
use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::object::ObjectMeta;
use crate::model::task::{Task, TaskKind};
use crate::ports::state::StateStore;
use crate::ports::store::ObjectStore;
use crate::services::repartition::{
    repartition as advance, write_group, Compacted, RepartitionRunner,
};
use crate::support::progress::Progress;

pub use crate::services::repartition::{RepartitionOptions, RepartitionReport};

/// Runs a repartition from `source` into `target` to the end (compacted with `config`'s
/// settings, its state in `state`). A dry run may have no `target` yet (a destination still
/// to be created).
pub async fn repartition(
    source: Arc<dyn ObjectStore>,
    target: Option<Arc<dyn ObjectStore>>,
    state: Option<Arc<dyn StateStore>>,
    config: &Config,
    options: &RepartitionOptions,
    progress: Arc<dyn Progress>,
    run: RunOptions,
) -> Result<RepartitionReport> {
    let mut dst = config.clone();
    dst.datasets = vec![options.target.clone()];
    dst.hot_datasets.clear();
    let runner = Local {
        source: Arc::clone(&source),
        target: target.clone(),
        state,
        config: dst,
        progress,
        run,
        row_changes: options.row_changes.clone(),
    };
    advance(
        source,
        target,
        options,
        &runner,
        crate::support::clock::now_ms(),
    )
    .await
}

/// Runs every task here.
struct Local {
    source: Arc<dyn ObjectStore>,
    target: Option<Arc<dyn ObjectStore>>,
    state: Option<Arc<dyn StateStore>>,
    config: Config,
    progress: Arc<dyn Progress>,
    run: RunOptions,
    row_changes: Option<Arc<dyn crate::ports::rows::RowChanges>>,
}

impl Local {
    fn target(&self) -> Result<&Arc<dyn ObjectStore>> {
        self.target
            .as_ref()
            .ok_or_else(|| Error::Other("the repartition has no destination".into()))
    }
}

#[async_trait(?Send)]
impl RepartitionRunner for Local {
    async fn write(&self, tasks: Vec<Task>) -> Result<bool> {
        let target = self.target()?;
        let files: usize = tasks.iter().map(|t| t.inputs.len()).sum();
        self.progress
            .planned(files, tasks.iter().map(Task::input_bytes).sum());
        let mut done = 0;
        for task in &tasks {
            let TaskKind::RepartitionWrite(spec) = &task.kind else {
                continue;
            };
            write_group(
                &self.source,
                target,
                &task.dataset,
                spec,
                &task.inputs,
                self.row_changes.clone(),
                self.progress.as_ref(),
            )
            .await?;
            done += task.inputs.len();
            self.progress
                .task_done(&format!("written: {done} of {files} source files"));
        }
        Ok(true)
    }

    async fn compact(&self, pieces: BTreeMap<String, Vec<ObjectMeta>>) -> Result<Compacted> {
        let state = self
            .state
            .clone()
            .ok_or_else(|| Error::Other("compacting the destination needs a state store".into()))?;
        let summary = run_local(
            &self.config,
            Arc::clone(self.target()?),
            state,
            None,
            Arc::clone(&self.progress),
            &RunOptions {
                force: true,
                rewrite: None,
                datasets: None,
                partitions: Some(pieces.keys().cloned().collect()),
                extra_inputs: Some(Arc::new(pieces)),
                ..self.run.clone()
            },
        )
        .await?;
        Ok(Compacted {
            ran_here: true,
            partitions: summary.commits.len(),
            problems: problems(&summary),
        })
    }
}

/// What the compaction of the destination reported as not done.
fn problems(summary: &RunSummary) -> Vec<String> {
    let mut out: Vec<String> = summary
        .failures
        .iter()
        .map(|f| format!("{} {}: {}", f.partition, f.task_id, f.error))
        .collect();
    out.extend(
        summary
            .refused
            .iter()
            .map(|(dir, reason)| format!("{dir}: {reason}")),
    );
    out
}
