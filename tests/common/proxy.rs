//! A TCP proxy that a test can cut and restore, to make a real network outage
//! between the server and its database.
//!
//! `cut()` kills every piped connection and makes the proxy drop new connections as
//! soon as it accepts them; when it returns, every killed socket is closed. `restore()`
//! makes new connections be forwarded again. Nothing here sleeps: both take effect
//! under one lock that the accept loop also takes for each connection.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::{TcpListener, TcpStream};
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
        let mut state = lock(&state);
        // Reap finished pipes so the set does not grow with every connection.
        while state.pipes.try_join_next().is_some() {}
        if state.cut {
            drop(inbound);
            continue;
        }
        state.pipes.spawn(pipe(inbound, target));
    }
}

async fn pipe(mut inbound: TcpStream, target: SocketAddr) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
