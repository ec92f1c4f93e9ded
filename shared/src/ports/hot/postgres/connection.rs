//! Connections: the DSN (from the environment, a fixed string, Secrets Manager or SSM; a DSN or
//! RDS's secret JSON), TLS as libpq's `sslmode` defines it, and a small pool of idle
//! connections per DSN source.
//!
//! TLS (rustls): `disable` never, `prefer` (the default) when the server offers it, `require`
//! always, without checking the certificate unless a CA bundle is given (then like
//! `verify-ca`); `verify-ca` checks the certificate chain against the bundle, `verify-full`
//! also the host name. The bundle is the DSN's `sslrootcert` or `COMPACTOR_PG_CA_FILE`.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::Client;

use super::{describe_pg_error, pg_err, DsnSource, PostgresSource, CA_FILE_ENV};
use crate::error::{Error, Result};
use crate::model::hot::config::HotDatasetConfig;

/// How the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt only (libpq's `require` without a root certificate).
    None,
    /// The certificate chain leads to a trusted CA (`verify-ca`).
    Chain,
    /// The chain, and the certificate names the host (`verify-full`).
    Full,
}

/// A parsed DSN: the connection settings, and how TLS checks the server.
pub struct ParsedDsn {
    pub config: tokio_postgres::Config,
    pub verify: Verify,
    /// The DSN's `sslrootcert`, if it names one.
    pub root_cert: Option<String>,
}

/// The sslmode of libpq's six that tokio-postgres does not know, mapped to what it does know
/// plus the check rustls does.
fn ssl_mode(mode: &str, has_ca: bool) -> std::result::Result<(SslMode, Verify), String> {
    let verify_if_ca = if has_ca { Verify::Chain } else { Verify::None };
    Ok(match mode {
        "disable" => (SslMode::Disable, Verify::None),
        "allow" | "prefer" => (SslMode::Prefer, verify_if_ca),
        "require" => (SslMode::Require, verify_if_ca),
        "verify-ca" => (SslMode::Require, Verify::Chain),
        "verify-full" => (SslMode::Require, Verify::Full),
        other => {
            return Err(format!(
                "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ))
        }
    })
}

/// Takes `sslmode` and `sslrootcert` out of a URL or key=value DSN (tokio-postgres knows
/// neither verify mode nor `sslrootcert`).
fn take_tls_options(text: &str) -> (String, Option<String>, Option<String>) {
    let mut mode = None;
    let mut root = None;
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        let Some((base, query)) = text.split_once('?') else {
            return (text.to_string(), None, None);
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = || {
                url::form_urlencoded::parse(format!("v={value}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            match key {
                "sslmode" => mode = decoded(),
                "sslrootcert" => root = decoded(),
                _ => kept.push(pair),
            }
        }
        let rebuilt = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (rebuilt, mode, root);
    }
    // key=value pairs; values may be single-quoted, with \ escapes.
    let mut kept = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        if key.is_empty() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        chars.next_if_eq(&'=');
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )),
        }
    }
    (kept.join(" "), mode, root)
}

/// Parses a DSN, or RDS's secret JSON, into connection settings.
pub fn parse_dsn(text: &str, origin: &str, ca_file: Option<&str>) -> Result<ParsedDsn> {
    let text = text.trim();
    let bad = |message: String| Error::Postgres {
        context: format!("the DSN from {origin}"),
        message,
    };
    let (mut config, mode, root_cert) = if text.starts_with('{') {
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
            #[serde(default)]
            sslrootcert: Option<String>,
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
        (config, secret.sslmode, secret.sslrootcert)
    } else {
        let (rest, mode, root) = take_tls_options(text);
        let config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            bad(format!(
                "is not a valid DSN ({e}); write postgres://user:password@host:5432/db?sslmode=require \
                 or host=... user=... dbname=..."
            ))
        })?;
        (config, mode, root)
    };
    let has_ca = root_cert.is_some() || ca_file.is_some();
    let (ssl, verify) = ssl_mode(mode.as_deref().unwrap_or("prefer"), has_ca).map_err(bad)?;
    if verify != Verify::None && !has_ca {
        return Err(bad(format!(
            "sslmode={} checks the server's certificate against a CA bundle: name one with \
             sslrootcert=PATH in the DSN or {CA_FILE_ENV} (e.g. RDS's global-bundle.pem)",
            mode.unwrap_or_default()
        )));
    }
    config.ssl_mode(ssl);
    Ok(ParsedDsn {
        config,
        verify,
        root_cert,
    })
}

pub(super) mod tls {
    //! The rustls connector: encrypting only, or checking the certificate chain against a CA
    //! bundle, with or without the host name.

    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

    use super::Verify;
    use crate::error::{Error, Result};

    /// Checks the server's certificate as `verify` says: not at all, its chain, or its chain
    /// and host name.
    #[derive(Debug)]
    struct ServerCheck {
        chain: Option<Arc<WebPkiServerVerifier>>,
        names: bool,
        provider: Arc<CryptoProvider>,
    }

    impl ServerCertVerifier for ServerCheck {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            let Some(chain) = &self.chain else {
                return Ok(ServerCertVerified::assertion());
            };
            match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) if !self.names => Ok(ServerCertVerified::assertion()),
                other => other,
            }
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
                &self.provider.signature_verification_algorithms,
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
                &self.provider.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    fn roots(path: &str) -> Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        let read_err = |e: String| Error::Postgres {
            context: format!(
                "reading CA bundle {path} (sslrootcert or {})",
                super::CA_FILE_ENV
            ),
            message: e,
        };
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| read_err(e.to_string()))? {
            let cert = cert.map_err(|e| read_err(e.to_string()))?;
            roots.add(cert).map_err(|e| read_err(e.to_string()))?;
        }
        Ok(roots)
    }

    pub fn connector(
        verify: Verify,
        ca_file: Option<&str>,
    ) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls_err = |e: String| Error::Postgres {
            context: "TLS set-up".into(),
            message: e,
        };
        let chain = match (verify, ca_file) {
            (Verify::None, _) | (_, None) => None,
            (_, Some(path)) => Some(
                WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots(path)?),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| tls_err(e.to_string()))?,
            ),
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerCheck {
                chain,
                names: verify == Verify::Full,
                provider,
            }))
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

impl PostgresSource {
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
                        message: crate::ports::aws::ErrorInfo::of(&e).message,
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
                        message: crate::ports::aws::ErrorInfo::of(&e).message,
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

    /// The connection settings and TLS connector of a dataset.
    pub(super) async fn connect_config(
        &self,
        hot: &HotDatasetConfig,
        refresh: bool,
    ) -> Result<(
        tokio_postgres::Config,
        tokio_postgres_rustls::MakeRustlsConnect,
    )> {
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
        let parsed = parse_dsn(&text, &origin, self.ca_file.as_deref())?;
        let mut config = parsed.config;
        if config.get_application_name().is_none() {
            config.application_name("parquet-compactor");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let ca = parsed.root_cert.as_deref().or(self.ca_file.as_deref());
        let connector = tls::connector(parsed.verify, ca)?;
        Ok((config, connector))
    }

    pub(super) async fn checkout(&self, hot: &HotDatasetConfig) -> Result<Client> {
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
        let from_secret = matches!(
            self.dsn,
            DsnSource::SecretsManager { .. } | DsnSource::Ssm { .. }
        );
        let mut refresh = false;
        loop {
            let (config, connector) = self.connect_config(hot, refresh).await?;
            let hosts = format!("{:?}", config.get_hosts());
            match config.connect(connector).await {
                Ok((client, connection)) => {
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::warn!(error = %describe_pg_error(&e), "postgres connection ended with an error");
                        }
                    });
                    return Ok(client);
                }
                // A rotated secret: read it again, once.
                Err(e) if from_secret && !refresh && super::is_auth_failure(&e) => {
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

    pub(super) fn checkin(&self, hot: &HotDatasetConfig, client: Client) {
        if !client.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.push((self.dsn_key(hot), client));
        }
    }

    /// Runs `op` on a pooled connection; the connection is reused only if `op` succeeded.
    pub(super) async fn with_client<T>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsns_and_rds_secrets_parse() {
        let p = parse_dsn(
            "postgres://u:p@db.example:6543/chain?sslmode=require",
            "x",
            None,
        )
        .unwrap();
        assert_eq!(p.config.get_user(), Some("u"));
        assert_eq!(p.config.get_ports(), &[6543]);
        assert_eq!(p.verify, Verify::None);
        let p = parse_dsn(
            r#"{"username":"u","password":"p@ss","host":"h","port":5432,"dbname":"d","engine":"postgres"}"#,
            "secret",
            None,
        )
        .unwrap();
        assert_eq!(
            (p.config.get_user(), p.config.get_dbname()),
            (Some("u"), Some("d"))
        );
        assert_eq!(p.config.get_password(), Some(&b"p@ss"[..]));
        let e = parse_dsn(r#"{"user":"u"}"#, "secret", None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("RDS secret"), "{e}");
        assert!(parse_dsn("postgres://h/db?sslmode=bogus", "env", None).is_err());
    }

    #[test]
    fn verify_modes_follow_libpq() {
        let mode =
            |dsn: &str, ca: Option<&str>| parse_dsn(dsn, "x", ca).map(|p| (p.verify, p.root_cert));
        assert_eq!(
            mode(
                "postgres://h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem",
                None
            )
            .unwrap(),
            (Verify::Full, Some("/tmp/ca.pem".into()))
        );
        assert_eq!(
            mode("postgres://h/db?sslmode=verify-ca", Some("/ca.pem"))
                .unwrap()
                .0,
            Verify::Chain
        );
        // require with a CA bundle behaves as verify-ca, as in libpq.
        assert_eq!(
            mode("postgres://h/db?sslmode=require", Some("/ca.pem"))
                .unwrap()
                .0,
            Verify::Chain
        );
        let e = mode("postgres://h/db?sslmode=verify-full", None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("sslrootcert") && e.contains(CA_FILE_ENV), "{e}");
        let p = parse_dsn(
            "host=db user=u sslmode=verify-full sslrootcert='/a b/ca.pem' dbname=x",
            "x",
            None,
        )
        .unwrap();
        assert_eq!(
            (p.verify, p.root_cert.as_deref()),
            (Verify::Full, Some("/a b/ca.pem"))
        );
        assert_eq!(p.config.get_dbname(), Some("x"));
        let rds = parse_dsn(
            r#"{"username":"u","password":"p","host":"h","sslmode":"verify-full","sslrootcert":"/ca.pem"}"#,
            "secret",
            None,
        )
        .unwrap();
        assert_eq!(rds.verify, Verify::Full);
    }
}
