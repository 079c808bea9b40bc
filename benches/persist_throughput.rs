//! Persistence throughput: how many state changes per second the rooms apply, and
//! how many event rows per second the writer gets into the database, with the
//! server running in this process on a real PostgreSQL (or SQLite) database.
//!
//! `cargo bench --bench persist_throughput` creates a fresh database, starts the
//! server on it, creates `BENCH_ROOMS` rooms, and drives `UpdateSettings` changes
//! through `RoomHandle::apply` from `BENCH_TASKS` concurrent tasks for
//! `BENCH_SECONDS`. It then waits for the writer to drain its queue, checks that the
//! database holds one event row per applied change, and prints one JSON line.
//!
//! Environment (all optional):
//! - `BENCH_DATABASE`: `postgres` (default) or `sqlite`
//! - `BENCH_POSTGRES_URL`: the server to create the database on
//!   (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! - `BENCH_ROOMS` (default 200), `BENCH_TASKS` (default 256), `BENCH_SECONDS`
//!   (default 10)
//! - `PERSIST_BATCH_MAX`, `PERSIST_FLUSH_INTERVAL_MS`, `PERSIST_QUEUE_LIMIT`,
//!   `SNAPSHOT_INTERVAL_MS`: the server's settings (defaults as in production)
//!
//! Counters come from the server's own metrics (`event_persist_success_total`,
//! `persist_batches_total`, `persist_batch_micros_total`, `persist_queue_depth`),
//! the numbers operators see in `metrics_flush`.

use karaoke_realtime::config::{Config, Database};
use karaoke_realtime::observe::Origin;
use karaoke_realtime::protocol::{ErrorCode, PlayerSummary};
use karaoke_realtime::room::{Action, Room, Settings, SettingsPatch};
use karaoke_realtime::server;
use serde_json::json;
use sqlx::Connection;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: cannot parse {v:?}")),
        Err(_) => default,
    }
}

/// A database made for this run, removed at the end.
enum BenchDb {
    Postgres { admin: String, name: String },
    Sqlite { dir: std::path::PathBuf },
}

impl BenchDb {
    async fn fresh(kind: &str) -> (BenchDb, String) {
        match kind {
            "postgres" => {
                let admin = std::env::var("BENCH_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL is required ({admin}): {e}"));
                let name = format!(
                    "karaoke_bench_{}_{}",
                    karaoke_realtime::auth::now_secs(),
                    uuid::Uuid::new_v4().simple()
                );
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create the bench database");
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                let url = format!("{base}/{name}");
                (BenchDb::Postgres { admin, name }, url)
            }
            "sqlite" => {
                let dir = std::env::temp_dir()
                    .join(format!("karaoke-bench-{}", uuid::Uuid::new_v4().simple()));
                std::fs::create_dir_all(&dir).expect("create a temp dir");
                let url = format!("sqlite://{}", dir.join("karaoke.db").display());
                (BenchDb::Sqlite { dir }, url)
            }
            other => panic!("BENCH_DATABASE: expected postgres or sqlite, got {other:?}"),
        }
    }

    /// Event rows in `room_events` (every applied change is one).
    async fn event_rows(&self, url: &str) -> i64 {
        let sql = "SELECT COUNT(*) FROM room_events";
        let n: (i64,) = match self {
            BenchDb::Postgres { .. } => {
                let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
                sqlx::query_as(sql).fetch_one(&mut c).await.expect("count")
            }
            BenchDb::Sqlite { .. } => {
                let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect");
                sqlx::query_as(sql).fetch_one(&mut c).await.expect("count")
            }
        };
        n.0
    }

    async fn remove(self) {
        match self {
            BenchDb::Postgres { admin, name } => {
                let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect");
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .expect("drop the bench database");
            }
            BenchDb::Sqlite { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

fn host(id: &str) -> PlayerSummary {
    PlayerSummary {
        id: id.into(),
        name: format!("Player {id}"),
        emoji: "🎤".into(),
        is_ready: false,
        is_host: true,
        seat_index: 0,
        connected: false,
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let backend = std::env::var("BENCH_DATABASE").unwrap_or_else(|_| "postgres".into());
    let rooms: usize = env_or("BENCH_ROOMS", 200);
    let tasks: usize = env_or("BENCH_TASKS", 256);
    let seconds: f64 = env_or("BENCH_SECONDS", 10.0);

    let (db, url) = BenchDb::fresh(&backend).await;
    let mut config = Config::for_tests("persist-throughput-bench-secret");
    config.database = if backend == "postgres" {
        Database::Postgres(url.clone())
    } else {
        Database::Sqlite(url.clone())
    };
    config.persist_batch_max = env_or("PERSIST_BATCH_MAX", config.persist_batch_max);
    config.persist_flush_interval = Duration::from_millis(env_or(
        "PERSIST_FLUSH_INTERVAL_MS",
        config.persist_flush_interval.as_millis() as u64,
    ));
    config.persist_queue_limit = env_or("PERSIST_QUEUE_LIMIT", config.persist_queue_limit);
    config.snapshot_interval = Duration::from_millis(env_or(
        "SNAPSHOT_INTERVAL_MS",
        config.snapshot_interval.as_millis() as u64,
    ));
    config.shutdown_grace = Duration::from_secs(60);
    let (batch_max, queue_limit) = (config.persist_batch_max, config.persist_queue_limit);
    let flush_ms = config.persist_flush_interval.as_millis() as u64;

    let handle = server::start(config).await.expect("server starts");
    let handles: Vec<_> = (0..rooms)
        .map(|i| {
            let room = Room::new(
                &format!("BENCH{i:05}"),
                vec![host("h")],
                Settings::default(),
            )
            .expect("valid room");
            handle.registry().create_here(room).expect("room created")
        })
        .collect();
    let metrics = handle.app.metrics.clone();
    let counters = &metrics.counters;
    let depth = || metrics.persist_queue_depth.load(Ordering::Acquire);
    // The rooms' first snapshots go out before the clock starts.
    while depth() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let events_before = counters.event_persist_success_total.load(Ordering::Relaxed);
    let snapshots_before = counters.snapshots_persisted_total.load(Ordering::Relaxed);
    let batches_before = counters.persist_batches_total.load(Ordering::Relaxed);
    let micros_before = counters.persist_batch_micros_total.load(Ordering::Relaxed);

    let stop = Arc::new(AtomicBool::new(false));
    let applied = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let drivers: Vec<_> = (0..tasks)
        .map(|t| {
            let room = handles[t % rooms].clone();
            let (stop, applied, refused) = (stop.clone(), applied.clone(), refused.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let patch = SettingsPatch {
                        product_category: Some(format!("category {t}-{n}")),
                        phase_duration_seconds: Some((n % 600 + 1) as u32),
                        ..SettingsPatch::default()
                    };
                    match room
                        .apply(Origin::Server, Action::UpdateSettings { patch })
                        .await
                    {
                        Ok(_) => {
                            applied.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(why) if why.code == ErrorCode::Unavailable => {
                            // The writer's queue is at its bound (the server's
                            // backpressure). Back off for a millisecond, as a
                            // client told `unavailable` would, rather than spin
                            // and take the CPU the writer needs.
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(why) => panic!("change refused: {why:?}"),
                    }
                }
            })
        })
        .collect();

    // Sample the queue while the drivers run.
    let mut max_depth = 0usize;
    let run_for = Duration::from_secs_f64(seconds);
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(50)).await;
        max_depth = max_depth.max(depth());
    }
    stop.store(true, Ordering::Relaxed);
    for d in drivers {
        d.await.expect("driver task");
    }
    let run_secs = started.elapsed().as_secs_f64();
    let applied = applied.load(Ordering::Relaxed);
    let refused = refused.load(Ordering::Relaxed);
    let depth_at_stop = depth();
    let written_during_run =
        counters.event_persist_success_total.load(Ordering::Relaxed) - events_before;

    // Drain: how long until everything queued is in the database.
    let drain_started = Instant::now();
    while depth() > 0 {
        assert!(
            drain_started.elapsed() < Duration::from_secs(300),
            "the writer drains within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let drain_ms = drain_started.elapsed().as_secs_f64() * 1000.0;
    let total_secs = started.elapsed().as_secs_f64();

    let events_written =
        counters.event_persist_success_total.load(Ordering::Relaxed) - events_before;
    let snapshots_written =
        counters.snapshots_persisted_total.load(Ordering::Relaxed) - snapshots_before;
    let batches = counters.persist_batches_total.load(Ordering::Relaxed) - batches_before;
    let micros = counters.persist_batch_micros_total.load(Ordering::Relaxed) - micros_before;
    let failures = counters
        .event_persist_failures_total
        .load(Ordering::Relaxed);
    handle.shutdown().await;
    let rows = db.event_rows(&url).await;
    assert_eq!(
        events_written, applied,
        "every applied change was written once"
    );
    assert_eq!(rows as u64, applied, "room_events holds one row per change");

    let line = json!({
        "bench": "persist_throughput",
        "backend": backend,
        "rooms": rooms,
        "tasks": tasks,
        "persist_batch_max": batch_max,
        "persist_flush_interval_ms": flush_ms,
        "persist_queue_limit": queue_limit,
        "run_secs": round(run_secs, 2),
        "changes_applied": applied,
        "changes_applied_per_sec": round(applied as f64 / run_secs, 0),
        "changes_refused_unavailable": refused,
        "events_written_during_run": written_during_run,
        "events_written_per_sec_during_run": round(written_during_run as f64 / run_secs, 0),
        "events_written_per_sec_overall": round(events_written as f64 / total_secs, 0),
        "queue_depth_at_stop": depth_at_stop,
        "queue_depth_max_sampled": max_depth,
        "drain_ms": round(drain_ms, 1),
        // Kept up: nothing refused, and no more than one batch waiting at the end.
        "writer_kept_up": refused == 0 && depth_at_stop <= batch_max,
        "batches": batches,
        "mean_batch_ms": round(micros as f64 / batches.max(1) as f64 / 1000.0, 3),
        "mean_rows_per_batch": round((events_written + snapshots_written) as f64 / batches.max(1) as f64, 1),
        "snapshots_written": snapshots_written,
        "event_persist_failures": failures,
        "event_rows_in_database": rows,
    });
    println!("{line}");
    db.remove().await;
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}
