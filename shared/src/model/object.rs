//! Object keys and what a store says about an object: pure rules shared by every layer.
//!
//! Keys are `/`-separated relative paths. Every store adapter validates keys with
//! [`validate_key`] so that nothing can address a location outside the store's root.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What the store knows about one object. `version` is an opaque, ETag-like token that changes
/// whenever the object's content is replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub version: String,
    /// Milliseconds since the Unix epoch.
    pub last_modified_ms: i64,
}

const MAX_KEY_BYTES: usize = 1024;

/// Rejects keys that could escape the store root or that S3 would treat differently from a
/// file system: empty, absolute, `.`/`..` segments, empty segments, NUL and control characters,
/// backslashes, and keys longer than S3's 1024-byte limit.
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("key is empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return bad("key is longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return bad("absolute keys are not allowed; keys are relative to the store root");
    }
    if key.chars().any(|c| c == '\0' || c.is_control()) {
        return bad("NUL and control characters are not allowed");
    }
    if key.contains('\\') {
        return bad("backslashes are not allowed");
    }
    for segment in key.trim_end_matches('/').split('/') {
        match segment {
            "" => return bad("empty path segment ('//')"),
            "." | ".." => return bad("'.' and '..' segments are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

/// Like [`validate_key`] but also accepts the empty prefix (the whole store).
pub fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        Ok(())
    } else {
        validate_key(prefix)
    }
}

/// Joins key parts with exactly one `/` between them, skipping empty parts.
pub fn join_key(parts: &[&str]) -> String {
    let mut out = String::new();
    for part in parts {
        let part = part.trim_matches('/');
        if part.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(part);
    }
    out
}

/// A prefix that ends with `/` (or is empty), so it can be concatenated with a name.
pub fn dir_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// The last segment of a key.
pub fn file_name(key: &str) -> &str {
    key.trim_end_matches('/').rsplit('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_keys_are_rejected() {
        for key in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a\0b",
            "a\\b",
            "a\nb",
        ] {
            assert!(validate_key(key).is_err(), "{key:?} should be rejected");
        }
        let long = "k".repeat(1025);
        assert!(validate_key(&long).is_err());
    }

    #[test]
    fn ordinary_keys_are_accepted() {
        for key in [
            "a",
            "dt=2024-01-01/hour=00/part-0.parquet",
            "x/",
            "with space/é.parquet",
        ] {
            validate_key(key).unwrap();
        }
        validate_prefix("").unwrap();
    }

    #[test]
    fn join_and_names() {
        assert_eq!(join_key(&["a/", "/b/", "", "c"]), "a/b/c");
        assert_eq!(dir_prefix("a/b"), "a/b/");
        assert_eq!(dir_prefix(""), "");
        assert_eq!(file_name("a/b/c.parquet"), "c.parquet");
        assert_eq!(file_name("a/b/"), "b");
    }
}
