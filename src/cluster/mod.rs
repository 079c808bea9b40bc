//! Cluster mode: several nodes over one Redis and one Postgres (docs/cluster.md).
//!
//! Redis carries membership (a TTL'd key per node), room leases (who owns a room,
//! for routing) and the messages between nodes (pub/sub, one inbox channel per node).
//! Postgres carries the truth: the rooms, and each room's owner epoch, which fences
//! every write (see `Store::raise_epoch`). A lease only says where to go; a node that
//! lost a room without noticing finds out when its next write is refused.

pub mod link;
pub mod proxy;
pub mod wire;

use crate::config;
use crate::protocol::{ErrorCode, Rejection};
use crate::telemetry::Metrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use wire::{Answer, Message};

/// The longest a call to another node waits for its answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of messages waiting to be published at most; past it a message is dropped
/// (a relay then sees a gap in its link and resyncs).
const OUTGOING_BYTES: usize = 64 << 20;
/// Messages published in one pipeline at most.
const PUBLISH_BATCH: usize = 256;
/// Messages from Redis waiting for the dispatcher at most; past it one is dropped
/// and counted (a relay then sees a gap and resyncs, a call times out).
const INBOX: usize = 65_536;
/// Every Redis command's bound.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// A node is not ready when its own probe has not come back for this long.
const PROBE_STALE: Duration = Duration::from_secs(3);

/// Takes a room's lease if it is free, held by this node, or held by a node whose
/// membership key is gone. Returns the holder after the call.
const ACQUIRE: &str = r"
local h = redis.call('GET', KEYS[1])
if (not h) or h == ARGV[1] or redis.call('EXISTS', ARGV[3] .. h) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return h
";

/// Renews each lease this node holds; one that has vanished (Redis restarted) is
/// taken again if nobody else has it. 1 per key still held, 0 per key lost.
const RENEW: &str = r"
local held = {}
for i, key in ipairs(KEYS) do
  local h = redis.call('GET', key)
  if h == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    held[i] = 1
  elseif not h then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    held[i] = 1
  else
    held[i] = 0
  end
end
return held
";

/// Renews a node's membership by Redis's own clock (nodes' clocks may disagree): its
/// TTL'd key, and its entry in the members' set scored by when that expires.
const ANNOUNCE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
return now
";

/// The members not yet expired, by Redis's clock; long-expired entries are pruned.
const MEMBERS: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]) * 10)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
";

/// Deletes a lease only if this node holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot reach Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {} ms", REDIS_TIMEOUT.as_millis())]
    Timeout,
}

/// This node's place in the cluster.
pub struct Cluster {
    pub node: Arc<str>,
    prefix: String,
    pub lease_ttl: Duration,
    /// How far a takeover moves a room's version past the store's (see
    /// `version_jump`).
    pub version_jump: u64,
    redis: ConnectionManager,
    /// The subscriber's connection, pinged on every membership tick: a dropped
    /// connection reconnects (and resubscribes) only when a command finds it down.
    subscriber: ConnectionManager,
    out: mpsc::UnboundedSender<(String, String)>,
    out_bytes: Arc<AtomicUsize>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_call: AtomicU64,
    live: watch::Sender<Arc<BTreeSet<String>>>,
    /// When each node's membership key was last seen: a node is live until its key
    /// has been missing for a whole lease TTL, so a Redis that restarted empty (every
    /// key gone until each node announces itself again) moves no room.
    last_seen: Mutex<HashMap<String, Instant>>,
    started: Instant,
    /// Milliseconds since `started` at which this node's own probe last came back.
    probe_seen: AtomicU64,
    redis_ok: AtomicBool,
    /// Set by `leave`: the membership key is not announced again.
    left: AtomicBool,
    pub metrics: Arc<Metrics>,
    key_script: (redis::Script, redis::Script, redis::Script),
    /// ANNOUNCE and MEMBERS.
    member_script: (redis::Script, redis::Script),
}

/// How far past the stored version a new owner starts: more than the previous
/// owner can have published without saving. Every change is queued for the store
/// as it is broadcast, and the queue refuses changes at `PERSIST_QUEUE_LIMIT` rows;
/// changes that are never refused (a socket leaving, a step's ready reset) add at
/// most one per socket of the room and one per admitted change, and rooms admitted
/// side by side on other threads a few more.
pub fn version_jump(config: &config::Config) -> u64 {
    let queue = config.persist_queue_limit as u64;
    let sockets = config.max_sockets_per_room as u64;
    queue
        .saturating_mul(2)
        .saturating_add(sockets)
        .saturating_add(1024)
}

async fn bounded<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(REDIS_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClusterError::Timeout),
    }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT))
        .set_max_delay(Duration::from_secs(1))
        .set_number_of_retries(2)
}

impl Cluster {
    /// Connects to Redis, subscribes to this node's inbox and announces the node.
    /// Returns the cluster and the messages arriving in the inbox.
    pub async fn start(
        config: &config::Config,
        settings: &config::Cluster,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Result<(Arc<Cluster>, mpsc::Receiver<Message>), ClusterError> {
        let url = String::from_utf8_lossy(&settings.redis_url.0).to_string();
        let client = redis::Client::open(url.as_str())?;
        let redis = bounded(ConnectionManager::new_with_config(
            client.clone(),
            manager_config(),
        ))
        .await?;
        // The subscriber speaks RESP3 (pushes) and resubscribes by itself after a
        // reconnect; the probe below tells whether it really is subscribed.
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())?;
        let resp3 = info.clone().set_redis_settings(
            info.redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3),
        );
        let (push_tx, mut push_rx) = mpsc::channel(INBOX);
        let dropped = metrics.clone();
        let push_sender = move |push: redis::PushInfo| {
            if push_tx.try_send(push).is_err() {
                Metrics::inc(&dropped.counters.cluster_messages_dropped_total);
            }
            Ok::<(), std::convert::Infallible>(())
        };
        let mut subscriber = bounded(ConnectionManager::new_with_config(
            redis::Client::open(resp3)?,
            manager_config()
                .set_push_sender(push_sender)
                .set_automatic_resubscription(),
        ))
        .await?;
        let node: Arc<str> = settings.node_id.as_str().into();
        crate::telemetry::log::set_node_id(&node);
        let prefix = settings.key_prefix.clone();
        bounded(subscriber.subscribe(inbox(&prefix, &node))).await?;
        let (out, out_rx) = mpsc::unbounded_channel();
        let (live, _) = watch::channel(Arc::new(BTreeSet::from([node.to_string()])));
        let cluster = Arc::new(Cluster {
            node: node.clone(),
            prefix,
            lease_ttl: settings.lease_ttl,
            version_jump: version_jump(config),
            redis,
            subscriber: subscriber.clone(),
            out,
            out_bytes: Arc::new(AtomicUsize::new(0)),
            pending: Mutex::new(HashMap::new()),
            // Random: a process restarted under the same NODE_ID must not take a late
            // answer to its predecessor's call for one of its own.
            next_call: AtomicU64::new(rand::random::<u64>() >> 1),
            live,
            last_seen: Mutex::new(HashMap::new()),
            started: Instant::now(),
            probe_seen: AtomicU64::new(0),
            redis_ok: AtomicBool::new(true),
            left: AtomicBool::new(false),
            metrics,
            key_script: (
                redis::Script::new(ACQUIRE),
                redis::Script::new(RENEW),
                redis::Script::new(RELEASE),
            ),
            member_script: (redis::Script::new(ANNOUNCE), redis::Script::new(MEMBERS)),
        });
        cluster.announce().await?;
        cluster.refresh_members().await?;
        tokio::spawn(publisher(
            cluster.redis.clone(),
            out_rx,
            cluster.out_bytes.clone(),
            cluster.metrics.clone(),
        ));
        // The inbox: pushes become messages; the probe's own pings are consumed here.
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX);
        let dropped = cluster.metrics.clone();
        let weak = Arc::downgrade(&cluster);
        tokio::spawn(async move {
            // Held so the subscription lives as long as the inbox is read.
            let _subscriber = subscriber;
            while let Some(push) = push_rx.recv().await {
                let Some(cluster) = weak.upgrade() else { break };
                let Some(message) = decode_push(&push) else {
                    continue;
                };
                match message {
                    Message::Ping => cluster.probe_seen.store(
                        cluster.started.elapsed().as_millis() as u64,
                        Ordering::Release,
                    ),
                    Message::Answer { call, answer } => cluster.complete(call, answer),
                    other => match inbox_tx.try_send(other) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            Metrics::inc(&dropped.counters.cluster_messages_dropped_total);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    },
                }
            }
        });
        tokio::spawn(membership_loop(Arc::downgrade(&cluster), stop));
        tracing::info!("cluster_joined");
        Ok((cluster, inbox_rx))
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }

    /// Whether this node can serve: Redis answers and its own probe came back lately.
    pub fn is_ready(&self) -> bool {
        let seen = Duration::from_millis(self.probe_seen.load(Ordering::Acquire));
        self.redis_ok.load(Ordering::Acquire)
            && self.started.elapsed().saturating_sub(seen) < PROBE_STALE
    }

    /// The nodes whose membership key was live at the last look (this one included).
    pub fn live(&self) -> Arc<BTreeSet<String>> {
        self.live.borrow().clone()
    }

    pub fn watch_live(&self) -> watch::Receiver<Arc<BTreeSet<String>>> {
        self.live.subscribe()
    }

    /// The node a room prefers among the live ones: rendezvous hashing, so a node
    /// joining or leaving moves only the rooms that hash to it.
    pub fn preferred(&self, code: &str) -> String {
        preferred(code, &self.live()).unwrap_or_else(|| self.node.to_string())
    }

    /// One Redis call: bounded in time, and its outcome noted for readiness.
    async fn run<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ClusterError> {
        let result = bounded(call).await;
        self.note(&result);
        result
    }

    fn note(&self, result: &Result<impl Sized, ClusterError>) {
        let ok = result.is_ok();
        let was = self.redis_ok.swap(ok, Ordering::AcqRel);
        if !ok {
            Metrics::inc(&self.metrics.counters.cluster_redis_errors_total);
        }
        match (was, ok) {
            (true, false) => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "cluster_redis_unreachable");
                }
            }
            (false, true) => tracing::info!("cluster_redis_recovered"),
            _ => {}
        }
    }

    /// Renews this node's membership: its TTL'd key (which the lease script checks)
    /// and its entry in the members' sorted set, scored by when it expires.
    async fn announce(&self) -> Result<(), ClusterError> {
        if self.left.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut redis = self.redis.clone();
        let ttl = self.lease_ttl.as_millis() as u64;
        let result: Result<i64, ClusterError> = self
            .run(
                self.member_script
                    .0
                    .key(self.key("node", &self.node))
                    .key(self.members_key())
                    .arg(&*self.node)
                    .arg(ttl)
                    .invoke_async(&mut redis),
            )
            .await;
        result.map(|_| ())
    }

    /// The sorted set of members: one read per tick, however many keys Redis holds.
    fn members_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    async fn refresh_members(&self) -> Result<(), ClusterError> {
        let mut redis = self.redis.clone();
        let result: Result<Vec<String>, ClusterError> = self
            .run(
                self.member_script
                    .1
                    .key(self.members_key())
                    .arg(self.lease_ttl.as_millis() as u64)
                    .invoke_async(&mut redis),
            )
            .await;
        let found = result?;
        let live: BTreeSet<String> = {
            let mut seen = lock(&self.last_seen);
            let now = Instant::now();
            for node in found {
                seen.insert(node, now);
            }
            seen.insert(self.node.to_string(), now);
            seen.retain(|_, at| now.duration_since(*at) < self.lease_ttl);
            seen.keys().cloned().collect()
        };
        self.live.send_if_modified(|current| {
            if **current == live {
                return false;
            }
            let gone: Vec<&String> = current.difference(&live).collect();
            let joined: Vec<&String> = live.difference(current).collect();
            tracing::info!(
                ?gone,
                ?joined,
                live = live.len(),
                "cluster_membership_changed"
            );
            *current = Arc::new(live.clone());
            true
        });
        Ok(())
    }

    /// Queues a message for `node`'s inbox, in order after everything queued before.
    pub fn send(&self, node: &str, message: &Message) {
        let Ok(json) = serde_json::to_string(message) else {
            return;
        };
        let size = json.len();
        if self.out_bytes.fetch_add(size, Ordering::AcqRel) + size > OUTGOING_BYTES {
            self.out_bytes.fetch_sub(size, Ordering::AcqRel);
            Metrics::inc(&self.metrics.counters.cluster_messages_dropped_total);
            return;
        }
        if self.out.send((inbox(&self.prefix, node), json)).is_err() {
            self.out_bytes.fetch_sub(size, Ordering::AcqRel);
        }
    }

    /// Sends a call to `node` and waits for its answer (at most `CALL_TIMEOUT`).
    pub async fn call(
        &self,
        node: &str,
        message: impl FnOnce(u64) -> Message,
    ) -> Result<Answer, Rejection> {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(call, tx);
        Metrics::inc(&self.metrics.counters.cluster_forwarded_total);
        self.send(node, &message(call));
        let answer = tokio::time::timeout(CALL_TIMEOUT, rx).await;
        lock(&self.pending).remove(&call);
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            _ => Err(Rejection::new(
                ErrorCode::Unavailable,
                format!("node {node}, which owns the room, did not answer; try again"),
            )),
        }
    }

    pub fn answer(&self, node: &str, call: u64, answer: Answer) {
        if node == &*self.node {
            self.complete(call, answer);
        } else {
            self.send(node, &Message::Answer { call, answer });
        }
    }

    fn complete(&self, call: u64, answer: Answer) {
        if let Some(tx) = lock(&self.pending).remove(&call) {
            let _ = tx.send(answer);
        }
    }

    /// Takes a room's lease for this node if it is free (or its holder is gone);
    /// returns the holder afterwards.
    pub async fn acquire(&self, code: &str) -> Result<String, ClusterError> {
        let mut redis = self.redis.clone();
        self.run(
            self.key_script
                .0
                .key(self.key("lease", code))
                .arg(&*self.node)
                .arg(self.lease_ttl.as_millis() as u64)
                .arg(format!("{}:node:", self.prefix))
                .invoke_async(&mut redis),
        )
        .await
    }

    /// The node holding a room's lease, if any.
    pub async fn holder(&self, code: &str) -> Result<Option<String>, ClusterError> {
        let mut redis = self.redis.clone();
        self.run(
            redis::cmd("GET")
                .arg(self.key("lease", code))
                .query_async(&mut redis),
        )
        .await
    }

    /// Renews the leases of `codes`; returns the codes whose lease another node has.
    pub async fn renew(&self, codes: &[String]) -> Result<Vec<String>, ClusterError> {
        let mut lost = Vec::new();
        for chunk in codes.chunks(500) {
            let mut redis = self.redis.clone();
            let mut invocation = self.key_script.1.prepare_invoke();
            for code in chunk {
                invocation.key(self.key("lease", code));
            }
            invocation
                .arg(&*self.node)
                .arg(self.lease_ttl.as_millis() as u64);
            let held: Vec<i64> = self.run(invocation.invoke_async(&mut redis)).await?;
            for (code, held) in chunk.iter().zip(held) {
                if held == 0 {
                    lost.push(code.clone());
                }
            }
        }
        Ok(lost)
    }

    /// Gives a room's lease up, if this node still holds it.
    pub async fn release(&self, code: &str) {
        let mut redis = self.redis.clone();
        let _: Result<i64, ClusterError> = self
            .run(
                self.key_script
                    .2
                    .key(self.key("lease", code))
                    .arg(&*self.node)
                    .invoke_async(&mut redis),
            )
            .await;
    }

    /// Leaves the cluster: the membership key goes at once, not after its TTL.
    pub async fn leave(&self) {
        self.left.store(true, Ordering::Release);
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.key("node", &self.node))
            .ignore()
            .cmd("ZREM")
            .arg(self.members_key())
            .arg(&*self.node)
            .ignore();
        let _: Result<(), ClusterError> = self.run(pipe.query_async(&mut redis)).await;
        tracing::info!("cluster_left");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn inbox(prefix: &str, node: &str) -> String {
    format!("{prefix}:inbox:{node}")
}

/// Rendezvous hashing: the node with the highest hash of (node, code).
pub fn preferred(code: &str, nodes: &BTreeSet<String>) -> Option<String> {
    use sha2::{Digest, Sha256};
    nodes
        .iter()
        .max_by_key(|node| {
            let digest = Sha256::new()
                .chain_update(node.as_bytes())
                .chain_update([0])
                .chain_update(code.as_bytes())
                .finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            u64::from_be_bytes(first)
        })
        .cloned()
}

fn decode_push(push: &redis::PushInfo) -> Option<Message> {
    if push.kind != redis::PushKind::Message {
        return None;
    }
    let payload = push.data.get(1)?;
    let bytes: Vec<u8> = redis::from_redis_value_ref(payload).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(message) => Some(message),
        Err(e) => {
            tracing::warn!(error = %e, "cluster_message_undecodable");
            None
        }
    }
}

/// Publishes queued messages in order, many per round trip.
async fn publisher(
    mut redis: ConnectionManager,
    mut rx: mpsc::UnboundedReceiver<(String, String)>,
    bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let mut size = 0;
        for (channel, json) in &batch {
            size += json.len();
            pipe.cmd("PUBLISH").arg(channel).arg(json).ignore();
        }
        let result: Result<(), ClusterError> = bounded(pipe.query_async(&mut redis)).await;
        bytes.fetch_sub(size, Ordering::AcqRel);
        if result.is_err() {
            // Lost: the links that carried them see a gap and resync.
            metrics
                .counters
                .cluster_messages_dropped_total
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        batch.clear();
    }
}

/// Every third of the lease TTL: renew the membership key, look at who is live, and
/// probe this node's own subscription.
async fn membership_loop(cluster: std::sync::Weak<Cluster>, stop: CancellationToken) {
    let period = match cluster.upgrade() {
        Some(c) => c.lease_ttl / 3,
        None => return,
    };
    let mut tick = tokio::time::interval(period.min(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let _ = cluster.announce().await;
        let _ = cluster.refresh_members().await;
        let mut subscriber = cluster.subscriber.clone();
        let _: Result<String, ClusterError> =
            bounded(redis::cmd("PING").query_async(&mut subscriber)).await;
        let node = cluster.node.clone();
        cluster.send(&node, &Message::Ping);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_node_moves_only_the_rooms_that_hash_to_it() {
        let three: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut four = three.clone();
        four.insert("d".into());
        let codes: Vec<String> = (0..4000).map(|i| format!("R{i:05}")).collect();
        let mut moved = 0;
        for code in &codes {
            let before = preferred(code, &three).expect("a node");
            let after = preferred(code, &four).expect("a node");
            if before != after {
                assert_eq!(after, "d", "a room moved between old nodes");
                moved += 1;
            }
        }
        // About a quarter move (each node's share is 1/4 ± noise).
        assert!((800..1200).contains(&moved), "{moved} of 4000 moved");
    }
}
