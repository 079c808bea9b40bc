//! Durable rooms: snapshots, canvases and an append-only event log, in Postgres
//! (production, Supabase) or SQLite (the embedded default).
//!
//! `Store` is the database: connect, migrate, load rooms at start-up, write batches,
//! keep refused rows as dead letters. `writer` holds the observer that queues every
//! change off the room's path and the task that writes the queue in batches,
//! retrying through outages. docs/persistence.md states the guarantees.
//!
//! Every statement is bounded by the statement timeout. A write that fails for any
//! reason but its rows' content closes its connection instead of returning it to the
//! pool: a connection that stopped answering mid-statement must never be reused.

pub mod writer;

use crate::config::Database;
use crate::protocol::Timestamp;
use crate::protocol::canvas::CanvasOp;
use crate::room::canvas::Canvas;
use crate::room::{Action, Actor, Room, StoredRoom};
use serde::{Deserialize, Serialize};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgPool, PgPoolOptions};
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteError, SqlitePool};
use sqlx::{Connection, Executor};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;
use time::OffsetDateTime;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

/// How long start-up waits for the database before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long start-up waits for the migrations at least (they may hold several
/// statements; each is also bounded by the statement timeout on Postgres).
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(60);
/// SQLite binds at most 32766 parameters per statement; pruning binds 3 per canvas.
const SQLITE_PRUNE_CHUNK: usize = 5_000;

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
    #[error("the database did not answer within {} ms ({what})", after.as_millis())]
    Timeout { what: &'static str, after: Duration },
    #[error("cannot create the SQLite directory {path}: {error}")]
    Directory { path: String, error: std::io::Error },
}

/// Why a write did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The database refused the rows for what they hold (a constraint, bad data, a
    /// size limit): writing the same rows again cannot succeed.
    #[error("{0}")]
    Refused(String),
    /// The database failed or was unreachable: retry.
    #[error("{0}")]
    Failed(String),
    /// The database did not answer within the statement timeout: retry (the writer
    /// retries a smaller part first, in case the batch was too big for it).
    #[error("the database did not answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
    /// Cluster mode: these (room, epoch) pairs are stale, another node has taken the
    /// rooms over since; nothing of the batch was written. Their rows must go, and
    /// their owners must stop serving the rooms.
    #[error("fenced: a newer owner holds {}", .0.iter().map(|(r, e)| format!("{r}@{e}")).collect::<Vec<_>>().join(", "))]
    Fenced(Vec<(String, u64)>),
}

impl WriteError {
    /// The same failure, never taken for a refusal of the rows: for the steps of a
    /// write that carry no rows (taking a connection, `BEGIN`).
    fn not_refused(self) -> WriteError {
        match self {
            WriteError::Refused(e) => WriteError::Failed(e),
            other => other,
        }
    }

    /// Whether the call failed to complete (so its connection is not to be reused).
    pub fn is_failure(&self) -> bool {
        !matches!(self, WriteError::Refused(_) | WriteError::Fenced(_))
    }
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> WriteError {
        if is_content_error(&e) {
            WriteError::Refused(e.to_string())
        } else {
            WriteError::Failed(e.to_string())
        }
    }
}

/// Whether the database refused a statement for the rows' content, rather than
/// failing to run it. Postgres: SQLSTATE class 22 (data exception), 23 (integrity
/// constraint violation) or 54 (program limit exceeded). SQLite: the primary result
/// codes TOOBIG (18), CONSTRAINT (19, which a trigger's `RAISE(ABORT)` also gives)
/// and MISMATCH (20). A value sqlx itself cannot encode is content too.
pub fn is_content_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                matches!(pg.code().get(..2), Some("22" | "23" | "54"))
            } else if db.try_downcast_ref::<SqliteError>().is_some() {
                // The extended result code carries the primary one in its low byte.
                let extended = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
                matches!(extended & 0xff, 18..=20)
            } else {
                false
            }
        }
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// One row of `room_events`. `payload` is JSON text.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub room_code: String,
    pub event_type: &'static str,
    pub version: u64,
    pub payload: String,
    pub created_at: OffsetDateTime,
    /// telemetry: the trace of the change this row stores (sampled spans only), so
    /// the batch that writes it joins that trace; `None` when traces are off.
    pub trace: Option<Box<opentelemetry::trace::SpanContext>>,
    /// The owner epoch it was made under (cluster mode); 0 on a single node, where
    /// nothing is fenced.
    pub epoch: u64,
}

/// One row of `room_canvases`: one canvas's elements (`ops`, JSON text) at `version`,
/// the room version of its last change.
#[derive(Debug, Clone)]
pub struct CanvasRow {
    pub room_code: String,
    pub adlob_id: String,
    pub version: u64,
    pub ops: String,
    pub captured_at: OffsetDateTime,
    /// See `EventRow::epoch`.
    pub epoch: u64,
}

/// One row of `room_snapshots`. `snapshot` is JSON text (a `StoredRoom`).
#[derive(Debug, Clone)]
pub struct SnapshotRow {
    pub room_code: String,
    pub version: u64,
    pub snapshot: String,
    pub captured_at: OffsetDateTime,
    /// The canvas rows the snapshot needs (its `canvasVersions`): adlob id → version.
    pub canvases: BTreeMap<String, u64>,
    /// The room's final snapshot (closed through the admin plane).
    pub closed: bool,
    /// See `EventRow::epoch`.
    pub epoch: u64,
}

/// Rows written together: all of them, or (on any error) none.
#[derive(Debug, Default)]
pub struct Batch<'a> {
    pub events: Vec<&'a EventRow>,
    pub canvases: Vec<&'a CanvasRow>,
    pub snapshots: Vec<&'a SnapshotRow>,
}

impl Batch<'_> {
    /// The (room, epoch) pairs the batch's rows were made under, in cluster mode.
    fn fences(&self) -> Vec<(&str, u64)> {
        let events = self.events.iter().map(|e| (e.room_code.as_str(), e.epoch));
        let canvases = self
            .canvases
            .iter()
            .map(|c| (c.room_code.as_str(), c.epoch));
        let snapshots = self
            .snapshots
            .iter()
            .map(|s| (s.room_code.as_str(), s.epoch));
        let mut fences: Vec<(&str, u64)> = events
            .chain(canvases)
            .chain(snapshots)
            .filter(|(_, epoch)| *epoch > 0)
            .collect();
        fences.sort_unstable();
        fences.dedup();
        fences
    }

    pub fn len(&self) -> usize {
        self.events.len() + self.canvases.len() + self.snapshots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A row the database refused, as `persist_dead_letters` keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter<'a> {
    /// `event`, `canvas` or `snapshot`.
    pub kind: &'static str,
    pub room_code: &'a str,
    /// A canvas row's canvas.
    pub adlob_id: Option<&'a str>,
    /// An event row's `event_type`.
    pub event_type: Option<&'static str>,
    pub version: u64,
    /// The row's JSON (payload, ops or snapshot).
    pub body: &'a str,
    pub error: &'a str,
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

/// One room as the store holds it (cluster mode's takeover).
#[derive(Debug)]
pub enum Stored {
    /// Open, at its latest persisted version.
    Open(Box<Room>),
    /// Closed: its code is never reused.
    Closed,
    /// The store has never held it.
    Absent,
    /// It has rows but cannot be restored (the reason, as at start-up).
    Failed(String),
}

/// What start-up loads from the store.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Open rooms, at their latest persisted version.
    pub rooms: Vec<Room>,
    /// Every room code the store has ever held (closed rooms and rooms with dead
    /// letters included): never reused.
    pub known_codes: Vec<String>,
    pub failures: Vec<RestoreFailure>,
}

#[derive(Clone)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Longest any one statement may take (`PERSIST_STATEMENT_TIMEOUT_MS`).
    timeout: Duration,
}

/// The last of `rows` for each key, in order: one statement may not write the same
/// row twice (Postgres refuses an `ON CONFLICT DO UPDATE` that affects a row twice).
/// The writer never puts two rows with one key in a batch; this keeps a mistake
/// there from becoming a batch that fails forever.
fn last_per_key<'a, T, K: std::hash::Hash + Eq>(
    rows: &[&'a T],
    key: impl Fn(&'a T) -> K,
) -> Vec<&'a T> {
    let mut seen = HashSet::new();
    let mut kept: Vec<&T> = rows
        .iter()
        .rev()
        .filter(|r| seen.insert(key(r)))
        .copied()
        .collect();
    kept.reverse();
    kept
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Returns a connection to the pool only if its statement ended cleanly: after a
/// failure (a timeout, an I/O error) it may be mid-statement or frozen, and the
/// pool's own check on return would wait on it forever. Detached and dropped, its
/// socket is closed and the pool opens a fresh one when needed.
fn release<DB: sqlx::Database, T>(conn: PoolConnection<DB>, result: &Result<T, WriteError>) {
    if result.as_ref().is_err_and(WriteError::is_failure) {
        drop(conn.detach());
    }
}

/// One canvas-row key to prune below: (room, adlob, version still needed).
type PruneKey<'a> = (&'a str, &'a str, i64);

impl Store {
    /// Connects to the configured database; `None` for `memory:`.
    /// `statement_timeout` bounds every statement (also set as Postgres's own
    /// `statement_timeout` on each connection, so the server gives up too).
    pub async fn connect(
        database: &Database,
        statement_timeout: Duration,
    ) -> Result<Option<Store>, StoreError> {
        let pool = match database {
            Database::Memory => return Ok(None),
            Database::Postgres(url) => {
                let options = PgConnectOptions::from_str(url).map_err(StoreError::Connect)?;
                let millis = statement_timeout.as_millis().to_string();
                let pool = PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    // Set on each connection, not as startup options, which connection
                    // poolers (Supabase's among them) may refuse. The idle timeout ends
                    // a transaction whose client went silent (a frozen network path):
                    // otherwise it holds its rows' locks, and the retry of the same rows
                    // on a fresh connection would wait on them.
                    .after_connect(move |conn, _| {
                        let millis = millis.clone();
                        Box::pin(async move {
                            sqlx::query(
                                "SELECT set_config('statement_timeout', $1, false), \
                                        set_config('idle_in_transaction_session_timeout', $1, false)",
                            )
                            .bind(millis)
                            .execute(conn)
                            .await
                            .map(drop)
                        })
                    })
                    .connect_with(options)
                    .await
                    .map_err(StoreError::Connect)?;
                Pool::Postgres(pool)
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
                Pool::Sqlite(pool)
            }
        };
        Ok(Some(Store {
            pool,
            timeout: statement_timeout,
        }))
    }

    /// The backend, as the `db.system.name` semantic convention spells it.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Postgres(_) => "postgresql",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    /// The statement timeout this store was opened with.
    pub fn statement_timeout(&self) -> Duration {
        self.timeout
    }

    /// Applies the migrations this server knows; refuses a schema from a newer one.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let after = MIGRATE_TIMEOUT.max(self.timeout);
        let run = async {
            match &self.pool {
                Pool::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
                Pool::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
            }
        };
        let result = tokio::time::timeout(after, run)
            .await
            .map_err(|_| StoreError::Timeout {
                what: "migrations",
                after,
            })?;
        result.map_err(|e| match e {
            MigrateError::VersionMissing(v) => StoreError::SchemaTooNew(v),
            other => StoreError::Migrate(other),
        })
    }

    /// One start-up query, bounded by the statement timeout.
    async fn read<T>(
        &self,
        what: &'static str,
        query: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, query)
            .await
            .map_err(|_| StoreError::Timeout {
                what,
                after: self.timeout,
            })?
            .map_err(StoreError::Query)
    }

    /// Loads every open room: its latest snapshot, the canvas rows it names, then
    /// the events after it.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        let latest: Vec<(String, i64, String)> = match &self.pool {
            Pool::Postgres(pool) => {
                self.read(
                    "latest snapshots",
                    sqlx::query_as(
                        "SELECT DISTINCT ON (room_code) room_code, version, snapshot::text \
                         FROM room_snapshots ORDER BY room_code, version DESC",
                    )
                    .fetch_all(pool),
                )
                .await?
            }
            Pool::Sqlite(pool) => {
                self.read(
                    "latest snapshots",
                    sqlx::query_as(
                        "SELECT s.room_code, s.version, s.snapshot FROM room_snapshots s \
                         WHERE s.version = (SELECT MAX(version) FROM room_snapshots \
                                            WHERE room_code = s.room_code) \
                         ORDER BY s.room_code",
                    )
                    .fetch_all(pool),
                )
                .await?
            }
        };
        let dead_events = self.dead_lettered_events().await?;
        let mut loaded = Loaded::default();
        for (code, version, json) in latest {
            loaded.known_codes.push(code.clone());
            let version = u64::try_from(version).unwrap_or(0);
            match self
                .restore_row(&code, version, &json, dead_events.get(&code))
                .await?
            {
                Ok(Some(room)) => loaded.rooms.push(room),
                Ok(None) => {}
                Err(reason) => loaded.failures.push(RestoreFailure {
                    room_code: code.clone(),
                    version,
                    reason,
                }),
            }
        }
        // A room whose first snapshot was refused has no snapshot row, but its code
        // has rows (dead letters) all the same.
        let mut known: HashSet<String> = loaded.known_codes.drain(..).collect();
        known.extend(dead_events.into_keys());
        loaded.known_codes = known.into_iter().collect();
        loaded.known_codes.sort();
        Ok(loaded)
    }

    /// One room from its latest snapshot row and the events after it: `Ok(None)` if
    /// it was closed; the inner error is why it cannot be restored.
    async fn restore_row(
        &self,
        code: &str,
        version: u64,
        json: &str,
        dead_events: Option<&Vec<u64>>,
    ) -> Result<Result<Option<Room>, String>, StoreError> {
        let stored: StoredRoom = match serde_json::from_str(json) {
            Ok(s) => s,
            Err(e) => return Ok(Err(format!("snapshot is not a room: {e}"))),
        };
        if stored.closed {
            return Ok(Ok(None));
        }
        let stored = match self.with_canvases(code, version, stored).await? {
            Ok(stored) => stored,
            Err(reason) => return Ok(Err(reason)),
        };
        let mut room = match Room::from_stored(stored) {
            Ok(room) => room,
            Err(why) => return Ok(Err(format!("snapshot is invalid: {}", why.message))),
        };
        if room.code() != code || room.version() != version {
            return Ok(Err(format!(
                "snapshot row says {code}@{version} but holds {}@{}",
                room.code(),
                room.version()
            )));
        }
        if let Err(reason) = self.replay(&mut room).await? {
            return Ok(Err(reason));
        }
        // A refused event past where the log ends: restoring the room here would
        // silently drop changes its players saw. Its rows stay for an operator.
        let refused = dead_events
            .into_iter()
            .flatten()
            .copied()
            .filter(|v| *v > room.version())
            .min();
        if let Some(refused) = refused {
            return Ok(Err(format!(
                "event {refused} was refused by the database and is in \
                 persist_dead_letters; the log ends at version {}",
                room.version()
            )));
        }
        room.clear_presence();
        Ok(Ok(Some(room)))
    }

    /// One room as the store holds it now (cluster mode takes rooms over one at a
    /// time). Postgres only: cluster mode needs it.
    pub async fn load_room(&self, code: &str) -> Result<Stored, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(Stored::Absent);
        };
        let latest: Option<(i64, String)> = self
            .read(
                "latest snapshot",
                sqlx::query_as(
                    "SELECT version, snapshot::text FROM room_snapshots \
                     WHERE room_code = $1 ORDER BY version DESC LIMIT 1",
                )
                .bind(code)
                .fetch_optional(pool),
            )
            .await?;
        let dead: Vec<(Option<i64>,)> = self
            .read(
                "dead letters",
                sqlx::query_as(
                    "SELECT CASE WHEN kind = 'event' THEN version END \
                     FROM persist_dead_letters WHERE room_code = $1",
                )
                .bind(code)
                .fetch_all(pool),
            )
            .await?;
        let Some((version, json)) = latest else {
            // Rows without a snapshot (its first one was refused): the code is taken.
            return Ok(if dead.is_empty() {
                Stored::Absent
            } else {
                Stored::Failed("its first snapshot was refused (persist_dead_letters)".into())
            });
        };
        let version = u64::try_from(version).unwrap_or(0);
        let dead: Vec<u64> = dead
            .into_iter()
            .filter_map(|(v,)| v.and_then(|v| u64::try_from(v).ok()))
            .collect();
        Ok(
            match self.restore_row(code, version, &json, Some(&dead)).await? {
                Ok(Some(room)) => Stored::Open(Box::new(room)),
                Ok(None) => Stored::Closed,
                Err(reason) => Stored::Failed(reason),
            },
        )
    }

    /// Cluster mode: makes `node` the owner of `code` under a new epoch, higher than
    /// any before it, and returns it. Waits for writes of the previous owner that are
    /// in flight (they hold the row `FOR SHARE`); every later one is refused.
    pub async fn raise_epoch(&self, code: &str, node: &str) -> Result<u64, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(0);
        };
        let (epoch,): (i64,) = self
            .read(
                "owner epoch",
                sqlx::query_as(
                    "INSERT INTO room_owners (room_code, epoch, node_id) VALUES ($1, 1, $2) \
                     ON CONFLICT (room_code) DO UPDATE \
                     SET epoch = room_owners.epoch + 1, node_id = EXCLUDED.node_id, since = now() \
                     RETURNING epoch",
                )
                .bind(code)
                .bind(node)
                .fetch_one(pool),
            )
            .await?;
        Ok(u64::try_from(epoch).unwrap_or(0))
    }

    /// Cluster mode: the owner epoch of each of `codes` the store has one for.
    pub async fn epochs(&self, codes: &[String]) -> Result<HashMap<String, u64>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(HashMap::new());
        };
        let rows: Vec<(String, i64)> = self
            .read(
                "owner epochs",
                sqlx::query_as(
                    "SELECT room_code, epoch FROM room_owners WHERE room_code = ANY($1)",
                )
                .bind(codes)
                .fetch_all(pool),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(c, e)| (c, u64::try_from(e).unwrap_or(0)))
            .collect())
    }

    /// Cluster mode: the rooms the store records as owned by `node` (a node that is
    /// gone leaves these for the live ones to take over).
    pub async fn rooms_owned_by(&self, node: &str) -> Result<Vec<String>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(Vec::new());
        };
        let rows: Vec<(String,)> = self
            .read(
                "owned rooms",
                // Open rooms only: a node's closed rooms stay in room_owners for ever.
                sqlx::query_as(
                    "SELECT o.room_code FROM room_owners o WHERE o.node_id = $1 \
                     AND NOT COALESCE((SELECT (s.snapshot->>'closed')::boolean \
                                       FROM room_snapshots s WHERE s.room_code = o.room_code \
                                       ORDER BY s.version DESC LIMIT 1), false)",
                )
                .bind(node)
                .fetch_all(pool),
            )
            .await?;
        Ok(rows.into_iter().map(|(c,)| c).collect())
    }

    /// Cluster mode: every open room (latest snapshot not closed), in code order,
    /// after `after`, at most `limit`, each with the room as its latest snapshot has
    /// it (`None` if that does not parse): the whole cluster's `ListRooms`.
    pub async fn open_rooms(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Option<crate::protocol::RoomSnapshot>)>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(Vec::new());
        };
        let rows: Vec<(String, Option<String>)> = self
            .read(
                "open rooms",
                sqlx::query_as(
                    "SELECT room_code, (snapshot->'snapshot')::text FROM \
                     (SELECT DISTINCT ON (room_code) room_code, snapshot \
                     FROM room_snapshots WHERE room_code > $1 ORDER BY room_code, version DESC) s \
                     WHERE NOT COALESCE((snapshot->>'closed')::boolean, false) \
                     ORDER BY room_code LIMIT $2",
                )
                .bind(after)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(code, json)| {
                let snapshot = json.and_then(|j| serde_json::from_str(&j).ok());
                (code, snapshot)
            })
            .collect())
    }

    /// Room code → versions of its refused events (every code with a dead letter of
    /// any kind is a key).
    async fn dead_lettered_events(&self) -> Result<HashMap<String, Vec<u64>>, StoreError> {
        let sql = "SELECT room_code, CASE WHEN kind = 'event' THEN version END \
                   FROM persist_dead_letters WHERE room_code IS NOT NULL";
        let rows: Vec<(String, Option<i64>)> = match &self.pool {
            Pool::Postgres(pool) => {
                self.read("dead letters", sqlx::query_as(sql).fetch_all(pool))
                    .await?
            }
            Pool::Sqlite(pool) => {
                self.read("dead letters", sqlx::query_as(sql).fetch_all(pool))
                    .await?
            }
        };
        let mut map: HashMap<String, Vec<u64>> = HashMap::new();
        for (code, version) in rows {
            let versions = map.entry(code).or_default();
            if let Some(v) = version.and_then(|v| u64::try_from(v).ok()) {
                versions.push(v);
            }
        }
        Ok(map)
    }

    /// Fills a format-2 snapshot's `canvases` from the canvas rows it names. The
    /// inner error is why this room cannot be restored; the outer one stops start-up.
    async fn with_canvases(
        &self,
        code: &str,
        version: u64,
        mut stored: StoredRoom,
    ) -> Result<Result<StoredRoom, String>, StoreError> {
        if stored.canvas_versions.is_empty() {
            return Ok(Ok(stored));
        }
        let rows: Vec<(String, i64, String)> = match &self.pool {
            Pool::Postgres(pool) => {
                self.read(
                    "canvases",
                    sqlx::query_as(
                        "SELECT adlob_id, version, ops::text FROM room_canvases \
                         WHERE room_code = $1",
                    )
                    .bind(code)
                    .fetch_all(pool),
                )
                .await?
            }
            Pool::Sqlite(pool) => {
                self.read(
                    "canvases",
                    sqlx::query_as(
                        "SELECT adlob_id, version, ops FROM room_canvases WHERE room_code = ?1",
                    )
                    .bind(code)
                    .fetch_all(pool),
                )
                .await?
            }
        };
        let mut rows: HashMap<(String, i64), String> = rows
            .into_iter()
            .map(|(adlob, v, ops)| ((adlob, v), ops))
            .collect();
        for (adlob, &v) in &stored.canvas_versions {
            if v == 0 || v > version {
                return Ok(Err(format!(
                    "snapshot names canvas {adlob}@{v}, past its own version {version}"
                )));
            }
            let Some(ops) = rows.remove(&(adlob.clone(), to_i64(v))) else {
                return Ok(Err(format!(
                    "snapshot needs canvas {adlob}@{v}, which is not stored"
                )));
            };
            let canvas = serde_json::from_str::<Vec<CanvasOp>>(&ops)
                .map_err(|e| e.to_string())
                .and_then(|ops| Canvas::from_ops(ops, v).map_err(|why| why.message));
            let canvas = match canvas {
                Ok(canvas) => canvas,
                Err(e) => return Ok(Err(format!("canvas {adlob}@{v} is invalid: {e}"))),
            };
            if stored.canvases.insert(adlob.clone(), canvas).is_some() {
                return Ok(Err(format!("snapshot both holds and names canvas {adlob}")));
            }
        }
        Ok(Ok(stored))
    }

    /// Applies the logged events after the room's version, in order. The inner error
    /// is why this room cannot be restored; the outer one stops start-up.
    async fn replay(&self, room: &mut Room) -> Result<Result<(), String>, StoreError> {
        let code = room.code().to_string();
        let after = to_i64(room.version());
        let rows: Vec<(i64, String)> = match &self.pool {
            Pool::Postgres(pool) => {
                self.read(
                    "events",
                    sqlx::query_as(
                        "SELECT version, payload::text FROM room_events \
                         WHERE room_code = $1 AND version > $2 ORDER BY version",
                    )
                    .bind(&code)
                    .bind(after)
                    .fetch_all(pool),
                )
                .await?
            }
            Pool::Sqlite(pool) => {
                self.read(
                    "events",
                    sqlx::query_as(
                        "SELECT version, payload FROM room_events \
                         WHERE room_code = ?1 AND version > ?2 ORDER BY version",
                    )
                    .bind(&code)
                    .bind(after)
                    .fetch_all(pool),
                )
                .await?
            }
        };
        for (version, payload) in rows {
            let Some(expected) = room.version().checked_add(1) else {
                return Ok(Err(format!("event {version} is past the last version")));
            };
            if u64::try_from(version).ok() != Some(expected) {
                return Ok(Err(format!(
                    "event log has a gap: expected version {expected}, found {version}"
                )));
            }
            let event: EventPayload = match serde_json::from_str(&payload) {
                Ok(event) => event,
                Err(e) => return Ok(Err(format!("event {version} is malformed: {e}"))),
            };
            if let Err(why) = room.apply(&event.actor, event.action, event.at.at()) {
                return Ok(Err(format!(
                    "event {version} does not apply: {}",
                    why.message
                )));
            }
        }
        Ok(Ok(()))
    }

    /// One write statement, bounded by the statement timeout.
    async fn bounded<T>(
        &self,
        statement: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, WriteError> {
        match tokio::time::timeout(self.timeout, statement).await {
            Ok(result) => result.map_err(WriteError::from),
            Err(_) => Err(WriteError::TimedOut(self.timeout)),
        }
    }

    /// Writes a batch, all of it or nothing: events, canvases, snapshots, and the
    /// canvas rows the batch's snapshots make obsolete are deleted. Rows already
    /// present are left alone (events) or rewritten (canvases, and snapshots, whose
    /// final copy may add `closed`), so a retried batch is harmless.
    pub async fn write(&self, batch: &Batch<'_>) -> Result<(), WriteError> {
        let canvases = last_per_key(&batch.canvases, |c| {
            (c.room_code.as_str(), c.adlob_id.as_str(), c.version)
        });
        let snapshots = last_per_key(&batch.snapshots, |s| (s.room_code.as_str(), s.version));
        // Rows older than the version a snapshot needs: no newer snapshot needs them.
        let prune: Vec<PruneKey<'_>> = snapshots
            .iter()
            .flat_map(|s| {
                s.canvases
                    .iter()
                    .map(|(adlob, v)| (s.room_code.as_str(), adlob.as_str(), to_i64(*v)))
            })
            .collect();
        let fences = batch.fences();
        let rows = Rows {
            fences: &fences,
            events: &batch.events,
            canvases: &canvases,
            snapshots: &snapshots,
            prune: &prune,
        };
        match &self.pool {
            Pool::Postgres(pool) => {
                let mut conn = self
                    .bounded(pool.acquire())
                    .await
                    .map_err(WriteError::not_refused)?;
                let result = self.write_postgres(&mut conn, &rows).await;
                release(conn, &result);
                result
            }
            Pool::Sqlite(pool) => {
                let mut conn = self
                    .bounded(pool.acquire())
                    .await
                    .map_err(WriteError::not_refused)?;
                let result = self.write_sqlite(&mut conn, &rows).await;
                release(conn, &result);
                result
            }
        }
    }

    async fn write_postgres(
        &self,
        conn: &mut PgConnection,
        rows: &Rows<'_, '_>,
    ) -> Result<(), WriteError> {
        let mut statements = Vec::new();
        if !rows.events.is_empty() {
            let e = rows.events;
            statements.push(
                sqlx::query(
                    "INSERT INTO room_events (room_code, event_type, version, payload, created_at) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], \
                                          $4::text[]::jsonb[], $5::timestamptz[]) \
                     ON CONFLICT (room_code, version) DO NOTHING",
                )
                .bind(e.iter().map(|e| e.room_code.as_str()).collect::<Vec<_>>())
                .bind(e.iter().map(|e| e.event_type).collect::<Vec<_>>())
                .bind(e.iter().map(|e| to_i64(e.version)).collect::<Vec<_>>())
                .bind(e.iter().map(|e| e.payload.as_str()).collect::<Vec<_>>())
                .bind(e.iter().map(|e| e.created_at).collect::<Vec<_>>()),
            );
        }
        if !rows.canvases.is_empty() {
            let c = rows.canvases;
            statements.push(
                sqlx::query(
                    "INSERT INTO room_canvases (room_code, adlob_id, version, ops, captured_at) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], \
                                          $4::text[]::jsonb[], $5::timestamptz[]) \
                     ON CONFLICT (room_code, adlob_id, version) DO UPDATE \
                     SET ops = EXCLUDED.ops, captured_at = EXCLUDED.captured_at",
                )
                .bind(c.iter().map(|c| c.room_code.as_str()).collect::<Vec<_>>())
                .bind(c.iter().map(|c| c.adlob_id.as_str()).collect::<Vec<_>>())
                .bind(c.iter().map(|c| to_i64(c.version)).collect::<Vec<_>>())
                .bind(c.iter().map(|c| c.ops.as_str()).collect::<Vec<_>>())
                .bind(c.iter().map(|c| c.captured_at).collect::<Vec<_>>()),
            );
        }
        if !rows.snapshots.is_empty() {
            let s = rows.snapshots;
            statements.push(
                sqlx::query(
                    "INSERT INTO room_snapshots (room_code, version, snapshot, captured_at) \
                     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[]::jsonb[], \
                                          $4::timestamptz[]) \
                     ON CONFLICT (room_code, version) DO UPDATE \
                     SET snapshot = EXCLUDED.snapshot, captured_at = EXCLUDED.captured_at",
                )
                .bind(s.iter().map(|s| s.room_code.as_str()).collect::<Vec<_>>())
                .bind(s.iter().map(|s| to_i64(s.version)).collect::<Vec<_>>())
                .bind(s.iter().map(|s| s.snapshot.as_str()).collect::<Vec<_>>())
                .bind(s.iter().map(|s| s.captured_at).collect::<Vec<_>>()),
            );
        }
        if !rows.prune.is_empty() {
            let p = rows.prune;
            statements.push(
                sqlx::query(
                    "DELETE FROM room_canvases c \
                     USING UNNEST($1::text[], $2::text[], $3::int8[]) AS k(room_code, adlob_id, version) \
                     WHERE c.room_code = k.room_code AND c.adlob_id = k.adlob_id \
                       AND c.version < k.version",
                )
                .bind(p.iter().map(|k| k.0).collect::<Vec<_>>())
                .bind(p.iter().map(|k| k.1).collect::<Vec<_>>())
                .bind(p.iter().map(|k| k.2).collect::<Vec<_>>()),
            );
        }
        // One statement is atomic by itself: a batch of events alone (the common
        // case) costs one round trip, not three. A fenced batch needs its check and
        // its rows in one transaction.
        if statements.len() == 1 && rows.fences.is_empty() {
            if let Some(statement) = statements.pop() {
                self.bounded(statement.execute(&mut *conn)).await?;
            }
            return Ok(());
        }
        let mut tx = self
            .bounded(conn.begin())
            .await
            .map_err(WriteError::not_refused)?;
        if !rows.fences.is_empty() {
            // FOR SHARE: a takeover's epoch raise (an UPDATE of the same row) waits
            // for this transaction, and this one sees any raise committed before it.
            let current: Vec<(String, i64)> = self
                .bounded(
                    sqlx::query_as(
                        "SELECT room_code, epoch FROM room_owners \
                         WHERE room_code = ANY($1) FOR SHARE",
                    )
                    .bind(rows.fences.iter().map(|(r, _)| *r).collect::<Vec<_>>())
                    .fetch_all(&mut *tx),
                )
                .await
                .map_err(WriteError::not_refused)?;
            let current: HashMap<&str, i64> =
                current.iter().map(|(r, e)| (r.as_str(), *e)).collect();
            let stale: Vec<(String, u64)> = rows
                .fences
                .iter()
                .filter(|(room, epoch)| current.get(room) != Some(&to_i64(*epoch)))
                .map(|(room, epoch)| (room.to_string(), *epoch))
                .collect();
            if !stale.is_empty() {
                let _ = self.bounded(tx.rollback()).await;
                return Err(WriteError::Fenced(stale));
            }
        }
        for statement in statements {
            self.bounded(statement.execute(&mut *tx)).await?;
        }
        self.bounded(tx.commit()).await
    }

    async fn write_sqlite(
        &self,
        conn: &mut SqliteConnection,
        rows: &Rows<'_, '_>,
    ) -> Result<(), WriteError> {
        // SQLite binds at most 32766 parameters; batches stay far below (pruning,
        // which binds 3 per canvas a snapshot names, goes in chunks).
        let mut tx = self
            .bounded(conn.begin())
            .await
            .map_err(WriteError::not_refused)?;
        if !rows.events.is_empty() {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO room_events (room_code, event_type, version, payload, created_at) ",
            );
            q.push_values(rows.events, |mut b, e| {
                b.push_bind(e.room_code.as_str())
                    .push_bind(e.event_type)
                    .push_bind(to_i64(e.version))
                    .push_bind(e.payload.as_str())
                    .push_bind(crate::protocol::format_time(e.created_at));
            });
            q.push(" ON CONFLICT (room_code, version) DO NOTHING");
            self.bounded(q.build().execute(&mut *tx)).await?;
        }
        if !rows.canvases.is_empty() {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO room_canvases (room_code, adlob_id, version, ops, captured_at) ",
            );
            q.push_values(rows.canvases, |mut b, c| {
                b.push_bind(c.room_code.as_str())
                    .push_bind(c.adlob_id.as_str())
                    .push_bind(to_i64(c.version))
                    .push_bind(c.ops.as_str())
                    .push_bind(crate::protocol::format_time(c.captured_at));
            });
            q.push(
                " ON CONFLICT (room_code, adlob_id, version) DO UPDATE \
                 SET ops = excluded.ops, captured_at = excluded.captured_at",
            );
            self.bounded(q.build().execute(&mut *tx)).await?;
        }
        if !rows.snapshots.is_empty() {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO room_snapshots (room_code, version, snapshot, captured_at) ",
            );
            q.push_values(rows.snapshots, |mut b, s| {
                b.push_bind(s.room_code.as_str())
                    .push_bind(to_i64(s.version))
                    .push_bind(s.snapshot.as_str())
                    .push_bind(crate::protocol::format_time(s.captured_at));
            });
            q.push(
                " ON CONFLICT (room_code, version) DO UPDATE \
                 SET snapshot = excluded.snapshot, captured_at = excluded.captured_at",
            );
            self.bounded(q.build().execute(&mut *tx)).await?;
        }
        for chunk in rows.prune.chunks(SQLITE_PRUNE_CHUNK) {
            let mut q = sqlx::QueryBuilder::new("WITH k(room_code, adlob_id, version) AS (");
            q.push_values(chunk, |mut b, k| {
                b.push_bind(k.0).push_bind(k.1).push_bind(k.2);
            });
            q.push(
                ") DELETE FROM room_canvases WHERE EXISTS (SELECT 1 FROM k \
                 WHERE k.room_code = room_canvases.room_code \
                   AND k.adlob_id = room_canvases.adlob_id \
                   AND room_canvases.version < k.version)",
            );
            self.bounded(q.build().execute(&mut *tx)).await?;
        }
        self.bounded(tx.commit()).await
    }

    /// Keeps a refused row in `persist_dead_letters`.
    pub async fn dead_letter(&self, letter: &DeadLetter<'_>) -> Result<(), WriteError> {
        let insert = "INSERT INTO persist_dead_letters \
                      (kind, room_code, adlob_id, event_type, version, body, error, failed_at) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        let now = OffsetDateTime::now_utc();
        match &self.pool {
            Pool::Postgres(pool) => {
                let mut conn = self
                    .bounded(pool.acquire())
                    .await
                    .map_err(WriteError::not_refused)?;
                let statement = sqlx::query(insert)
                    .bind(letter.kind)
                    .bind(letter.room_code)
                    .bind(letter.adlob_id)
                    .bind(letter.event_type)
                    .bind(to_i64(letter.version))
                    .bind(letter.body)
                    .bind(letter.error)
                    .bind(now);
                let result = self.bounded(conn.execute(statement)).await.map(drop);
                release(conn, &result);
                result
            }
            Pool::Sqlite(pool) => {
                let mut conn = self
                    .bounded(pool.acquire())
                    .await
                    .map_err(WriteError::not_refused)?;
                let statement = sqlx::query(insert)
                    .bind(letter.kind)
                    .bind(letter.room_code)
                    .bind(letter.adlob_id)
                    .bind(letter.event_type)
                    .bind(to_i64(letter.version))
                    .bind(letter.body)
                    .bind(letter.error)
                    .bind(crate::protocol::format_time(now));
                let result = self.bounded(conn.execute(statement)).await.map(drop);
                release(conn, &result);
                result
            }
        }
    }
}

/// A batch's rows as the write statements take them.
struct Rows<'b, 'a> {
    /// (room, epoch) pairs to check before writing (cluster mode; Postgres only).
    fences: &'b [(&'a str, u64)],
    events: &'b [&'a EventRow],
    canvases: &'b [&'a CanvasRow],
    snapshots: &'b [&'a SnapshotRow],
    prune: &'b [PruneKey<'a>],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_key_the_last_one_kept_in_order() {
        let rows = [(1, "a"), (2, "b"), (1, "c"), (3, "d")];
        let refs: Vec<&(i32, &str)> = rows.iter().collect();
        let kept = last_per_key(&refs, |r| r.0);
        assert_eq!(kept, [&(2, "b"), &(1, "c"), &(3, "d")]);
    }

    #[test]
    fn only_database_refusals_of_content_are_content_errors() {
        assert!(!is_content_error(&sqlx::Error::PoolTimedOut));
        assert!(!is_content_error(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(is_content_error(&sqlx::Error::Encode("bad".into())));
    }
}
