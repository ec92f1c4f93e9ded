//! TLS to PostgreSQL as libpq's `sslmode` defines it: `require` encrypts (and with a CA bundle
//! checks the chain, like `verify-ca`); `verify-ca` checks the chain, `verify-full` also the
//! host name; a certificate from another CA is refused. Against a server of its own started
//! with TLS (scripts/postgres start DIR --tls).

use compaction::model::hot::config::HotDatasetConfig;
use compaction::ports::hot::postgres::{DsnSource, PostgresSource};
use compaction::ports::hot::HotSource;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_encrypts_and_verifies_the_server_with_a_ca_bundle() {
    let (dsn, dir) = e2e_tests::pg::private_server(true);
    let (plain, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .expect("plain connection");
    tokio::spawn(connection);
    plain
        .batch_execute(
            "CREATE TABLE t (chain_id int8, block_number int8);
             INSERT INTO t SELECT 1, g FROM generate_series(0, 99) g;",
        )
        .await
        .unwrap();
    let hot = HotDatasetConfig::new("t", "public.t");
    let require = dsn
        .replace("127.0.0.1", "localhost")
        .replace("sslmode=disable", "sslmode=require");
    let source = |ca: Option<&str>| {
        PostgresSource::new(DsnSource::Fixed(require.clone()))
            .with_ca_file(ca.map(|name| dir.join(name).display().to_string()))
    };

    // Encrypted without a CA bundle (libpq's `require`): the server sees a TLS session.
    let unverified = source(None);
    assert_eq!(unverified.tip(&hot).await.unwrap(), Some(99));
    let ssl: Option<bool> = plain
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'parquet-compactor'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ssl, Some(true), "the compactor's connection uses TLS");

    // Verified against the CA that signed the server's certificate.
    assert_eq!(source(Some("ca.pem")).tip(&hot).await.unwrap(), Some(99));

    // A certificate from another CA is refused, and the error says so.
    let e = source(Some("other-ca.pem"))
        .tip(&hot)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("connecting") && e.to_lowercase().contains("certificate"),
        "{e}"
    );

    // A missing bundle is a clear error too.
    let e = source(Some("no-such.pem"))
        .tip(&hot)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no-such.pem"), "{e}");

    // verify-full checks the host name too; verify-ca only the chain. The server's
    // certificate names localhost and 127.0.0.1, not "db.invalid".
    let ca = dir.join("ca.pem").display().to_string();
    let port = dsn
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    let with_mode = |host: &str, mode: &str| {
        PostgresSource::new(DsnSource::Fixed(format!(
            "postgres://postgres@{host}:{port}/postgres?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={}",
            ca.replace('/', "%2F")
        )))
    };
    assert_eq!(
        with_mode("localhost", "verify-full")
            .tip(&hot)
            .await
            .unwrap(),
        Some(99)
    );
    assert_eq!(
        with_mode("db.invalid", "verify-ca")
            .tip(&hot)
            .await
            .unwrap(),
        Some(99)
    );
    let e = with_mode("db.invalid", "verify-full")
        .tip(&hot)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // A verify mode without a CA bundle says where to name one.
    let e = PostgresSource::new(DsnSource::Fixed(require.replace("require", "verify-full")))
        .tip(&hot)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("sslrootcert"), "{e}");
}
