// A whole Concept Karaoke game, end to end, as the real callers play it:
//
//   - this script is the Next.js backend: it creates the game, adds four players,
//     hands each browser its join token, pushes settings, the brief and every piece
//     of saved work, keeps the votes, and serves the page (like the Next.js app does)
//     from tests/e2e/page/ with node's own http module;
//   - four headless Chromium tabs (Debian's chromium, driven by playwright-core) load
//     that page, which speaks the player protocol with the browser's own WebSocket;
//     the driver plays each tab like a person (clicks, typing, a mouse drag on the
//     canvas) and each tab asserts, on its own DOM, what it shows.
//
// Backends (E2E_BACKEND):
//   grpc   the admin plane through @grpc/grpc-js: CreateRoom, UpsertPlayer,
//          MintPlayerToken, UpdateSettings, PublishEvent, GetRoom; the host moves the
//          game with advance_phase over its socket.
//   hook   the existing backend's HTTP broadcast hook (POST /api/broadcast): the room
//          is seeded, players are added with player_joined, tokens are the legacy
//          HMAC form minted here with node:crypto, phases are moved by the backend
//          (status_changed / phase_changed, then ready_update resets), settings,
//          brief and content go through the hook too.
//
// Topology: E2E_WS_URLS is a comma-separated list of players' WebSocket URLs; tab i
// connects to the (i mod n)-th, and after a close to the next one (as a load balancer
// sends a reconnecting client to a live node). E2E_ADMIN_ADDRS lists the admin planes
// likewise (the backend moves to the next one when a node does not answer).
// With E2E_KILL_OWNER=1 (the cluster variant), in the middle of the pitch phase the
// script prints `E2E_KILL_OWNER {"room":…,"version":…}` and waits for the file
// `<E2E_ARTIFACT_DIR>/owner-killed`: the test kills the room's owner node (kill -9)
// once the store holds that version, then writes the file; every tab reconnects,
// resumes and the game goes on.
//
// Environment:
//   E2E_BACKEND        grpc | hook
//   E2E_WS_URLS        ws://127.0.0.1:PORT/[,…]
//   E2E_HTTP_URL       http://127.0.0.1:PORT (the hook's server; hook backend)
//   E2E_ADMIN_ADDR     host:port of the admin plane (grpc backend), or
//   E2E_ADMIN_ADDRS    several, comma-separated (cluster nodes)
//   E2E_KILL_OWNER     1: the owner is killed mid-game (above)
//   E2E_ADMIN_TOKEN    the server's ADMIN_TOKEN (grpc backend)
//   E2E_SHARED_SECRET  REALTIME_SHARED_SECRET (hook backend: legacy tokens)
//   E2E_HOOK_SECRET    REALTIME_BROADCAST_SECRET (hook backend)
//   E2E_ARTIFACT_DIR   where the screenshots go (created)
//   E2E_HEARTBEAT_MS   the page's heartbeat period (default 15000, as the real client)
//   E2E_CHROMIUM       the browser (default /usr/bin/chromium)
//   E2E_WAIT_MS        bound of every single wait (default 20000)
//
// Output: progress lines on stderr; on success one line on stdout,
//   E2E_RESULT {"backend":…,"room":…,"version":…,"screenshots":[…],…}
// and exit 0. Any failed assertion or wait: exit 1 with what each tab showed.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const WAIT_MS = Number(process.env.E2E_WAIT_MS ?? 20_000);
const PHASES = ['big_idea', 'visual', 'headline', 'pitch'];
const STATUSES = ['lobby', 'briefing', 'creating', 'presenting', 'voting', 'results'];
const started = Date.now();

function log(...args) {
  console.error(`[e2e ${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);
}

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} must be set (see the header of tests/e2e/game.mjs)`);
  return value;
}

function check(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

/** Bounds a promise: every wait in this script ends, one way or the other. */
function within(ms, what, promise) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------
// Backends: the same interface over gRPC and over the HTTP broadcast hook.

class GrpcBackend {
  advanceVia = 'ws';

  constructor() {
    const definition = protoLoader.loadSync(path.resolve(here, '../../proto/karaoke/admin/v1/admin.proto'), {
      keepCase: true,
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    this.RoomAdmin = grpc.loadPackageDefinition(definition).karaoke.admin.v1.RoomAdmin;
    this.addrs = (process.env.E2E_ADMIN_ADDRS ?? required('E2E_ADMIN_ADDR')).split(',');
    this.at = 0;
    this.client = new this.RoomAdmin(this.addrs[0], grpc.credentials.createInsecure());
    this.adminToken = required('E2E_ADMIN_TOKEN');
    this.watched = [];
  }

  /** The next admin plane (a node that does not answer is gone or going). */
  failOver() {
    this.client.close();
    this.at = (this.at + 1) % this.addrs.length;
    this.client = new this.RoomAdmin(this.addrs[this.at], grpc.credentials.createInsecure());
  }

  async call(method, request) {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${this.adminToken}`);
    // A call that finds its node gone, or the room between owners, goes again (to the
    // next node), within the script's bound; anything else fails the game.
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      try {
        return await new Promise((resolve, reject) => {
          this.client[method](request, metadata, { deadline: Date.now() + WAIT_MS }, (err, res) =>
            err ? reject(err) : resolve(res),
          );
        });
      } catch (err) {
        const retry = err.code === grpc.status.UNAVAILABLE && Date.now() < deadline;
        if (!retry) throw new Error(`${method}: ${err.message}`);
        log(`${method}: ${err.details ?? err.message}; again on the next node`);
        if (this.addrs.length > 1) this.failOver();
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  async createGame(players) {
    const [host, ...rest] = players;
    const { room } = await this.call('CreateRoom', {
      host: toProtoPlayer(host),
      // No phase timer: the host moves the game.
      settings: { auto_advance: false },
    });
    this.watch(room.code);
    for (const p of rest) await this.call('UpsertPlayer', { room_code: room.code, player: toProtoPlayer(p) });
    return room.code;
  }

  /** Follows the room as the backend may (WatchRoom), to compare at the end. */
  watch(code) {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${this.adminToken}`);
    this.stream = this.client.WatchRoom({ room_code: code }, metadata);
    this.stream.on('data', (e) => this.watched.push({ type: e.type, version: Number(e.version) }));
    // A stream that ends before the game does (its node gone, or its relay resynced):
    // watch again, from the room's state then, as a backend would.
    const again = () => {
      if (this.closing) return;
      this.stream.removeAllListeners();
      this.stream.on('error', () => {});
      if (this.addrs.length > 1) this.failOver();
      setTimeout(() => this.watch(code), 200);
    };
    this.stream.on('error', again);
    this.stream.on('end', again);
  }

  async token(code, playerId) {
    const minted = await this.call('MintPlayerToken', { room_code: code, player_id: playerId });
    return minted.token;
  }

  async snapshot(code) {
    const { room } = await this.call('GetRoom', { room_code: code });
    return fromProtoRoom(room);
  }

  async pushSettings(code, s) {
    await this.call('UpdateSettings', {
      room_code: code,
      settings: {
        product_category: s.productCategory,
        phase_duration_seconds: s.phaseDurationSeconds,
        brief_style: s.briefStyle,
        auto_advance: false,
      },
    });
  }

  async pushBrief(code, briefId) {
    await this.call('PublishEvent', { room_code: code, brief_updated: { brief_id: briefId } });
  }

  async contentSaved(code, c) {
    await this.call('PublishEvent', {
      room_code: code,
      content_submitted: { adlob_id: c.adlobId, phase: `CREATION_PHASE_${c.phase.toUpperCase()}`, player_id: c.playerId },
    });
  }

  async advance() {
    throw new Error('with the gRPC backend the host advances over its socket');
  }

  async finalVersion(code) {
    return (await this.snapshot(code)).version;
  }

  close() {
    this.closing = true;
    this.stream?.cancel();
    this.client.close();
  }
}

function toProtoPlayer(p) {
  return { id: p.id, name: p.name, emoji: p.emoji, is_host: p.isHost, seat_index: p.seatIndex };
}

function fromProtoRoom(room) {
  const status = room.status.replace('GAME_STATUS_', '').toLowerCase();
  const phase = room.current_phase === 'CREATION_PHASE_UNSPECIFIED' ? null : room.current_phase.replace('CREATION_PHASE_', '').toLowerCase();
  return {
    id: room.id,
    code: room.code,
    status,
    currentPhase: phase,
    phaseStartTime: room.phase_start_time || null,
    players: room.players.map((p) => ({
      id: p.id,
      name: p.name,
      emoji: p.emoji,
      isReady: p.is_ready,
      isHost: p.is_host,
      seatIndex: p.seat_index,
    })),
    version: Number(room.version),
  };
}

class HookBackend {
  advanceVia = 'backend';

  constructor() {
    this.url = required('E2E_HTTP_URL');
    this.secret = required('E2E_HOOK_SECRET');
    this.sharedSecret = required('E2E_SHARED_SECRET');
    this.games = new Map(); // the backend's own record of each game
    this.lastVersion = 0;
  }

  async broadcast(code, event) {
    const res = await within(
      WAIT_MS,
      `POST /api/broadcast ${event.type}`,
      fetch(`${this.url}/api/broadcast`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ roomCode: code, event: { roomCode: code, ...event, version: 0 }, secret: this.secret }),
      }),
    );
    const body = await res.json().catch(() => null);
    if (res.status !== 200 || body?.success !== true) {
      throw new Error(`/api/broadcast ${event.type}: ${res.status} ${JSON.stringify(body)}`);
    }
    return body;
  }

  async createGame(players) {
    // The existing app's own codes; the room is created by the first push (seeded
    // rooms on, as the Node service did).
    const code = `E2E${crypto.randomBytes(3).toString('hex').toUpperCase()}`;
    const game = {
      id: crypto.randomUUID(),
      code,
      status: 'lobby',
      currentPhase: null,
      phaseStartTime: null,
      players: [],
      version: 0,
    };
    this.games.set(code, game);
    for (const p of players) {
      game.players.push({ ...p, isReady: false });
      await this.broadcast(code, { type: 'player_joined', player: { ...p, isReady: false } });
    }
    return code;
  }

  /** The legacy token the Next.js app mints: base64url(JSON) "." base64url(HMAC). */
  async token(code, playerId) {
    const body = Buffer.from(
      JSON.stringify({ roomCode: code, playerId, exp: Math.floor(Date.now() / 1000) + 3600 }),
    ).toString('base64url');
    const mac = crypto.createHmac('sha256', this.sharedSecret).update(body).digest('base64url');
    return `${body}.${mac}`;
  }

  async snapshot(code) {
    return structuredClone(this.games.get(code));
  }

  async pushSettings(code, s) {
    await this.broadcast(code, { type: 'settings_changed', ...s, wackyBriefStyle: null });
  }

  async pushBrief(code, briefId) {
    await this.broadcast(code, { type: 'brief_updated', briefId });
  }

  async contentSaved(code, c) {
    await this.broadcast(code, { type: 'content_submitted', ...c });
  }

  /** The backend applies its own rules, pushes the move, then resets ready flags. */
  async advance(code) {
    const game = this.games.get(code);
    const phaseStartTime = new Date().toISOString();
    if (game.status === 'creating' && game.currentPhase !== 'pitch') {
      game.currentPhase = PHASES[PHASES.indexOf(game.currentPhase) + 1];
      await this.broadcast(code, { type: 'phase_changed', currentPhase: game.currentPhase, phaseStartTime });
    } else {
      game.status = STATUSES[(STATUSES.indexOf(game.status) + 1) % STATUSES.length];
      game.currentPhase = game.status === 'creating' ? 'big_idea' : null;
      await this.broadcast(code, {
        type: 'status_changed',
        status: game.status,
        currentPhase: game.currentPhase,
        phaseStartTime,
      });
    }
    game.phaseStartTime = phaseStartTime;
    for (const p of game.players) {
      await this.broadcast(code, { type: 'ready_update', playerId: p.id, isReady: false });
    }
  }

  async finalVersion() {
    return null; // the hook has no read; the tabs' versions are compared instead
  }

  close() {}
}

// ---------------------------------------------------------------------------------
// The backend's web app: the page, and the API the page calls.

const STATIC = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/index.html': ['index.html', 'text/html; charset=utf-8'],
  '/client.js': ['client.js', 'text/javascript; charset=utf-8'],
  '/style.css': ['style.css', 'text/css; charset=utf-8'],
};

function webApp(backend, game) {
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const reply = (status, body) => {
      res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    try {
      const file = STATIC[url.pathname];
      if (url.pathname === '/favicon.ico') {
        res.writeHead(204);
        res.end();
        return;
      }
      if (req.method === 'GET' && file) {
        res.writeHead(200, { 'Content-Type': file[1], 'Cache-Control': 'no-store' });
        res.end(fs.readFileSync(path.join(here, 'page', file[0])));
        return;
      }
      let body = {};
      if (req.method === 'POST') {
        let text = '';
        for await (const chunk of req) text += chunk;
        body = JSON.parse(text);
      }
      const room = url.searchParams.get('room') ?? body.room;
      if (room !== game.code) return reply(404, { error: 'no such game' });
      switch (`${req.method} ${url.pathname}`) {
        case 'GET /api/session': {
          const playerId = url.searchParams.get('player');
          const seat = game.players.findIndex((p) => p.id === playerId);
          if (seat < 0) return reply(404, { error: 'no such player' });
          const n = game.wsUrls.length;
          return reply(200, {
            wsUrl: game.wsUrls[seat % n],
            // Its own node first, then the others in turn (reconnects go round them).
            wsUrls: game.wsUrls.map((_, k) => game.wsUrls[(seat + k) % n]),
            token: await backend.token(game.code, playerId),
            snapshot: await backend.snapshot(game.code),
            advanceVia: backend.advanceVia,
            heartbeatMs: game.heartbeatMs,
          });
        }
        case 'POST /api/start':
          check(body.playerId === game.players[0].id, 'only the host starts the game');
          game.briefId = `brief-${game.code.toLowerCase()}`;
          await backend.pushBrief(game.code, game.briefId);
          return reply(200, { briefId: game.briefId });
        case 'POST /api/advance':
          check(body.playerId === game.players[0].id, 'only the host advances');
          await backend.advance(game.code);
          return reply(200, { ok: true });
        case 'POST /api/content':
          game.saved.push({ adlobId: body.adlobId, phase: body.phase, playerId: body.playerId, text: body.text });
          await backend.contentSaved(game.code, { adlobId: body.adlobId, phase: body.phase, playerId: body.playerId });
          return reply(200, { ok: true });
        case 'POST /api/vote':
          check(!game.votes.has(body.playerId), `${body.playerId} votes once`);
          game.votes.set(body.playerId, body.adlobId);
          return reply(200, { ok: true });
        case 'GET /api/results': {
          const tally = {};
          for (const adlob of game.votes.values()) tally[adlob] = (tally[adlob] ?? 0) + 1;
          const winner = Object.entries(tally).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))[0]?.[0];
          return reply(200, { winner, tally });
        }
        default:
          return reply(404, { error: 'not found' });
      }
    } catch (e) {
      log(`web app: ${req.method} ${req.url}: ${e.message}`);
      reply(500, { error: e.message });
    }
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

// ---------------------------------------------------------------------------------
// Tabs

const BROWSER_ARGS = [
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-default-apps',
  '--disable-sync',
  '--metrics-recording-only',
  '--no-first-run',
  '--disable-dev-shm-usage',
];

class Tab {
  constructor(index, player, page) {
    this.index = index;
    this.player = player;
    this.page = page;
    this.console = [];
    page.on('console', (m) => this.console.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => this.console.push(`pageerror: ${e.message}`));
  }

  /** Waits until `predicate(arg)` holds in the tab's DOM; fails with what it shows. */
  async sees(what, predicate, arg) {
    try {
      await this.page.waitForFunction(predicate, arg, { timeout: WAIT_MS, polling: 'raf' });
    } catch (e) {
      const shown = await this.page
        .evaluate(() => document.body.innerText)
        .catch((err) => `(no DOM: ${err.message})`);
      throw new Error(
        `tab ${this.index} (${this.player.id}) does not show ${what} within ${WAIT_MS} ms: ${e.message.split('\n')[0]}\n` +
          `--- tab ${this.index} shows ---\n${shown}\n--- console ---\n${this.console.join('\n')}`,
      );
    }
  }

  value(id, value) {
    return this.sees(`#${id} = ${JSON.stringify(value)}`, ([id, v]) => document.getElementById(id)?.dataset.value === v, [
      id,
      value,
    ]);
  }

  count(id, n) {
    return this.sees(`#${id} count ${n}`, ([id, n]) => document.getElementById(id)?.dataset.count === String(n), [id, n]);
  }

  read(id) {
    return this.page.evaluate((id) => document.getElementById(id)?.dataset.value, id);
  }

  click(selector) {
    return this.page.click(selector, { timeout: WAIT_MS });
  }
}

/** Every tab must see it (in parallel: they are independent browsers). */
async function all(tabs, fn) {
  await Promise.all(tabs.map(fn));
}

// ---------------------------------------------------------------------------------
// The game

async function main() {
  const backendName = required('E2E_BACKEND');
  const backend = backendName === 'grpc' ? new GrpcBackend() : backendName === 'hook' ? new HookBackend() : null;
  check(backend, `E2E_BACKEND is grpc or hook, not ${backendName}`);
  const wsUrls = required('E2E_WS_URLS').split(',');
  const artifactDir = required('E2E_ARTIFACT_DIR');
  fs.mkdirSync(artifactDir, { recursive: true });

  const players = ['ada', 'bo', 'cy', 'di'].map((name, i) => ({
    id: `p-${name}`,
    name: name[0].toUpperCase() + name.slice(1),
    emoji: ['🎤', '🎸', '🥁', '🎹'][i],
    isHost: i === 0,
    seatIndex: i,
  }));
  const code = await backend.createGame(players);
  log(`${backendName}: game ${code} created with ${players.length} players`);
  const game = {
    code,
    players,
    wsUrls,
    heartbeatMs: Number(process.env.E2E_HEARTBEAT_MS ?? 15_000),
    saved: [],
    votes: new Map(),
  };
  const web = await webApp(backend, game);
  const pageBase = `http://127.0.0.1:${web.address().port}`;

  const browser = await within(
    WAIT_MS,
    'chromium starts',
    chromium.launch({ executablePath: process.env.E2E_CHROMIUM ?? '/usr/bin/chromium', args: BROWSER_ARGS }),
  );
  const tabs = [];
  const screenshots = [];
  try {
    for (const [i, p] of players.entries()) {
      // One browser context per player: separate storage, like separate machines.
      const context = await browser.newContext({ viewport: { width: 900, height: 900 } });
      const page = await context.newPage();
      tabs.push(new Tab(i, p, page));
    }
    await all(tabs, (t) => t.page.goto(`${pageBase}/?room=${code}&player=${t.player.id}`, { timeout: WAIT_MS }));
    const [host] = tabs;

    // Lobby: everyone joined and sees the whole roster connected.
    await all(tabs, async (t) => {
      await t.value('conn', 'open');
      await t.value('status', 'lobby');
      await t.sees(
        'four players, all connected',
        (ids) =>
          ids.every((id) => document.querySelector(`#players li[data-id="${id}"]`)?.dataset.connected === 'true') &&
          document.querySelectorAll('#players li').length === ids.length,
        players.map((p) => p.id),
      );
      const hostBadge = await t.page.isVisible('#host-badge');
      check(hostBadge === t.player.isHost, `tab ${t.index} shows the host badge only for the host`);
    });
    log('lobby: four tabs joined');

    // The host picks the settings (the backend saves and pushes them).
    const settings = { productCategory: 'snacks', phaseDurationSeconds: 120, briefStyle: 'classic' };
    await backend.pushSettings(code, settings);
    await all(tabs, (t) => t.value('settings', 'snacks / 120s / classic'));

    /** The cluster variant: the test kills the room's owner node (kill -9) once the
     *  store holds what every tab shows; every tab reconnects to a live node, resumes,
     *  and shows the same game as before. */
    const killOwner = async () => {
      const versions = await Promise.all(tabs.map((t) => t.read('version')));
      const version = Math.max(...versions.map(Number));
      const joinsBefore = await Promise.all(tabs.map((t) => t.page.evaluate(() => window.karaoke.state.joins)));
      const flag = path.join(artifactDir, 'owner-killed');
      console.log(`E2E_KILL_OWNER ${JSON.stringify({ room: code, version })}`);
      await within(WAIT_MS * 2, 'the test kills the owner', (async () => {
        while (!fs.existsSync(flag)) await new Promise((r) => setTimeout(r, 50));
      })());
      log(`creating/pitch: the owner of ${code} was killed at version ${version}`);
      await all(tabs, async (t) => {
        await t.count('joins', joinsBefore[t.index] + 1);
        await t.value('conn', 'open');
        await t.value('status', 'creating');
        await t.value('phase', 'pitch');
        await t.value('submitted', 'pitch');
        await t.sees(
          'four players, all connected, all ready',
          (ids) =>
            ids.every((id) => {
              const li = document.querySelector(`#players li[data-id="${id}"]`);
              return li?.dataset.connected === 'true' && li?.dataset.ready === 'true';
            }),
          players.map((p) => p.id),
        );
      });
      log('creating/pitch: every tab reconnected to a live node and resumed the game');
    };

    const readyAll = async () => {
      for (const t of tabs) await t.click('#ready');
      await all(tabs, (t) => t.value('all-ready', 'true'));
    };
    const everyoneUnready = () => all(tabs, (t) => t.sees('nobody ready', () => !document.querySelector('#players li[data-ready="true"]')));

    /** The host moves the game on, and the move is done (the hook backend pushes the
     *  move and then every ready reset before its answer). */
    let advances = 0;
    const hostAdvance = async (button = '#advance') => {
      await host.click(button);
      advances += 1;
      await host.count('advances', advances);
    };

    await readyAll();
    log('lobby: everyone ready');
    await hostAdvance('#start');
    game.briefId = `brief-${code.toLowerCase()}`;
    await all(tabs, async (t) => {
      await t.value('status', 'briefing');
      await t.value('brief', game.briefId);
    });
    await everyoneUnready();
    log('briefing: the brief is out');

    await readyAll();
    await hostAdvance();

    // The four creation phases; adlobs rotate between players each phase.
    for (const [i, phase] of PHASES.entries()) {
      await all(tabs, async (t) => {
        await t.value('status', 'creating');
        await t.value('phase', phase);
        await t.value('adlob', `${code}-ad-${(t.player.seatIndex + i) % players.length}`);
      });
      await everyoneUnready();
      if (phase === 'headline') {
        // A dropped connection mid-game: the tab reconnects by itself, resumes from
        // the version it held (lastVersion) and everyone sees it back.
        const t = tabs[2];
        await t.page.evaluate(() => window.karaoke.dropConnection());
        await t.count('joins', 2);
        await t.value('conn', 'open');
        const recovered = await t.page.evaluate(() => window.karaoke.state.recovered);
        check(recovered === true, `tab 2 resumed without losing an event (hello_ack.recovered: ${recovered})`);
        await all(tabs, (o) =>
          o.sees(`${t.player.id} back online`, (id) => document.querySelector(`#players li[data-id="${id}"]`)?.dataset.connected === 'true', t.player.id),
        );
        log(`creating/${phase}: tab 2 dropped its socket, reconnected and resumed`);
      }
      if (phase === 'big_idea') {
        for (const t of tabs) {
          await t.page.fill('#idea-text', `${t.player.name}'s big idea: karaoke for ${settings.productCategory}`);
          await t.click('#submit-idea');
        }
        await all(tabs, (t) => t.count('ideas', players.length));
      } else if (phase === 'visual') {
        for (const t of tabs) {
          // A real drag on the canvas: pointer events, not a synthetic message.
          const box = await t.page.locator('#canvas').boundingBox();
          await t.page.mouse.move(box.x + 20, box.y + 20 + t.index * 30);
          await t.page.mouse.down();
          for (let s = 1; s <= 8; s++) await t.page.mouse.move(box.x + 20 + s * 30, box.y + 20 + t.index * 30 + (s % 2) * 15);
          await t.page.mouse.up();
        }
        await all(tabs, (t) => t.count('strokes', players.length));
        for (const t of tabs) await t.click('#submit-visual');
      } else {
        const input = phase === 'headline' ? '#headline-text' : '#pitch-text';
        for (const t of tabs) {
          await t.page.fill(input, `${t.player.name}'s ${phase}`);
          await t.click(`#submit-${phase}`);
        }
      }
      await all(tabs, async (t) => {
        await t.value('submitted', phase);
        await t.count('contents', players.length * (i + 1));
        await t.value('all-ready', 'true');
      });
      log(`creating/${phase}: every tab submitted and sees all the work`);
      if (phase === 'pitch' && process.env.E2E_KILL_OWNER === '1') await killOwner();
      await hostAdvance();
    }

    // Presenting: the host walks through the campaigns.
    await all(tabs, (t) => t.value('status', 'presenting'));
    for (let k = 0; k < players.length; k++) {
      await host.click('#next-present');
      await all(tabs, (t) =>
        t.sees(`campaign #${k}`, (k) => document.getElementById('presentation').dataset.index === String(k), k),
      );
    }
    log('presenting: every tab followed the four campaigns');
    await hostAdvance();

    // Voting: everyone votes for the first campaign, except its big idea's author.
    await all(tabs, (t) => t.value('status', 'voting'));
    await everyoneUnready();
    const favourite = `${code}-ad-0`;
    const second = `${code}-ad-1`;
    for (const t of tabs) {
      const author = await t.page.getAttribute(`#ideas li[data-adlob="${favourite}"]`, 'data-author');
      const choice = author === t.player.id ? second : favourite;
      await t.click(`.vote[data-adlob="${choice}"]`);
      await t.value('voted', choice);
    }
    await all(tabs, (t) => t.value('all-ready', 'true'));
    log('voting: every tab voted');
    await hostAdvance();

    // Results: the same winner everywhere, no errors, one version.
    await all(tabs, async (t) => {
      await t.value('status', 'results');
      await t.value('winner', favourite);
      await t.count('errors', 0);
    });
    // The move to results reset the ready flags; once every tab has that, nothing
    // else changes, and every tab must reach the same version.
    await everyoneUnready();
    const seen = await Promise.all(tabs.map((t) => t.read('version')));
    const version = Math.max(...seen.map(Number));
    await all(tabs, (t) => t.value('version', String(version)));
    const backendVersion = await backend.finalVersion(code);
    if (backendVersion !== null) check(backendVersion === version, `GetRoom's version ${backendVersion} = the tabs' ${version}`);
    const heartbeats = await Promise.all(tabs.map((t) => t.page.evaluate(() => window.karaoke.state.heartbeatsSent)));
    const joins = await Promise.all(tabs.map((t) => t.page.evaluate(() => window.karaoke.state.joins)));
    const received = await Promise.all(tabs.map((t) => t.page.evaluate(() => window.karaoke.state.heartbeatsReceived)));
    log(`results: ${favourite} won in every tab, version ${version}`);

    for (const t of tabs) {
      const file = path.join(artifactDir, `tab-${t.index + 1}.png`);
      await t.page.screenshot({ path: file, fullPage: true, timeout: WAIT_MS });
      screenshots.push(file);
    }
    log(`screenshots: ${screenshots.join(' ')}`);

    let watched = null;
    if (backend instanceof GrpcBackend) {
      // The backend's WatchRoom saw every change in order, up to the tabs' version.
      const deadline = Date.now() + WAIT_MS;
      while (backend.watched.at(-1)?.version !== version && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      const vs = backend.watched.map((e) => e.version).filter((v) => v > 0);
      for (let j = 1; j < vs.length; j++) check(vs[j] >= vs[j - 1], `WatchRoom versions never go back: ${vs}`);
      check(vs.at(-1) === version, `WatchRoom reached version ${version}: ${vs.at(-1)}`);
      watched = backend.watched.length;
    }

    const result = {
      backend: backendName,
      room: code,
      version,
      tabs: tabs.length,
      joins,
      heartbeatsSent: heartbeats,
      heartbeatsReceived: received,
      saved: game.saved.length,
      votes: Object.fromEntries(game.votes),
      watchedEvents: watched,
      screenshots,
      seconds: (Date.now() - started) / 1000,
    };
    console.log(`E2E_RESULT ${JSON.stringify(result)}`);
  } catch (e) {
    // Keep what the tabs showed when it went wrong, for the person reading the run.
    for (const t of tabs) {
      const file = path.join(artifactDir, `failed-tab-${t.index + 1}.png`);
      await t.page.screenshot({ path: file, fullPage: true, timeout: 5000 }).catch(() => {});
      log(`screenshot of the failure: ${file}`);
    }
    throw e;
  } finally {
    await within(WAIT_MS, 'chromium closes', browser.close()).catch((e) => log(e.message));
    web.close();
    backend.close();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`E2E_FAILED ${e.stack ?? e}`);
    process.exit(1);
  },
);
