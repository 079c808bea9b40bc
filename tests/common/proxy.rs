//! A TCP proxy that a test can cut and restore, or freeze, to make a real network
//! failure between the server and its database.
//!
//! `cut()` kills every piped connection and makes the proxy drop new connections as
//! soon as it accepts them; when it returns, every killed socket is closed. `restore()`
//! makes new connections be forwarded again. Nothing here sleeps: both take effect
//! under one lock that the accept loop also takes for each connection.
//!
//! `freeze_next(pattern)` models a connection that stops answering mid-query (a proxy
//! that froze after forwarding an INSERT): the next chunk a client sends that contains
//! `pattern` is forwarded, and from then on that connection forwards nothing in either
//! direction, while staying open. Other connections, and new ones, work as before.
//! `thaw()` makes frozen connections forward again. (A pattern split across two reads
//! is not seen; the tests' patterns are short room codes inside one message.)
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub struct Proxy {
    /// Where clients connect (127.0.0.1, a free port).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    /// While true, accepted connections are closed at once.
    cut: bool,
    /// One task per piped connection; aborting a task closes both of its sockets.
    pipes: JoinSet<()>,
    /// Freeze the next connection whose client sends these bytes.
    freeze_on: Option<Vec<u8>>,
    /// The frozen connections' switches (true: frozen), and when the first froze.
    frozen: Vec<watch::Sender<bool>>,
    frozen_at: Option<(Instant, time::OffsetDateTime)>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy binds");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(Mutex::new(State::default()));
        let accept = tokio::spawn(accept_loop(listener, target, state.clone()));
        Proxy {
            addr,
            state,
            accept,
        }
    }

    /// Kills every open connection and refuses new ones until `restore`. Returns the
    /// number of connections it killed; they are all closed when it returns.
    pub async fn cut(&self) -> usize {
        let mut pipes = {
            let mut state = lock(&self.state);
            state.cut = true;
            std::mem::take(&mut state.pipes)
        };
        let mut killed = 0;
        pipes.abort_all();
        // A task's sockets are dropped by the time its join result is available.
        while let Some(result) = pipes.join_next().await {
            if result.is_err_and(|e| e.is_cancelled()) {
                killed += 1;
            }
        }
        killed
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        lock(&self.state).cut = false;
    }

    /// Connections currently piped.
    pub fn open_connections(&self) -> usize {
        let mut state = lock(&self.state);
        while state.pipes.try_join_next().is_some() {}
        state.pipes.len()
    }

    /// Freezes the next connection that forwards a client chunk containing `pattern`
    /// (once: later matches are forwarded as usual).
    pub fn freeze_next(&self, pattern: &[u8]) {
        lock(&self.state).freeze_on = Some(pattern.to_vec());
    }

    /// Connections frozen now.
    pub fn frozen_connections(&self) -> usize {
        lock(&self.state).frozen.len()
    }

    /// When the first connection froze since the last `thaw`.
    pub fn frozen_at(&self) -> Option<Instant> {
        lock(&self.state).frozen_at.map(|(at, _)| at)
    }

    /// The same, as wall-clock time (to compare with a log line's `time`).
    pub fn frozen_wall_time(&self) -> Option<time::OffsetDateTime> {
        lock(&self.state).frozen_at.map(|(_, at)| at)
    }

    /// Frozen connections forward again (whatever they held goes on its way).
    pub fn thaw(&self) {
        let mut state = lock(&self.state);
        for switch in state.frozen.drain(..) {
            let _ = switch.send(false);
        }
        state.frozen_at = None;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        lock(&self.state).pipes.abort_all();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, state: Arc<Mutex<State>>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        let shared = state.clone();
        let mut state = lock(&state);
        // Reap finished pipes so the set does not grow with every connection.
        while state.pipes.try_join_next().is_some() {}
        if state.cut {
            drop(inbound);
            continue;
        }
        state.pipes.spawn(pipe(inbound, target, shared));
    }
}

async fn pipe(inbound: TcpStream, target: SocketAddr, state: Arc<Mutex<State>>) {
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (frozen, watch_frozen) = watch::channel(false);
    let (client_read, client_write) = inbound.into_split();
    let (server_read, server_write) = outbound.into_split();
    let up = pump(
        client_read,
        server_write,
        watch_frozen.clone(),
        Some((state, frozen)),
    );
    let down = pump(server_read, client_write, watch_frozen, None);
    // Either direction ending (a close, an error) ends the connection.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// Copies `from` to `to`, holding each chunk while the connection is frozen. The
/// client-to-server direction (`freezer` set) freezes the connection right after
/// forwarding the chunk the armed pattern is in.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut watch_frozen: watch::Receiver<bool>,
    freezer: Option<(Arc<Mutex<State>>, watch::Sender<bool>)>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Frozen: what was read stays here until thawed.
        if watch_frozen.wait_for(|frozen| !frozen).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if let Some((state, switch)) = &freezer {
            let mut state = lock(state);
            let matches = state
                .freeze_on
                .as_ref()
                .is_some_and(|p| !p.is_empty() && buf[..n].windows(p.len()).any(|w| w == p));
            if matches {
                state.freeze_on = None;
                let _ = switch.send(true);
                state.frozen.push(switch.clone());
                state
                    .frozen_at
                    .get_or_insert_with(|| (Instant::now(), time::OffsetDateTime::now_utc()));
            }
        }
    }
}
