//! A real PostgreSQL server for the tests: `DATABASE_URL` when set (scripts/test starts one for
//! the whole suite), else a private throwaway server started with `scripts/postgres` and stopped
//! when the test process exits. A missing PostgreSQL is a loud failure, never a skip. Every test
//! works in a schema of its own.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub const DSN_VAR: &str = "DATABASE_URL";

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The DSN of the test server, starting one if the suite did not.
pub fn dsn() -> String {
    static DSN: OnceLock<String> = OnceLock::new();
    DSN.get_or_init(|| match std::env::var(DSN_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => start_private_server(),
    })
    .clone()
}

fn start_private_server() -> String {
    private_server(false).0
}

/// A server of this test process's own (stopped when the process exits), optionally with TLS:
/// its DSN and directory (`ca.pem` signed its certificate, `other-ca.pem` did not).
pub fn private_server(tls: bool) -> (String, PathBuf) {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let script = workspace_root().join("scripts/postgres");
    let dir = std::env::temp_dir().join(format!(
        "compactor-pg-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut command = Command::new(&script);
    command.arg("start").arg(&dir);
    if tls {
        command.arg("--tls");
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "PostgreSQL is required for the hot-dataset tests and {} could not start one: {}\
         (or set {DSN_VAR} to a server)",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // Stopped by a watcher once this test process is gone.
    let watcher = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {script} stop {dir}",
        pid = std::process::id(),
        script = script.display(),
        dir = dir.display()
    );
    // Detached from the test's output, which would otherwise stay open until the watcher ends
    // (nextest reports such a test as leaky).
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(watcher)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the server's watcher");
    std::thread::spawn(move || child.wait());
    (String::from_utf8_lossy(&out.stdout).trim().to_string(), dir)
}

pub async fn connect() -> tokio_postgres::Client {
    let dsn = dsn();
    let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL at {dsn}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A new, empty schema for one test; its tables are `<schema>.<name>`.
pub async fn schema(client: &tokio_postgres::Client) -> String {
    let name = crate::aws::unique_name("t").replace('-', "_");
    client
        .batch_execute(&format!("CREATE SCHEMA {name}"))
        .await
        .unwrap_or_else(|e| panic!("creating schema {name}: {e}"));
    name
}

pub async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}
