//! Reading the environment the way the Lambda templates set it.

/// An environment variable, with empty meaning unset (templates pass empty strings).
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}
