//! The clock, in the one unit the state and the manifests use.

/// Milliseconds since the Unix epoch, the time unit of the state port.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
