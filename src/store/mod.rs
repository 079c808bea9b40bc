//! Durable rooms: snapshots and an append-only event log, in Postgres (production,
//! Supabase) or SQLite (the embedded default).
//!
//! `Store` is the database: connect, migrate, load rooms at start-up, write batches.
//! `writer` holds the observer that queues every change off the room's path and the
//! task that writes the queue in batches, retrying through outages.
//! docs/persistence.md states the guarantees.

pub mod writer;

use crate::config::Database;
use crate::protocol::Timestamp;
use crate::room::{Action, Actor, Room, StoredRoom};
use serde::{Deserialize, Serialize};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use std::str::FromStr;
use std::time::Duration;
use time::OffsetDateTime;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

/// How long start-up waits for the database before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach the database: {0}")]
    Connect(sqlx::Error),
    #[error(
        "the database schema is newer than this server (migration {0} is unknown to it): \
         upgrade the server, or point it at another database"
    )]
    SchemaTooNew(i64),
    #[error("migrating the database failed: {0}")]
    Migrate(MigrateError),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    #[error("cannot create the SQLite directory {path}: {error}")]
    Directory { path: String, error: std::io::Error },
}

/// One row of `room_events`. `payload` is JSON text.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub room_code: String,
    pub event_type: &'static str,
    pub version: u64,
    pub payload: String,
    pub created_at: OffsetDateTime,
}

/// One row of `room_snapshots`. `snapshot` is JSON text (a `StoredRoom`).
#[derive(Debug, Clone)]
pub struct SnapshotRow {
    pub room_code: String,
    pub version: u64,
    pub snapshot: String,
    pub captured_at: OffsetDateTime,
}

/// What an event row's payload holds: enough to replay the change exactly.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventPayload {
    pub actor: Actor,
    /// Range-checked when a stored row is read back, like any other input.
    pub at: Timestamp,
    pub action: Action,
}

/// A room that could not be restored, and why (reported at start-up).
#[derive(Debug)]
pub struct RestoreFailure {
    pub room_code: String,
    pub version: u64,
    pub reason: String,
}

/// What start-up loads from the store.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Open rooms, at their latest persisted version.
    pub rooms: Vec<Room>,
    /// Every room code the store has ever held (closed rooms included): never reused.
    pub known_codes: Vec<String>,
    pub failures: Vec<RestoreFailure>,
}

#[derive(Clone)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// The snapshots of a batch, keeping only the last one of each (room, version): a
/// room closed, or whose presentation moved, since its last snapshot queues another
/// row at the same version, and one statement may not write the same row twice
/// (PostgreSQL refuses an `ON CONFLICT DO UPDATE` that affects a row twice).
fn last_per_version(snapshots: &[SnapshotRow]) -> Vec<&SnapshotRow> {
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<&SnapshotRow> = snapshots
        .iter()
        .rev()
        .filter(|s| seen.insert((s.room_code.as_str(), s.version)))
        .collect();
    kept.reverse();
    kept
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Connects to the configured database; `None` for `memory:`.
    pub async fn connect(database: &Database) -> Result<Option<Store>, StoreError> {
        match database {
            Database::Memory => Ok(None),
            Database::Postgres(url) => {
                let pool = PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect(url)
                    .await
                    .map_err(StoreError::Connect)?;
                Ok(Some(Store::Postgres(pool)))
            }
            Database::Sqlite(url) => {
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(StoreError::Connect)?
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
                if let Some(dir) = options.get_filename().parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(|error| StoreError::Directory {
                        path: dir.display().to_string(),
                        error,
                    })?;
                }
                // One connection: SQLite has one writer anyway, and the writer task
                // is the only user after start-up.
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(StoreError::Connect)?;
                Ok(Some(Store::Sqlite(pool)))
            }
        }
    }

    /// Applies the migrations this server knows; refuses a schema from a newer one.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let result = match self {
            Store::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
            Store::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
        };
        result.map_err(|e| match e {
            MigrateError::VersionMissing(v) => StoreError::SchemaTooNew(v),
            other => StoreError::Migrate(other),
        })
    }

    /// Loads every open room: its latest snapshot, then the events after it.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        let latest: Vec<(String, i64, String)> = match self {
            Store::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT DISTINCT ON (room_code) room_code, version, snapshot::text \
                     FROM room_snapshots ORDER BY room_code, version DESC",
                )
                .fetch_all(pool)
                .await?
            }
            Store::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT s.room_code, s.version, s.snapshot FROM room_snapshots s \
                     WHERE s.version = (SELECT MAX(version) FROM room_snapshots \
                                        WHERE room_code = s.room_code) \
                     ORDER BY s.room_code",
                )
                .fetch_all(pool)
                .await?
            }
        };
        let mut loaded = Loaded::default();
        for (code, version, json) in latest {
            loaded.known_codes.push(code.clone());
            let version = u64::try_from(version).unwrap_or(0);
            let fail = |reason: String| RestoreFailure {
                room_code: code.clone(),
                version,
                reason,
            };
            let stored: StoredRoom = match serde_json::from_str(&json) {
                Ok(s) => s,
                Err(e) => {
                    loaded
                        .failures
                        .push(fail(format!("snapshot is not a room: {e}")));
                    continue;
                }
            };
            if stored.closed {
                continue;
            }
            let mut room = match Room::from_stored(stored) {
                Ok(room) => room,
                Err(why) => {
                    loaded
                        .failures
                        .push(fail(format!("snapshot is invalid: {}", why.message)));
                    continue;
                }
            };
            if room.code() != code || room.version() != version {
                loaded.failures.push(fail(format!(
                    "snapshot row says {code}@{version} but holds {}@{}",
                    room.code(),
                    room.version()
                )));
                continue;
            }
            match self.replay(&mut room).await {
                Ok(()) => {
                    room.clear_presence();
                    loaded.rooms.push(room);
                }
                Err(reason) => loaded.failures.push(fail(reason)),
            }
        }
        Ok(loaded)
    }

    /// Applies the logged events after the room's version, in order.
    async fn replay(&self, room: &mut Room) -> Result<(), String> {
        let code = room.code().to_string();
        let after = to_i64(room.version());
        let rows: Vec<(i64, String)> = match self {
            Store::Postgres(pool) => sqlx::query_as(
                "SELECT version, payload::text FROM room_events \
                 WHERE room_code = $1 AND version > $2 ORDER BY version",
            )
            .bind(&code)
            .bind(after)
            .fetch_all(pool)
            .await
            .map_err(|e| e.to_string())?,
            Store::Sqlite(pool) => sqlx::query_as(
                "SELECT version, payload FROM room_events \
                 WHERE room_code = ?1 AND version > ?2 ORDER BY version",
            )
            .bind(&code)
            .bind(after)
            .fetch_all(pool)
            .await
            .map_err(|e| e.to_string())?,
        };
        for (version, payload) in rows {
            let expected = room.version() + 1;
            if u64::try_from(version).ok() != Some(expected) {
                return Err(format!(
                    "event log has a gap: expected version {expected}, found {version}"
                ));
            }
            let event: EventPayload = serde_json::from_str(&payload)
                .map_err(|e| format!("event {version} is malformed: {e}"))?;
            room.apply(&event.actor, event.action, event.at.at())
                .map_err(|why| format!("event {version} does not apply: {}", why.message))?;
        }
        Ok(())
    }

    /// Writes events and snapshots, each kind in one round trip. Rows already
    /// present are left alone (events) or rewritten with the same version (snapshots,
    /// whose final copy may add `closed`), so a retried batch is harmless.
    pub async fn write(
        &self,
        events: &[EventRow],
        snapshots: &[SnapshotRow],
    ) -> Result<(), sqlx::Error> {
        let snapshots = last_per_version(snapshots);
        match self {
            Store::Postgres(pool) => {
                if !events.is_empty() {
                    sqlx::query(
                        "INSERT INTO room_events (room_code, event_type, version, payload, created_at) \
                         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], \
                                              $4::text[]::jsonb[], $5::timestamptz[]) \
                         ON CONFLICT (room_code, version) DO NOTHING",
                    )
                    .bind(events.iter().map(|e| e.room_code.as_str()).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| e.event_type).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| to_i64(e.version)).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| e.payload.as_str()).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| e.created_at).collect::<Vec<_>>())
                    .execute(pool)
                    .await?;
                }
                if !snapshots.is_empty() {
                    sqlx::query(
                        "INSERT INTO room_snapshots (room_code, version, snapshot, captured_at) \
                         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[]::jsonb[], \
                                              $4::timestamptz[]) \
                         ON CONFLICT (room_code, version) DO UPDATE \
                         SET snapshot = EXCLUDED.snapshot, captured_at = EXCLUDED.captured_at",
                    )
                    .bind(
                        snapshots
                            .iter()
                            .map(|s| s.room_code.as_str())
                            .collect::<Vec<_>>(),
                    )
                    .bind(
                        snapshots
                            .iter()
                            .map(|s| to_i64(s.version))
                            .collect::<Vec<_>>(),
                    )
                    .bind(
                        snapshots
                            .iter()
                            .map(|s| s.snapshot.as_str())
                            .collect::<Vec<_>>(),
                    )
                    .bind(snapshots.iter().map(|s| s.captured_at).collect::<Vec<_>>())
                    .execute(pool)
                    .await?;
                }
            }
            Store::Sqlite(pool) => {
                // SQLite binds at most 32766 parameters; batches stay far below.
                let mut tx = pool.begin().await?;
                if !events.is_empty() {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO room_events (room_code, event_type, version, payload, created_at) ",
                    );
                    q.push_values(events, |mut b, e| {
                        b.push_bind(e.room_code.as_str())
                            .push_bind(e.event_type)
                            .push_bind(to_i64(e.version))
                            .push_bind(e.payload.as_str())
                            .push_bind(crate::protocol::format_time(e.created_at));
                    });
                    q.push(" ON CONFLICT (room_code, version) DO NOTHING");
                    q.build().execute(&mut *tx).await?;
                }
                if !snapshots.is_empty() {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO room_snapshots (room_code, version, snapshot, captured_at) ",
                    );
                    q.push_values(&snapshots, |mut b, s| {
                        b.push_bind(s.room_code.as_str())
                            .push_bind(to_i64(s.version))
                            .push_bind(s.snapshot.as_str())
                            .push_bind(crate::protocol::format_time(s.captured_at));
                    });
                    q.push(
                        " ON CONFLICT (room_code, version) DO UPDATE \
                         SET snapshot = excluded.snapshot, captured_at = excluded.captured_at",
                    );
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }
}
