//! The hot-source port on PostgreSQL (tokio-postgres).
//!
//! - The DSN comes from an environment variable (local runs), from AWS Secrets Manager or from
//!   an SSM SecureString (Lambda); a secret may hold a DSN or RDS's JSON
//!   (`username`, `password`, `host`, `port`, `dbname`).
//! - TLS uses rustls: `sslmode=require` encrypts (like libpq, without checking the certificate
//!   unless `COMPACTOR_PG_CA_FILE` names a PEM bundle, e.g. RDS's global bundle, which turns on
//!   full verification including the host name); `prefer` (the default) falls back to plain.
//! - An export is one REPEATABLE READ, READ ONLY transaction reading the range with a binary
//!   `COPY (SELECT ...) TO STDOUT`, parsed as it streams into Arrow batches bounded in rows and
//!   bytes.
//! - Connections are reused across calls of one process.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use futures::{pin_mut, TryStreamExt};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, IsolationLevel};

use super::copy_binary::CopyParser;
use super::sql::{self, QualifiedName};
use super::types::{ColumnBuilder, PgType};
use super::{BatchDelete, HotColumn, HotDatasetConfig, HotSource, KeyRange};
use crate::error::{Error, Result};
use crate::merge::sort::BatchSink;

/// Names a PEM bundle of CA certificates; when set, the server certificate is verified.
pub const CA_FILE_ENV: &str = "COMPACTOR_PG_CA_FILE";
/// Rows per Arrow batch handed to the writer (fewer when rows are wide).
const BATCH_ROWS: usize = 8192;
/// A DELETE or DETACH waits at most this long for locks, then fails (and is retried later).
const LOCK_TIMEOUT: &str = "30s";

/// Where the DSN comes from.
#[derive(Clone, Debug)]
pub enum DsnSource {
    /// The environment variable each hot dataset names (`dsn_env`).
    Env,
    /// A fixed DSN (tests and tools that already hold one).
    Fixed(String),
    /// An AWS Secrets Manager secret (ARN or name).
    SecretsManager {
        client: aws_sdk_secretsmanager::Client,
        secret_id: String,
    },
    /// An SSM parameter, usually a SecureString.
    Ssm {
        client: aws_sdk_ssm::Client,
        name: String,
    },
}

#[derive(Debug)]
pub struct PostgresSource {
    dsn: DsnSource,
    /// The secret's value, fetched once per process (again after an authentication failure).
    secret: tokio::sync::Mutex<Option<String>>,
    /// Idle connections by DSN source key.
    idle: Mutex<Vec<(String, Client)>>,
    /// A PEM bundle of CA certificates: when set, the server's certificate is verified.
    ca_file: Option<String>,
}

fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" (hint: {hint})"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Wrong password or user: what a rotated secret looks like from a warm function.
fn is_auth_failure(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == tokio_postgres::error::SqlState::INVALID_PASSWORD
            || *c == tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    })
}

fn pg_err(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let context = context.into();
    move |e| Error::Postgres {
        context,
        message: describe_pg_error(&e),
    }
}

/// The bound values of [`sql::range_filter`]: start, end, and the chain when there is one.
fn range_params(hot: &HotDatasetConfig, range: KeyRange) -> Vec<i64> {
    let mut params = vec![range.start, range.end];
    params.extend(hot.chain_id);
    params
}

fn as_sql(params: &[i64]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// Parses a DSN, or RDS's secret JSON, into a connection config.
fn parse_dsn(text: &str, origin: &str) -> Result<tokio_postgres::Config> {
    let text = text.trim();
    let bad = |message: String| Error::Postgres {
        context: format!("the DSN from {origin}"),
        message,
    };
    if text.starts_with('{') {
        #[derive(serde::Deserialize)]
        struct RdsSecret {
            username: String,
            password: String,
            host: String,
            #[serde(default)]
            port: Option<serde_json::Value>,
            #[serde(default, alias = "database")]
            dbname: Option<String>,
            #[serde(default)]
            sslmode: Option<String>,
        }
        let secret: RdsSecret = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "is JSON but not an RDS secret ({e}); expected username, password, host, port, dbname"
            ))
        })?;
        let mut config = tokio_postgres::Config::new();
        config
            .user(&secret.username)
            .password(&secret.password)
            .host(&secret.host);
        if let Some(port) = secret.port {
            let port = match &port {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| bad(format!("port {port} is not a port number")))?;
            config.port(port);
        }
        if let Some(db) = &secret.dbname {
            config.dbname(db);
        }
        config.ssl_mode(match secret.sslmode.as_deref() {
            None | Some("prefer") => tokio_postgres::config::SslMode::Prefer,
            Some("require") => tokio_postgres::config::SslMode::Require,
            Some("disable") => tokio_postgres::config::SslMode::Disable,
            Some(other) => {
                return Err(bad(format!(
                    "sslmode {other:?} is not supported; use disable, prefer or require (and {CA_FILE_ENV} to verify)"
                )))
            }
        });
        return Ok(config);
    }
    tokio_postgres::Config::from_str(text).map_err(|e| {
        bad(format!(
            "is not a valid DSN ({e}); write postgres://user:password@host:5432/db?sslmode=require \
             or host=... user=... dbname=..."
        ))
    })
}

mod tls {
    //! The rustls connector: verifying against a CA bundle, or encrypting without verification
    //! (libpq's `sslmode=require`) when none is configured.

    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    use crate::error::{Error, Result};

    #[derive(Debug)]
    struct EncryptOnly(Arc<CryptoProvider>);

    impl ServerCertVerifier for EncryptOnly {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    pub fn connector(ca_file: Option<&str>) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls_err = |e: rustls::Error| Error::Postgres {
            context: "TLS set-up".into(),
            message: e.to_string(),
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?;
        let config = match ca_file {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path).map_err(|e| Error::Postgres {
                    context: format!("reading CA bundle {path} ({})", super::CA_FILE_ENV),
                    message: e.to_string(),
                })?;
                for cert in certs {
                    let cert = cert.map_err(|e| Error::Postgres {
                        context: format!("reading CA bundle {path}"),
                        message: e.to_string(),
                    })?;
                    roots.add(cert).map_err(tls_err)?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
                .with_no_client_auth(),
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

impl PostgresSource {
    pub fn new(dsn: DsnSource) -> Self {
        Self {
            dsn,
            secret: tokio::sync::Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            ca_file: None,
        }
    }

    /// Verifies the server's certificate (and host name) against the CAs in this PEM file.
    pub fn with_ca_file(mut self, path: Option<String>) -> Self {
        self.ca_file = path;
        self
    }

    /// `COMPACTOR_PG_SECRET_ARN` (Secrets Manager) or `COMPACTOR_PG_DSN_PARAMETER` (SSM) when
    /// set, else each dataset's `dsn_env` variable; `COMPACTOR_PG_CA_FILE` turns on verification.
    pub fn from_env(sdk: Option<&aws_config::SdkConfig>) -> Self {
        let env = |name| crate::functions::env_var(name);
        let dsn = match (
            sdk,
            env("COMPACTOR_PG_SECRET_ARN"),
            env("COMPACTOR_PG_DSN_PARAMETER"),
        ) {
            (Some(sdk), Some(secret_id), _) => DsnSource::SecretsManager {
                client: aws_sdk_secretsmanager::Client::new(sdk),
                secret_id,
            },
            (Some(sdk), None, Some(name)) => DsnSource::Ssm {
                client: aws_sdk_ssm::Client::new(sdk),
                name,
            },
            _ => DsnSource::Env,
        };
        Self::new(dsn).with_ca_file(env(CA_FILE_ENV))
    }

    /// Which DSN a dataset connects with (the key of the connection cache).
    fn dsn_key(&self, hot: &HotDatasetConfig) -> String {
        match &self.dsn {
            DsnSource::Env => format!("env:{}", hot.dsn_env),
            DsnSource::Fixed(_) => "fixed".into(),
            DsnSource::SecretsManager { secret_id, .. } => format!("secret:{secret_id}"),
            DsnSource::Ssm { name, .. } => format!("ssm:{name}"),
        }
    }

    /// The value of the secret or SSM parameter, cached; `refresh` reads it again (after a
    /// rotation, the cached password no longer works).
    async fn secret_text(&self, refresh: bool) -> Result<String> {
        let mut cached = self.secret.lock().await;
        if let (Some(text), false) = (cached.as_ref(), refresh) {
            return Ok(text.clone());
        }
        let text = match &self.dsn {
            DsnSource::SecretsManager { client, secret_id } => {
                let out = client
                    .get_secret_value()
                    .secret_id(secret_id)
                    .send()
                    .await
                    .map_err(|e| Error::Postgres {
                        context: format!("reading secret {secret_id} from Secrets Manager"),
                        message: crate::aws::ErrorInfo::of(&e).message,
                    })?;
                out.secret_string.ok_or_else(|| Error::Postgres {
                    context: format!("secret {secret_id}"),
                    message: "has no string value; store the DSN or RDS's JSON as text".into(),
                })?
            }
            DsnSource::Ssm { client, name } => {
                let out = client
                    .get_parameter()
                    .name(name)
                    .with_decryption(true)
                    .send()
                    .await
                    .map_err(|e| Error::Postgres {
                        context: format!("reading SSM parameter {name}"),
                        message: crate::aws::ErrorInfo::of(&e).message,
                    })?;
                out.parameter
                    .and_then(|p| p.value)
                    .ok_or_else(|| Error::Postgres {
                        context: format!("SSM parameter {name}"),
                        message: "has no value".into(),
                    })?
            }
            DsnSource::Env | DsnSource::Fixed(_) => {
                return Err(Error::Other("the DSN is not in a secret".into()))
            }
        };
        *cached = Some(text.clone());
        Ok(text)
    }

    async fn config(
        &self,
        hot: &HotDatasetConfig,
        refresh: bool,
    ) -> Result<tokio_postgres::Config> {
        let (text, origin) = match &self.dsn {
            DsnSource::Env => {
                let text = std::env::var(&hot.dsn_env).map_err(|_| {
                    Error::config(
                        hot.dsn_env.clone(),
                        format!(
                            "is not set; hot dataset {:?} reads its Postgres DSN from it \
                             (e.g. postgres://user:password@host:5432/db); keep DSNs out of config files",
                            hot.name
                        ),
                    )
                })?;
                (text, format!("${}", hot.dsn_env))
            }
            DsnSource::Fixed(text) => (text.clone(), "the given DSN".into()),
            DsnSource::SecretsManager { secret_id, .. } => (
                self.secret_text(refresh).await?,
                format!("secret {secret_id}"),
            ),
            DsnSource::Ssm { name, .. } => (
                self.secret_text(refresh).await?,
                format!("SSM parameter {name}"),
            ),
        };
        let mut config = parse_dsn(&text, &origin)?;
        if config.get_application_name().is_none() {
            config.application_name("parquet-compactor");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        Ok(config)
    }

    async fn checkout(&self, hot: &HotDatasetConfig) -> Result<Client> {
        let key = self.dsn_key(hot);
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.iter()
                .position(|(k, c)| *k == key && !c.is_closed())
                .map(|i| idle.swap_remove(i).1)
        };
        if let Some(client) = reused {
            return Ok(client);
        }
        let connector = tls::connector(self.ca_file.as_deref())?;
        let from_secret = matches!(
            self.dsn,
            DsnSource::SecretsManager { .. } | DsnSource::Ssm { .. }
        );
        let mut refresh = false;
        loop {
            let config = self.config(hot, refresh).await?;
            let hosts = format!("{:?}", config.get_hosts());
            match config.connect(connector.clone()).await {
                Ok((client, connection)) => {
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::warn!(error = %describe_pg_error(&e), "postgres connection ended with an error");
                        }
                    });
                    return Ok(client);
                }
                // A rotated secret: read it again, once.
                Err(e) if from_secret && !refresh && is_auth_failure(&e) => {
                    tracing::info!(error = %describe_pg_error(&e), "authentication failed; reading the secret again");
                    refresh = true;
                }
                Err(e) => {
                    return Err(pg_err(format!(
                        "connecting to {hosts} for hot dataset {:?}",
                        hot.name
                    ))(e))
                }
            }
        }
    }

    fn checkin(&self, hot: &HotDatasetConfig, client: Client) {
        if !client.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.push((self.dsn_key(hot), client));
        }
    }

    /// Runs `op` on a pooled connection; the connection is reused only if `op` succeeded.
    async fn with_client<T>(
        &self,
        hot: &HotDatasetConfig,
        op: impl AsyncFnOnce(&mut Client) -> Result<T>,
    ) -> Result<T> {
        let mut client = self.checkout(hot).await?;
        let out = op(&mut client).await?;
        self.checkin(hot, client);
        Ok(out)
    }
}

struct CatalogColumn {
    name: String,
    type_name: String,
    typmod: i32,
    element: Option<String>,
    not_null: bool,
    declared: String,
}

const CATALOG_QUERY: &str = "\
SELECT a.attname::text,
       bt.typname::text,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
       CASE WHEN bt.typcategory = 'A' THEN et.typname::text END,
       a.attnotnull,
       format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type et ON et.oid = bt.typelem
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

const PARTITION_TREE_QUERY: &str = "\
SELECT t.relid::regclass::text,
       t.parentrelid::regclass::text,
       t.isleaf,
       coalesce(pg_get_expr(c.relpartbound, c.oid), ''),
       coalesce(pg_get_partkeydef(t.relid), '')
FROM pg_partition_tree(to_regclass($1)) t
JOIN pg_class c ON c.oid = t.relid";

async fn table_oid(client: &Client, table: &QualifiedName) -> Result<u32> {
    let row = client
        .query_one("SELECT to_regclass($1)::oid", &[&table.sql()])
        .await
        .map_err(pg_err(format!("looking up table {}", table.sql())))?;
    row.get::<_, Option<u32>>(0).ok_or_else(|| Error::Postgres {
        context: format!("table {}", table.sql()),
        message: "does not exist (names are case-sensitive as written; qualify it with its schema if it is not on the search_path)".into(),
    })
}

fn is_integer(type_name: &str) -> bool {
    matches!(type_name, "int2" | "int4" | "int8")
}

/// Checks the configured columns against the catalog and maps each to Arrow.
fn select_columns(
    hot: &HotDatasetConfig,
    table: &QualifiedName,
    catalog: Vec<CatalogColumn>,
) -> Result<Vec<HotColumn>> {
    let unsupported = |column: &str, declared: &str, reason: String| Error::UnsupportedColumn {
        table: table.sql(),
        column: column.to_string(),
        declared: declared.to_string(),
        reason,
    };
    let find = |name: &str| catalog.iter().find(|c| c.name == name);
    let mut keys = vec![&hot.range_column];
    if hot.chain_id.is_some() {
        keys.push(&hot.chain_column);
    }
    for key in keys {
        match find(key) {
            Some(c) if is_integer(&c.type_name) && c.element.is_none() => {}
            Some(c) => {
                return Err(unsupported(
                    key,
                    &c.declared,
                    "ranges and chains must be integer columns (int2, int4, int8)".into(),
                ))
            }
            None => {
                return Err(Error::Postgres {
                    context: format!("table {}", table.sql()),
                    message: format!(
                        "has no column {key:?} (hot dataset {:?}: range_column / chain_column)",
                        hot.name
                    ),
                })
            }
        }
    }
    let chosen: Vec<&CatalogColumn> = if hot.columns.is_empty() {
        catalog.iter().collect()
    } else {
        hot.columns
            .iter()
            .map(|name| {
                find(name).ok_or_else(|| Error::Postgres {
                    context: format!("table {}", table.sql()),
                    message: format!(
                        "has no column {name:?} (hot dataset {:?}: columns)",
                        hot.name
                    ),
                })
            })
            .collect::<Result<_>>()?
    };
    chosen
        .into_iter()
        .map(|c| {
            let pg_type = PgType::from_catalog(
                &c.type_name,
                c.typmod,
                c.element.as_deref(),
                hot.unbounded_numeric,
            )
            .map_err(|reason| unsupported(&c.name, &c.declared, reason))?;
            Ok(HotColumn {
                name: c.name.clone(),
                declared: c.declared.clone(),
                pg_type,
                nullable: !c.not_null,
            })
        })
        .collect()
}

/// One node of `pg_partition_tree`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionNode {
    pub name: String,
    pub parent: Option<String>,
    pub is_leaf: bool,
    /// `FOR VALUES ...` as Postgres prints it (empty for the root).
    pub bound: String,
    /// `RANGE (...)` / `LIST (...)` of a partitioned node (empty for a leaf).
    pub key: String,
}

/// The unquoted names inside `RANGE (a, b)`; `None` for expressions or other strategies.
fn key_columns(key: &str) -> Option<(&str, Vec<String>)> {
    let (strategy, rest) = key.split_once(' ')?;
    let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
    let columns = inner
        .split(", ")
        .map(|c| {
            let c = c.trim_matches('"');
            sql::validate_identifier(c).ok().map(|_| c.to_string())
        })
        .collect::<Option<Vec<_>>>()?;
    Some((strategy, columns))
}

/// The integers of a bound list such as `('1', '0')` or `(1)`.
fn bound_values(list: &str) -> Option<Vec<i64>> {
    list.strip_prefix('(')?
        .strip_suffix(')')?
        .split(", ")
        .map(|v| v.trim_matches('\'').parse().ok())
        .collect()
}

/// The leaf partition holding exactly `range` (and, with a chain filter, exactly that chain):
/// found from the bounds of the leaf and its ancestors. Supported shapes: `RANGE (range)`,
/// `RANGE (chain, range)`, and `LIST (chain)` above `RANGE (range)`.
pub fn find_exact_partition(
    nodes: &[PartitionNode],
    hot: &HotDatasetConfig,
    range: KeyRange,
) -> Option<(String, String)> {
    let by_name = |name: &str| nodes.iter().find(|n| n.name == name);
    'leaves: for leaf in nodes.iter().filter(|n| n.is_leaf) {
        let mut range_bounds = None;
        let mut chain = None;
        let mut node = leaf;
        while let Some(parent) = node.parent.as_deref().and_then(by_name) {
            let (strategy, columns) = key_columns(&parent.key)?;
            let names: Vec<&str> = columns.iter().map(String::as_str).collect();
            let bound = node.bound.strip_prefix("FOR VALUES ")?;
            match (strategy, names.as_slice()) {
                ("RANGE", [col]) if *col == hot.range_column => {
                    let (from, to) = bound.strip_prefix("FROM ")?.split_once(" TO ")?;
                    match (bound_values(from)?.as_slice(), bound_values(to)?.as_slice()) {
                        ([s], [e]) => range_bounds = Some((*s, *e)),
                        _ => continue 'leaves,
                    }
                }
                ("RANGE", [c, r]) if *c == hot.chain_column && *r == hot.range_column => {
                    let (from, to) = bound.strip_prefix("FROM ")?.split_once(" TO ")?;
                    match (bound_values(from)?.as_slice(), bound_values(to)?.as_slice()) {
                        ([c1, s], [c2, e]) if c1 == c2 => {
                            chain = Some(*c1);
                            range_bounds = Some((*s, *e));
                        }
                        _ => continue 'leaves,
                    }
                }
                ("LIST", [col]) if *col == hot.chain_column => {
                    match bound_values(bound.strip_prefix("IN ")?)?.as_slice() {
                        [c] => chain = Some(*c),
                        _ => continue 'leaves,
                    }
                }
                _ => continue 'leaves,
            }
            node = parent;
        }
        let chain_ok = match hot.chain_id {
            Some(c) => chain == Some(c),
            None => true,
        };
        if chain_ok && range_bounds == Some((range.start, range.end)) {
            if let Some(parent) = &leaf.parent {
                return Some((leaf.name.clone(), parent.clone()));
            }
        }
    }
    None
}

/// Collects rows into Arrow batches and hands them on.
struct BatchAssembler {
    schema: SchemaRef,
    builders: Vec<ColumnBuilder>,
    rows: usize,
    bytes: u64,
    max_bytes: u64,
}

impl BatchAssembler {
    async fn flush(&mut self, sink: &mut dyn BatchSink) -> Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let arrays = self
            .builders
            .iter_mut()
            .map(ColumnBuilder::finish)
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), arrays)
            .map_err(|e| Error::parquet("assembling exported rows", e))?;
        self.rows = 0;
        self.bytes = 0;
        sink.push(batch).await
    }
}

#[async_trait]
impl HotSource for PostgresSource {
    fn describe(&self) -> String {
        match &self.dsn {
            DsnSource::Env => "postgres (DSN from the environment)".into(),
            DsnSource::Fixed(_) => "postgres".into(),
            DsnSource::SecretsManager { secret_id, .. } => format!("postgres (secret {secret_id})"),
            DsnSource::Ssm { name, .. } => format!("postgres (SSM parameter {name})"),
        }
    }

    async fn columns(&self, hot: &HotDatasetConfig) -> Result<Vec<HotColumn>> {
        let table = hot.table_name()?;
        self.with_client(hot, async |client| {
            let oid = table_oid(client, &table).await?;
            let rows = client
                .query(CATALOG_QUERY, &[&oid])
                .await
                .map_err(pg_err(format!("reading the columns of {}", table.sql())))?;
            let catalog = rows
                .iter()
                .map(|r| CatalogColumn {
                    name: r.get(0),
                    type_name: r.get(1),
                    typmod: r.get(2),
                    element: r.get(3),
                    not_null: r.get(4),
                    declared: r.get(5),
                })
                .collect();
            select_columns(hot, &table, catalog)
        })
        .await
    }

    async fn tip(&self, hot: &HotDatasetConfig) -> Result<Option<i64>> {
        let table = hot.table_name()?;
        self.with_client(hot, async |client| {
            let Some(query) = &hot.tip_query else {
                let params: Vec<i64> = hot.chain_id.into_iter().collect();
                let row = client
                    .query_one(&sql::max_query(hot, &table), &as_sql(&params))
                    .await
                    .map_err(pg_err(format!("reading the tip of {}", table.sql())))?;
                return Ok(row.get(0));
            };
            let context = format!("tip_query of hot dataset {:?}", hot.name);
            let txn = client
                .build_transaction()
                .read_only(true)
                .start()
                .await
                .map_err(pg_err(context.clone()))?;
            let statement = txn
                .prepare(&sql::tip_query(query))
                .await
                .map_err(pg_err(context.clone()))?;
            let params: Vec<i64> = match (statement.params().len(), hot.chain_id) {
                (0, _) => vec![],
                (1, Some(chain)) => vec![chain],
                (n, _) => {
                    return Err(Error::config(
                        format!("hot_dataset {:?}: tip_query", hot.name),
                        format!("takes {n} parameters; it may use only $1 (the chain_id, which must then be set)"),
                    ))
                }
            };
            let rows = txn
                .query(&statement, &as_sql(&params))
                .await
                .map_err(pg_err(context.clone()))?;
            txn.rollback().await.map_err(pg_err(context.clone()))?;
            match rows.as_slice() {
                [row] => Ok(row.get(0)),
                [] => Ok(None),
                _ => Err(Error::Postgres {
                    context,
                    message: format!("returned {} rows; it must return one", rows.len()),
                }),
            }
        })
        .await
    }

    async fn first_value(&self, hot: &HotDatasetConfig) -> Result<Option<i64>> {
        let table = hot.table_name()?;
        self.with_client(hot, async |client| {
            let params: Vec<i64> = hot.chain_id.into_iter().collect();
            let row = client
                .query_one(&sql::min_query(hot, &table), &as_sql(&params))
                .await
                .map_err(pg_err(format!(
                    "reading the first value of {}",
                    table.sql()
                )))?;
            Ok(row.get(0))
        })
        .await
    }

    async fn export(
        &self,
        hot: &HotDatasetConfig,
        range: KeyRange,
        columns: &[HotColumn],
        batch_bytes: u64,
        sink: &mut dyn BatchSink,
    ) -> Result<u64> {
        let table = hot.table_name()?;
        let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let copy = sql::export_copy(hot, &table, &names);
        let context = format!("export of {} {range}", table.sql());
        let schema: SchemaRef = Arc::new(Schema::new(
            columns.iter().map(HotColumn::field).collect::<Vec<_>>(),
        ));
        let builders = columns
            .iter()
            .map(|c| {
                ColumnBuilder::new(&c.pg_type, BATCH_ROWS).map_err(|reason| {
                    Error::UnsupportedColumn {
                        table: table.sql(),
                        column: c.name.clone(),
                        declared: c.declared.clone(),
                        reason,
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut assembler = BatchAssembler {
            schema,
            builders,
            rows: 0,
            bytes: 0,
            max_bytes: batch_bytes.max(1 << 20),
        };
        // A connection of its own, driven by this task beside the stream it feeds: every
        // wake-up between the two stays on one thread (per-row traffic across threads costs
        // more than the decoding).
        let config = self.config(hot, false).await?;
        let connector = tls::connector(self.ca_file.as_deref())?;
        let (mut client, connection) = config
            .connect(connector)
            .await
            .map_err(pg_err(format!("connecting for the {context}")))?;
        let mut connection = std::pin::pin!(connection);
        let work = async {
            let txn = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg_err(context.clone()))?;
            let chain = hot.chain_id.map(|c| c.to_string()).unwrap_or_default();
            txn.execute(
                sql::EXPORT_SETTINGS,
                &[&range.start.to_string(), &range.end.to_string(), &chain],
            )
            .await
            .map_err(pg_err(context.clone()))?;
            let stream = txn
                .copy_out(copy.as_str())
                .await
                .map_err(pg_err(context.clone()))?;
            pin_mut!(stream);
            let mut parser = CopyParser::new(columns.len());
            let mut rows = 0u64;
            while let Some(chunk) = stream.try_next().await.map_err(pg_err(context.clone()))? {
                parser
                    .feed(&chunk, &mut |tuple| {
                        for (i, builder) in assembler.builders.iter_mut().enumerate() {
                            let value = tuple.value(i);
                            assembler.bytes += value.map_or(0, <[u8]>::len) as u64;
                            builder.append(value).map_err(|reason| {
                                format!(
                                    "column {} ({}): {reason}",
                                    columns[i].name, columns[i].declared
                                )
                            })?;
                        }
                        assembler.rows += 1;
                        rows += 1;
                        Ok(())
                    })
                    .map_err(|message| Error::Postgres {
                        context: context.clone(),
                        message,
                    })?;
                if assembler.rows >= BATCH_ROWS || assembler.bytes >= assembler.max_bytes {
                    assembler.flush(sink).await?;
                }
            }
            parser.finish().map_err(|message| Error::Postgres {
                context: context.clone(),
                message,
            })?;
            assembler.flush(sink).await?;
            txn.commit().await.map_err(pg_err(context.clone()))?;
            Ok(rows)
        };
        tokio::select! {
            result = work => result,
            ended = &mut connection => Err(Error::Postgres {
                context: context.clone(),
                message: match ended {
                    Err(e) => describe_pg_error(&e),
                    Ok(()) => "the server closed the connection".into(),
                },
            }),
        }
    }

    async fn count_batches(
        &self,
        hot: &HotDatasetConfig,
        batches: &[KeyRange],
    ) -> Result<Vec<u64>> {
        let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
            return Ok(Vec::new());
        };
        let table = hot.table_name()?;
        let whole = KeyRange {
            start: first.start,
            end: last.end,
        };
        let starts: Vec<i64> = batches.iter().map(|b| b.start).collect();
        self.with_client(hot, async |client| {
            let params = range_params(hot, whole);
            let mut values = as_sql(&params);
            values.push(&starts);
            let rows = client
                .query(&sql::batch_count_query(hot, &table), &values)
                .await
                .map_err(pg_err(format!("counting {} {whole}", table.sql())))?;
            let mut counts = vec![0u64; batches.len()];
            for row in rows {
                let (batch, count): (i64, i64) = (row.get(0), row.get(1));
                let slot = usize::try_from(batch - 1)
                    .ok()
                    .and_then(|i| counts.get_mut(i))
                    .ok_or_else(|| Error::Postgres {
                        context: format!("counting {} {whole}", table.sql()),
                        message: format!("row in unexpected batch {batch}"),
                    })?;
                *slot = count as u64;
            }
            Ok(counts)
        })
        .await
    }

    async fn delete_batch(
        &self,
        hot: &HotDatasetConfig,
        batch: KeyRange,
        expected: u64,
    ) -> Result<BatchDelete> {
        let table = hot.table_name()?;
        let context = format!("deleting {} {batch}", table.sql());
        self.with_client(hot, async |client| {
            let txn = client.transaction().await.map_err(pg_err(context.clone()))?;
            txn.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                .await
                .map_err(pg_err(context.clone()))?;
            let params = range_params(hot, batch);
            let deleted = txn
                .execute(&sql::delete_query(hot, &table), &as_sql(&params))
                .await
                .map_err(pg_err(context.clone()))?;
            if deleted == expected {
                txn.commit().await.map_err(pg_err(context.clone()))?;
                Ok(BatchDelete::Deleted(deleted))
            } else {
                txn.rollback().await.map_err(pg_err(context.clone()))?;
                Ok(BatchDelete::Mismatch {
                    found: deleted,
                    detail: format!(
                        "{batch} held {deleted} rows at delete time, the cold copy {expected}; rolled back"
                    ),
                })
            }
        })
        .await
    }

    async fn exact_partition(
        &self,
        hot: &HotDatasetConfig,
        range: KeyRange,
    ) -> Result<Option<(String, String)>> {
        let table = hot.table_name()?;
        self.with_client(hot, async |client| {
            let rows = client
                .query(PARTITION_TREE_QUERY, &[&table.sql()])
                .await
                .map_err(pg_err(format!("reading the partitions of {}", table.sql())))?;
            let nodes: Vec<PartitionNode> = rows
                .iter()
                .map(|r| PartitionNode {
                    name: r.get(0),
                    parent: r.get(1),
                    is_leaf: r.get(2),
                    bound: r.get(3),
                    key: r.get(4),
                })
                .collect();
            Ok(find_exact_partition(&nodes, hot, range))
        })
        .await
    }

    async fn drop_partition(
        &self,
        hot: &HotDatasetConfig,
        partition: &(String, String),
        range: KeyRange,
        expected: u64,
    ) -> Result<BatchDelete> {
        let (leaf, parent) = partition;
        let context = format!("dropping partition {leaf} of {parent}");
        self.with_client(hot, async |client| {
            let txn = client.transaction().await.map_err(pg_err(context.clone()))?;
            txn.batch_execute(&format!(
                "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; ALTER TABLE {parent} DETACH PARTITION {leaf}"
            ))
            .await
            .map_err(pg_err(context.clone()))?;
            // Detached, the table takes no more rows: count what it holds now.
            let params = range_params(hot, range);
            let row = txn
                .query_one(&sql::partition_count_query(hot, leaf), &as_sql(&params))
                .await
                .map_err(pg_err(context.clone()))?;
            let (total, outside): (i64, i64) = (row.get(0), row.get(1));
            if total as u64 != expected || outside != 0 {
                txn.rollback().await.map_err(pg_err(context.clone()))?;
                return Ok(BatchDelete::Mismatch {
                    found: total as u64,
                    detail: format!(
                        "partition {leaf} held {total} rows ({outside} outside {range}), the cold copy {expected}; left attached"
                    ),
                });
            }
            txn.batch_execute(&format!("DROP TABLE {leaf}"))
                .await
                .map_err(pg_err(context.clone()))?;
            txn.commit().await.map_err(pg_err(context.clone()))?;
            Ok(BatchDelete::Deleted(total as u64))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, parent: Option<&str>, leaf: bool, bound: &str, key: &str) -> PartitionNode {
        PartitionNode {
            name: name.into(),
            parent: parent.map(str::to_string),
            is_leaf: leaf,
            bound: bound.into(),
            key: key.into(),
        }
    }

    fn hot(chain: Option<i64>) -> HotDatasetConfig {
        HotDatasetConfig {
            chain_id: chain,
            range_size: 100,
            ..HotDatasetConfig::new("b", "b")
        }
    }

    const R: KeyRange = KeyRange { start: 0, end: 100 };

    #[test]
    fn range_partitions_on_the_range_column() {
        let nodes = vec![
            node("q", None, false, "", "RANGE (block_number)"),
            node(
                "q_0",
                Some("q"),
                true,
                "FOR VALUES FROM ('0') TO ('100')",
                "",
            ),
            node(
                "q_1",
                Some("q"),
                true,
                "FOR VALUES FROM ('100') TO ('300')",
                "",
            ),
        ];
        assert_eq!(
            find_exact_partition(&nodes, &hot(None), R),
            Some(("q_0".into(), "q".into()))
        );
        // With a chain filter, a partition holding every chain is not exact.
        assert_eq!(find_exact_partition(&nodes, &hot(Some(1)), R), None);
        assert_eq!(
            find_exact_partition(
                &nodes,
                &hot(None),
                KeyRange {
                    start: 100,
                    end: 200
                }
            ),
            None
        );
    }

    #[test]
    fn chain_and_range_partitions() {
        let two_columns = vec![
            node("p", None, false, "", "RANGE (chain_id, block_number)"),
            node(
                "p_1",
                Some("p"),
                true,
                "FOR VALUES FROM ('1', '0') TO ('1', '100')",
                "",
            ),
            node(
                "p_2",
                Some("p"),
                true,
                "FOR VALUES FROM ('2', '0') TO ('2', '100')",
                "",
            ),
            node(
                "p_x",
                Some("p"),
                true,
                "FOR VALUES FROM ('2', '100') TO ('3', '0')",
                "",
            ),
        ];
        assert_eq!(
            find_exact_partition(&two_columns, &hot(Some(2)), R),
            Some(("p_2".into(), "p".into()))
        );
        assert_eq!(find_exact_partition(&two_columns, &hot(Some(3)), R), None);
        let list_then_range = vec![
            node("r", None, false, "", "LIST (chain_id)"),
            node(
                "r_1",
                Some("r"),
                false,
                "FOR VALUES IN (1)",
                "RANGE (block_number)",
            ),
            node(
                "r_1_0",
                Some("r_1"),
                true,
                "FOR VALUES FROM ('0') TO ('100')",
                "",
            ),
            node("r_d", Some("r"), true, "DEFAULT", ""),
        ];
        assert_eq!(
            find_exact_partition(&list_then_range, &hot(Some(1)), R),
            Some(("r_1_0".into(), "r_1".into()))
        );
        assert_eq!(
            find_exact_partition(&list_then_range, &hot(Some(2)), R),
            None
        );
    }

    #[test]
    fn plain_tables_and_odd_keys_have_no_exact_partition() {
        assert_eq!(
            find_exact_partition(&[node("t", None, true, "", "")], &hot(None), R),
            None
        );
        let expression = vec![
            node("e", None, false, "", "RANGE ((block_number / 10))"),
            node(
                "e_0",
                Some("e"),
                true,
                "FOR VALUES FROM ('0') TO ('10')",
                "",
            ),
        ];
        assert_eq!(find_exact_partition(&expression, &hot(None), R), None);
    }

    #[test]
    fn dsns_and_rds_secrets_parse() {
        let c = parse_dsn("postgres://u:p@db.example:6543/chain?sslmode=require", "x").unwrap();
        assert_eq!(c.get_user(), Some("u"));
        assert_eq!(c.get_ports(), &[6543]);
        let c = parse_dsn(
            r#"{"username":"u","password":"p@ss","host":"h","port":5432,"dbname":"d","engine":"postgres"}"#,
            "secret",
        )
        .unwrap();
        assert_eq!((c.get_user(), c.get_dbname()), (Some("u"), Some("d")));
        assert_eq!(c.get_password(), Some(&b"p@ss"[..]));
        let e = parse_dsn(r#"{"user":"u"}"#, "secret")
            .unwrap_err()
            .to_string();
        assert!(e.contains("RDS secret"), "{e}");
        let e = parse_dsn("postgres://h/db?sslmode=verify-full", "env")
            .unwrap_err()
            .to_string();
        assert!(e.contains("valid DSN"), "{e}");
    }
}
