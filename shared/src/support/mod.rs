//! Cross-cutting helpers with no knowledge of the domain: sizes and durations, the clock, the
//! environment, who a process is, progress reporting, the crash points of the tests, and the
//! allocator's tuning.

pub mod alloc;
pub mod clock;
pub mod env;
pub mod faults;
pub mod process;
pub mod progress;
pub mod units;
