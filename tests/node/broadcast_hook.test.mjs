// The existing Next.js backend's HTTP broadcast hook, exactly as the backend calls
// it: plain `fetch` POSTs of `{roomCode, event, secret}` to /api/broadcast, with the
// event bodies it sends (version 0, "managed by the WS server"), while players on
// WebSockets (legacy tokens, `initialSnapshot` on every join, as the app does)
// watch the room change. Then every error answer.
//
// Run by tests/broadcast_hook.rs against real servers. Environment:
//   HOOK_URL        http://host:port of a server with the hook and seeded rooms on
//   STRICT_URL      a server with the hook on and seeded rooms off
//   NO_HOOK_URL     a server without REALTIME_BROADCAST_SECRET
//   HOOK_SECRET     REALTIME_BROADCAST_SECRET of the first two
//   SHARED_SECRET   REALTIME_SHARED_SECRET (join tokens) of all three

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import WebSocket from 'ws';

const WAIT_MS = 20_000;

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} must be set`);
  return value;
}

const HOOK_URL = required('HOOK_URL');
const STRICT_URL = required('STRICT_URL');
const NO_HOOK_URL = required('NO_HOOK_URL');
const HOOK_SECRET = required('HOOK_SECRET');
const SHARED_SECRET = required('SHARED_SECRET');

/** The legacy token the Next.js app mints: base64url(JSON) "." base64url(HMAC). */
function legacyToken(roomCode, playerId) {
  const body = Buffer.from(
    JSON.stringify({ roomCode, playerId, exp: Math.floor(Date.now() / 1000) + 3600 }),
  ).toString('base64url');
  const mac = crypto.createHmac('sha256', SHARED_SECRET).update(body).digest('base64url');
  return `${body}.${mac}`;
}

/** What the backend does after each of its API calls. */
async function broadcast(baseUrl, roomCode, event, secret = HOOK_SECRET) {
  const response = await fetch(`${baseUrl}/api/broadcast`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ roomCode, event, secret }),
  });
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: response.status, body };
}

function playerSummary(id, seatIndex, isHost = false) {
  return { id, name: `Player ${id}`, emoji: '🎤', isReady: false, isHost, seatIndex };
}

/** Every socket opened, closed at the end even if a test failed midway. */
const sockets = [];
after(() => {
  for (const ws of sockets) ws.terminate();
});

/** A player's socket: frames queue up; `next` takes them in order, heartbeats aside. */
class Player {
  constructor(id) {
    this.id = id;
    this.queue = [];
    this.waiters = [];
  }

  send(message) {
    this.ws.send(JSON.stringify(message));
  }

  async join(baseUrl, roomCode, snapshot) {
    const url = new URL(baseUrl.replace('http', 'ws'));
    url.searchParams.set('room', roomCode);
    this.ws = new WebSocket(url);
    sockets.push(this.ws);
    this.ws.on('message', (data) => {
      const message = JSON.parse(data.toString());
      if (message.type === 'heartbeat') return;
      this.queue.push(message);
      for (const w of this.waiters.splice(0)) w();
    });
    await new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('error', reject);
    });
    this.ws.send(
      JSON.stringify({
        type: 'join_room',
        roomCode,
        playerId: this.id,
        playerToken: legacyToken(roomCode, this.id),
        initialSnapshot: snapshot,
      }),
    );
    return this.next('hello_ack');
  }

  async next(type) {
    const deadline = Date.now() + WAIT_MS;
    while (this.queue.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.id}: no ${type} within ${WAIT_MS} ms`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    const message = this.queue.shift();
    assert.equal(message.type, type, `${this.id}: expected ${type}, got ${JSON.stringify(message)}`);
    return message;
  }

  close() {
    this.ws.close();
  }
}

function seed(roomCode, players) {
  return {
    id: crypto.randomUUID(),
    code: roomCode,
    status: 'lobby',
    currentPhase: null,
    phaseStartTime: null,
    players,
    version: 0,
  };
}

test('a whole game pushed by the backend reaches every player with the room’s own versions', async () => {
  const room = 'HOOK1';
  const host = new Player('host');
  const guest = new Player('guest');
  const hello = await host.join(HOOK_URL, room, seed(room, [playerSummary('host', 0, true)]));
  let version = hello.snapshot.version;

  // A player joined (the backend added them to the game).
  let r = await broadcast(HOOK_URL, room, {
    type: 'player_joined',
    roomCode: room,
    player: playerSummary('guest', 1),
    version: 0,
  });
  assert.deepEqual(r, { status: 200, body: { success: true, clientCount: 1 } });
  let joined = await host.next('player_joined');
  assert.equal(joined.version, ++version, 'the room’s own version, not the backend’s 0');
  assert.equal(joined.player.id, 'guest');
  await host.next('room_state');

  await guest.join(HOOK_URL, room, seed(room, [playerSummary('host', 0, true)]));
  version += 1; // the guest's presence
  await host.next('room_state');
  const both = [host, guest];

  async function expectAll(type) {
    const got = [];
    for (const p of both) got.push(await p.next(type));
    for (const g of got) assert.equal(g.version, got[0].version);
    return got[0];
  }

  // The game started: status set outright, as the backend decided it.
  r = await broadcast(HOOK_URL, room, {
    type: 'status_changed',
    roomCode: room,
    status: 'briefing',
    currentPhase: null,
    phaseStartTime: '2026-12-01T10:00:00.000Z',
    version: 0,
  });
  assert.deepEqual(r, { status: 200, body: { success: true, clientCount: 2 } });
  let e = await expectAll('status_changed');
  assert.equal(e.status, 'briefing');
  assert.equal(e.phaseStartTime, '2026-12-01T10:00:00.000Z', 'echoed exactly');
  assert.equal(e.version, ++version);
  await expectAll('room_state');

  // A brief was generated.
  r = await broadcast(HOOK_URL, room, { type: 'brief_updated', roomCode: room, briefId: 'brief-7', version: 0 });
  assert.equal(r.status, 200);
  e = await expectAll('brief_updated');
  assert.equal(e.briefId, 'brief-7');
  assert.equal(e.version, ++version);

  // Settings changed.
  r = await broadcast(HOOK_URL, room, {
    type: 'settings_changed',
    roomCode: room,
    productCategory: 'snacks',
    phaseDurationSeconds: 90,
    briefStyle: 'classic',
    wackyBriefStyle: null,
    version: 0,
  });
  assert.equal(r.status, 200);
  e = await expectAll('settings_changed');
  assert.equal(e.productCategory, 'snacks');
  assert.equal(e.phaseDurationSeconds, 90);
  assert.equal(e.version, ++version);

  // Phases moved: into creating, then one phase on.
  r = await broadcast(HOOK_URL, room, {
    type: 'status_changed',
    roomCode: room,
    status: 'creating',
    currentPhase: 'big_idea',
    phaseStartTime: null,
    version: 0,
  });
  assert.equal(r.status, 200);
  e = await expectAll('status_changed');
  assert.equal(e.currentPhase, 'big_idea');
  assert.equal(e.version, ++version);
  await expectAll('room_state');
  r = await broadcast(HOOK_URL, room, {
    type: 'phase_changed',
    roomCode: room,
    currentPhase: 'visual',
    phaseStartTime: '2026-12-01T10:05:00.000Z',
    version: 0,
  });
  assert.equal(r.status, 200);
  e = await expectAll('phase_changed');
  assert.deepEqual(
    { currentPhase: e.currentPhase, phaseStartTime: e.phaseStartTime, version: e.version },
    { currentPhase: 'visual', phaseStartTime: '2026-12-01T10:05:00.000Z', version: ++version },
  );
  let state = await expectAll('room_state');
  assert.equal(state.snapshot.status, 'creating');

  // Content was submitted.
  r = await broadcast(HOOK_URL, room, {
    type: 'content_submitted',
    roomCode: room,
    adlobId: 'adlob-1',
    phase: 'visual',
    playerId: 'guest',
    version: 0,
  });
  assert.equal(r.status, 200);
  e = await expectAll('content_submitted');
  assert.deepEqual(
    { adlobId: e.adlobId, phase: e.phase, playerId: e.playerId, version: e.version },
    { adlobId: 'adlob-1', phase: 'visual', playerId: 'guest', version: ++version },
  );

  // A ready flag set by the backend.
  r = await broadcast(HOOK_URL, room, { type: 'ready_update', roomCode: room, playerId: 'guest', isReady: true, version: 0 });
  assert.equal(r.status, 200);
  e = await expectAll('ready_update');
  assert.equal(e.version, ++version);
  state = await expectAll('room_state');
  assert.equal(state.snapshot.players.find((p) => p.id === 'guest').isReady, true);

  // A presentation moves without a version.
  r = await broadcast(HOOK_URL, room, { type: 'presentation_state', roomCode: room, presentIndex: 2, showCampaign: true, version: 0 });
  assert.equal(r.status, 200);
  e = await expectAll('presentation_state');
  assert.equal(e.version, version, 'no version bump');

  // The server's own metrics, as the Node service answered them.
  const metrics = await (await fetch(`${HOOK_URL}/api/metrics`)).json();
  assert.equal(metrics.success, true);
  assert.ok(metrics.stats.http_broadcast_success_total >= 9, JSON.stringify(metrics.stats));
  assert.ok(metrics.activeRooms >= 1);
  assert.equal(typeof metrics.timestamp, 'number');
  for (const p of both) p.close();
});

test('every refusal has its answer, and nothing changes', async () => {
  const room = 'HOOK2';
  const host = new Player('host');
  const hello = await host.join(HOOK_URL, room, seed(room, [playerSummary('host', 0, true)]));
  const version = hello.snapshot.version;
  const brief = { type: 'brief_updated', roomCode: room, briefId: 'b', version: 0 };

  // No secret configured: the route does not exist.
  let r = await broadcast(NO_HOOK_URL, room, brief);
  assert.equal(r.status, 404);
  r = await broadcast(HOOK_URL, room, brief, 'not-the-secret');
  assert.deepEqual(r, { status: 403, body: { error: 'Invalid secret' } });
  r = await broadcast(HOOK_URL, room, brief, undefined);
  assert.equal(r.status, 200, 'sanity: the default secret is right');
  const afterGood = version + 1;

  // Missing fields, unknown type, bad values.
  for (const [body, error] of [
    [{ event: brief, secret: HOOK_SECRET }, 'roomCode and event are required'],
    [{ roomCode: room, secret: HOOK_SECRET }, 'roomCode and event are required'],
    [{ roomCode: room, event: { type: 'dance' }, secret: HOOK_SECRET }, 'Unsupported event type: dance'],
    [{ roomCode: room, event: { type: 'ready_update', playerId: 'host' }, secret: HOOK_SECRET }, 'Invalid ready_update event'],
    [{ roomCode: 'bad code', event: brief, secret: HOOK_SECRET }, 'roomCode may contain only'],
    [
      { roomCode: room, event: { type: 'status_changed', status: 'voting', phaseStartTime: '9999-12-31T23:59:59Z' }, secret: HOOK_SECRET },
      'between 1970 and 2199',
    ],
  ]) {
    const res = await fetch(`${HOOK_URL}/api/broadcast`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 400, JSON.stringify(body));
    const answer = await res.json();
    assert.ok(answer.error.includes(error), `${answer.error} should say ${error}`);
  }
  let res = await fetch(`${HOOK_URL}/api/broadcast`, { method: 'POST', body: 'not json' });
  assert.equal(res.status, 400);

  // A player the room does not have.
  r = await broadcast(HOOK_URL, room, { type: 'ready_update', playerId: 'nobody', isReady: true });
  assert.equal(r.status, 400);

  // An unknown room: refused without seeded rooms; created empty with them (as the
  // Node server did).
  const anyRoom = { type: 'brief_updated', briefId: 'b', version: 0 };
  r = await broadcast(STRICT_URL, 'NOPE1', anyRoom);
  assert.deepEqual(r, { status: 404, body: { error: 'room_not_found' } });
  r = await broadcast(HOOK_URL, 'FRESH1', anyRoom);
  assert.deepEqual(r, { status: 200, body: { success: true, clientCount: 0 } });

  // An oversized body.
  res = await fetch(`${HOOK_URL}/api/broadcast`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ roomCode: room, secret: HOOK_SECRET, event: { type: 'brief_updated', briefId: 'x'.repeat(100_000) } }),
  });
  assert.equal(res.status, 413);

  // The host saw exactly one change: the one good call.
  const only = await host.next('brief_updated');
  assert.equal(only.version, afterGood);
  host.send({ type: 'heartbeat', roomCode: room });
  host.send({ type: 'set_ready', roomCode: room, playerId: 'host', isReady: true });
  assert.equal((await host.next('ready_update')).version, afterGood + 1, 'nothing else changed');
  host.close();
});

test('a flood of bad secrets is counted and then refused without a comparison', async () => {
  const statuses = [];
  for (let i = 0; i < 15; i++) {
    statuses.push((await broadcast(STRICT_URL, 'FLOOD', { type: 'brief_updated', briefId: 'b' }, `guess-${i}`)).status);
  }
  assert.deepEqual(statuses.slice(0, 10), Array(10).fill(403));
  assert.deepEqual(statuses.slice(10), Array(5).fill(429));
  // Even the right secret waits out the minute from that address.
  const r = await broadcast(STRICT_URL, 'FLOOD', { type: 'brief_updated', briefId: 'b' });
  assert.equal(r.status, 429);
  const metrics = await (await fetch(`${STRICT_URL}/api/metrics`)).json();
  // This server has also answered the refusal test's unknown-room call (1 attempt,
  // 1 failure, no auth failure).
  assert.deepEqual(
    {
      auth: metrics.stats.http_broadcast_auth_failures_total,
      attempts: metrics.stats.http_broadcast_attempts_total,
      failures: metrics.stats.http_broadcast_failures_total,
    },
    { auth: 16, attempts: 17, failures: 17 },
  );
});
