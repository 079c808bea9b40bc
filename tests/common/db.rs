//! Real databases for tests: a fresh PostgreSQL database (on the machine's server)
//! or a fresh SQLite file per test, so parallel tests and later runs never meet.
#![allow(dead_code)]

use sqlx::Connection;
use std::path::PathBuf;

/// The machine's PostgreSQL (trust auth); override with TEST_POSTGRES_URL.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// The address of the machine's PostgreSQL, for a proxy to put itself in front of.
pub fn postgres_addr() -> std::net::SocketAddr {
    let url = postgres_admin_url();
    let host_port = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in the PostgreSQL URL");
    std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .expect("PostgreSQL address resolves")
        .next()
        .expect("an address")
}

/// A database created for one test; `url` points at it.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

/// Creates an empty PostgreSQL database with a unique name. Fails the test (in CI
/// and locally alike) when PostgreSQL is not reachable: it never silently skips.
pub async fn fresh_postgres() -> TestDb {
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required for this test ({admin}): {e}"));
    drop_stale_databases(&mut conn).await;
    let name = format!(
        "karaoke_test_{}_{}",
        karaoke_realtime::auth::now_secs(),
        uuid::Uuid::new_v4().simple()
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create the test database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    TestDb {
        url: format!("{base}/{name}"),
        name,
    }
}

/// Test databases outlive their test (dropping needs an async context the test no
/// longer has), so each new one removes those created more than an hour ago: their
/// names carry their creation time, and no test runs that long.
async fn drop_stale_databases(conn: &mut sqlx::PgConnection) {
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'karaoke\\_test\\_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    let cutoff = karaoke_realtime::auth::now_secs().saturating_sub(3600);
    for (name,) in names {
        let created = name
            .trim_start_matches("karaoke_test_")
            .split('_')
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            // Names from before timestamps were added: stale too.
            .unwrap_or(0);
        if created < cutoff {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut *conn)
            .await;
        }
    }
}

/// A SQLite URL for a new file in a fresh temporary directory.
pub fn fresh_sqlite() -> (String, PathBuf) {
    let dir = std::env::temp_dir().join(format!("karaoke-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    let file = dir.join("karaoke.db");
    (format!("sqlite://{}", file.display()), file)
}
