//! Shared set-up of the AWS SDK clients, from the standard environment (`AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_MAX_ATTEMPTS`, credentials chain...), so the same code runs on
//! Lambda, on a laptop against real AWS, and in tests against a local endpoint.

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// Loads the SDK configuration from the environment. Retries use the SDK's standard mode
/// (exponential backoff with jitter on throttling and 5xx); `AWS_MAX_ATTEMPTS` and
/// `AWS_RETRY_MODE=adaptive` tune it.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// An S3 client. Path-style addressing is used when a custom endpoint is configured (local
/// S3-compatible servers have no per-bucket DNS) or when `COMPACTOR_S3_PATH_STYLE=true`.
pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    let path_style = config.endpoint_url().is_some()
        || std::env::var("AWS_ENDPOINT_URL_S3").is_ok()
        || std::env::var("COMPACTOR_S3_PATH_STYLE").is_ok_and(|v| v == "true" || v == "1");
    let s3 = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(path_style)
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// The parts of an SDK error the adapters branch on, in one place for every service.
#[derive(Debug)]
pub(crate) struct ErrorInfo {
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
}

impl ErrorInfo {
    pub fn of<E>(err: &SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let (code, message) = match err {
            SdkError::ServiceError(service) => {
                let e = service.err();
                (
                    e.code().map(str::to_string),
                    format!(
                        "{} (HTTP {}): {}",
                        e.code().unwrap_or("service error"),
                        status.unwrap_or_default(),
                        e.message().unwrap_or("no message")
                    ),
                )
            }
            other => (None, DisplayChain(other).to_string()),
        };
        Self {
            status,
            code,
            message,
        }
    }

    pub fn is_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

/// Formats an error with its whole `source()` chain: the SDK's top-level `Display` alone is
/// often just "dispatch failure".
pub(crate) struct DisplayChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
