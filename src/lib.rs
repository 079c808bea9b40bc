//! Concept Karaoke realtime server.
//!
//! The data path of one player message: `edge` (socket, decode) → `owner` (the
//! room's single task applies it with `room`'s rules) → `outbox` (one serialized
//! frame shared by every recipient) → sockets. `observe` watches that path for
//! telemetry (and later persistence and cluster fan-out). docs/architecture.md has
//! the full picture.

pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod fanout;
pub mod observe;
pub mod outbox;
pub mod owner;
pub mod protocol;
pub mod registry;
pub mod room;
pub mod server;
pub mod store;
pub mod telemetry;

/// The admin plane lives in the top-level `admin/` folder (its own plane, its own
/// port); it is compiled into this library so it calls the same room owners.
#[path = "../admin/mod.rs"]
pub mod admin;
