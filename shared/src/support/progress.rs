//! Progress reporting from the services to whoever drives them (the CLI draws a bar; Lambda
//! functions log). Every method has a no-op default.

pub trait Progress: Send + Sync {
    /// The planner dispatched `tasks` merge tasks over `bytes` input bytes.
    fn planned(&self, _tasks: usize, _bytes: u64) {}
    /// A merger finished reading one input of `bytes` bytes.
    fn input_read(&self, _bytes: u64) {}
    /// A task was committed (or failed); `message` is a one-line summary.
    fn task_done(&self, _message: &str) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
