//! Harness for tests that run the real `karaoke-realtime` binary as a separate process.
//!
//! The child's stdout is read line by line on a task that forwards every line into a
//! channel; tests wait for lines by predicate (with a timeout), never by sleeping.
//! Every line, stdout and stderr, is also kept so a test can check the whole output
//! (for example that no secret was ever printed).
#![allow(dead_code)]

pub mod tools;

use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Upper bound for any single expected event; generous for a loaded machine.
pub const WAIT: Duration = Duration::from_secs(20);

pub const BIN: &str = env!("CARGO_BIN_EXE_karaoke-realtime");

/// A running server process.
pub struct Proc {
    child: Child,
    pub pid: u32,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every stdout line parsed so far (by `wait_*`), in order.
    seen: Vec<Value>,
    /// Every stdout line the reader task has read, raw.
    stdout_raw: Arc<Mutex<Vec<String>>>,
    stderr: Option<JoinHandle<String>>,
    /// Working directory of the child (removed on drop).
    dir: PathBuf,
}

/// A fresh empty directory for one child, so any default on-disk state (such as a
/// database under `./data`) stays out of the source tree.
fn scratch_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "karaoke-realtime-binary-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir for the child");
    dir
}

impl Proc {
    /// Starts the binary with exactly `vars` as its environment.
    pub fn spawn(vars: &[(&str, &str)]) -> Proc {
        Proc::spawn_command(Command::new(BIN), vars)
    }

    /// Starts the binary with its open-file limit (soft and hard) set to `nofile`,
    /// through `prlimit`, which executes it in place (same pid).
    pub fn spawn_with_nofile(vars: &[(&str, &str)], nofile: u64) -> Proc {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(BIN);
        Proc::spawn_command(cmd, vars)
    }

    /// Starts the binary allowed on CPU 0 only, through `taskset`, which executes it
    /// in place (same pid).
    pub fn spawn_on_one_core(vars: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"]).arg(BIN);
        Proc::spawn_command(cmd, vars)
    }

    fn spawn_command(mut cmd: Command, vars: &[(&str, &str)]) -> Proc {
        let dir = scratch_dir();
        let mut child = cmd
            .env_clear()
            .envs(vars.iter().copied())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the karaoke-realtime binary");
        let pid = child.id().expect("child has a pid");
        let stdout = child.stdout.take().expect("child stdout is piped");
        let stderr = child.stderr.take().expect("child stderr is piped");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout_raw = Arc::new(Mutex::new(Vec::new()));
        let raw = stdout_raw.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                raw.lock().expect("stdout log lock").push(line.clone());
                // The receiver may be gone (test finished); keep draining the pipe so
                // the child never blocks on a full stdout.
                let _ = tx.send(line);
            }
        });
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text).await;
            text
        });
        Proc {
            child,
            pid,
            lines,
            seen: Vec::new(),
            stdout_raw,
            stderr: Some(stderr),
            dir,
        }
    }

    fn parse(line: &str) -> Value {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        assert!(v.is_object(), "stdout line is not a JSON object: {line}");
        assert!(v["level"].is_string(), "line without level: {line}");
        assert!(v["message"].is_string(), "line without message: {line}");
        assert!(v["time"].is_string(), "line without time: {line}");
        v
    }

    /// Next stdout line (parsed), waiting up to `WAIT`; `None` at end of stdout.
    async fn next_raw(&mut self, what: &str) -> Option<Value> {
        let line = tokio::time::timeout(WAIT, self.lines.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out after {WAIT:?} waiting for {what}; lines so far:\n{}",
                    self.tail()
                )
            })?;
        let v = Self::parse(&line);
        self.seen.push(v.clone());
        Some(v)
    }

    fn tail(&self) -> String {
        let raw = self.stdout_raw.lock().expect("stdout log lock");
        let start = raw.len().saturating_sub(20);
        raw[start..].join("\n")
    }

    /// The first line, already read or still to come, for which `pred` holds.
    pub async fn find(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        self.next_matching(what, pred).await
    }

    /// The next line not yet read for which `pred` holds.
    pub async fn next_matching(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            match self.next_raw(what).await {
                Some(v) if pred(&v) => return v,
                Some(_) => continue,
                None => panic!(
                    "stdout closed before {what}; lines so far:\n{}",
                    self.tail()
                ),
            }
        }
    }

    /// A line with `message == name`, already read or still to come.
    pub async fn find_message(&mut self, name: &str) -> Value {
        self.find(name, |v| v["message"] == name).await
    }

    /// The next unread `metrics_flush` line's `metrics` object.
    pub async fn next_flush(&mut self) -> serde_json::Map<String, Value> {
        let line = self
            .next_matching("a metrics_flush line", |v| v["message"] == "metrics_flush")
            .await;
        line["metrics"]
            .as_object()
            .unwrap_or_else(|| panic!("metrics_flush carries a metrics object: {line}"))
            .clone()
    }

    /// Waits for `realtime_server_listening` and returns its `port`.
    pub async fn listening_port(&mut self) -> u16 {
        let line = self.find_message("realtime_server_listening").await;
        let port = line["port"]
            .as_u64()
            .unwrap_or_else(|| panic!("listening line carries a numeric port: {line}"));
        assert!(port > 0 && port <= u64::from(u16::MAX), "{line}");
        port as u16
    }

    /// Sends SIGTERM through the `kill` utility.
    pub async fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed: {status}", self.pid);
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("process exits within {WAIT:?}"))
            .expect("wait for the child")
    }

    /// After exit: every remaining stdout line (parsed into `seen`) and the whole stderr.
    pub async fn finish(&mut self) -> (Vec<Value>, String) {
        while self.next_raw("end of stdout").await.is_some() {}
        let stderr = match self.stderr.take() {
            Some(task) => tokio::time::timeout(WAIT, task)
                .await
                .expect("stderr closes after exit")
                .expect("stderr reader task"),
            None => String::new(),
        };
        (self.seen.clone(), stderr)
    }

    /// Every raw stdout line read so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_raw.lock().expect("stdout log lock").clone()
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }

    /// The process's resident set size in KiB (`VmRSS` in /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        status_field_kib(self.pid, "VmRSS:")
    }

    /// The process's peak resident set size in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        status_field_kib(self.pid, "VmHWM:")
    }

    /// CPU time (user + system) the process has used so far, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs_of(self.pid)
    }

    /// The players' port, found through /proc (for runs whose log level hides the
    /// `realtime_server_listening` line). Polls the kernel's socket table until the
    /// listener appears, up to `WAIT`.
    pub async fn listening_port_from_proc(&self) -> u16 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(port) = proc_listening_port(self.pid) {
                return port;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "process {} listens on a TCP port within {WAIT:?}",
                self.pid
            );
            // A poll interval, not a synchronization guess: the loop exits as soon
            // as the kernel shows the listener.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU time (user + system) process `pid` has used so far, in seconds, from
/// /proc/<pid>/stat (clock ticks of USER_HZ = 100, fixed by the Linux ABI).
pub fn cpu_secs_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime); the text after `comm)` starts at field 3.
    let ticks: u64 = [11, 12]
        .iter()
        .map(|&i| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("utime/stime in /proc/{pid}/stat: {stat}"))
        })
        .sum();
    ticks as f64 / 100.0
}

fn status_field_kib(pid: u32, field: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Finds the players' listening TCP socket of `pid`: socket inodes from
/// /proc/<pid>/fd, matched against LISTEN rows (state 0A) of /proc/<pid>/net/tcp{,6}.
/// The process also listens on the admin plane's port; the players' port is the one
/// with the lowest descriptor, as the server binds it first.
fn proc_listening_port(pid: u32) -> Option<u16> {
    let mut sockets: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let fd: u32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            let t = target.to_string_lossy().into_owned();
            let inode = t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string();
            Some((fd, inode))
        })
        .collect();
    sockets.sort();
    let mut listening: HashMap<String, u16> = HashMap::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for row in text.lines().skip(1) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" {
                let port_hex = cols[1].rsplit(':').next().unwrap_or_default();
                if let Ok(port) = u16::from_str_radix(port_hex, 16) {
                    listening.insert(cols[9].to_string(), port);
                }
            }
        }
    }
    sockets
        .iter()
        .find_map(|(_, inode)| listening.get(inode).copied())
}

/// One HTTP/1.1 GET over a raw TCP connection; returns the status code and body.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, None).await
}

/// A `POST` of a JSON `body`; returns the status code and the body.
pub async fn http_post(port: u16, path: &str, body: &str) -> (u16, String) {
    http_request(port, "POST", path, Some(body)).await
}

async fn http_request(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let exchange = async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect for HTTP");
        let request = match body {
            None => format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            ),
            Some(body) => format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        };
        tcp.write_all(request.as_bytes())
            .await
            .expect("write HTTP request");
        let mut response = Vec::new();
        tcp.read_to_end(&mut response)
            .await
            .expect("read HTTP response");
        String::from_utf8(response).expect("HTTP response is UTF-8")
    };
    let response = tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} answered within {WAIT:?}"));
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("HTTP status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A seed `RoomSnapshot` as the existing app sends in `join_room.initialSnapshot`;
/// the first player is host.
pub fn seed_snapshot(code: &str, players: &[&str]) -> Value {
    let players: Vec<Value> = players
        .iter()
        .enumerate()
        .map(|(i, id)| {
            serde_json::json!({
                "id": id,
                "name": format!("Player {id}"),
                "emoji": "🎤",
                "isReady": false,
                "isHost": i == 0,
                "seatIndex": i,
            })
        })
        .collect();
    serde_json::json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "code": code,
        "status": "lobby",
        "currentPhase": null,
        "phaseStartTime": null,
        "players": players,
        "version": 1,
    })
}
