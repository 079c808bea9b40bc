// The admin plane as the Next.js backend uses it, and the player WebSocket as the
// browser uses it, both from Node.
//
// Run by tests/admin_tools.rs against a real server (or by hand: start the server,
// then `ADMIN_ADDR=127.0.0.1:50051 ADMIN_TOKEN=... WS_URL=ws://127.0.0.1:8080/
// node --test tests/node/backend.test.mjs` after `npm ci --prefix tests/node`).
//
// Environment:
//   ADMIN_ADDR   host:port of the admin plane (plaintext gRPC)
//   ADMIN_TOKEN  the server's ADMIN_TOKEN
//   WS_URL       the players' WebSocket URL, e.g. ws://127.0.0.1:8080/
//
// How the .proto is loaded: the repository's proto/karaoke/admin/v1/admin.proto,
// read at run time by @grpc/proto-loader (no generated code), with the options of
// grpc-node's own examples, which is what a backend copies:
//   keepCase: true   field names stay as in the .proto (room_code, is_ready, ...),
//                    so request and response objects match the .proto and grpcurl;
//   longs: String    uint64 fields (version, expires_at) arrive as decimal strings;
//   enums: String    enums are their .proto names ('GAME_STATUS_CREATING');
//   defaults: true   unset scalars read as their defaults (false, 0, '');
//   oneofs: true     the `event` oneof of PublishEventRequest names its member.
// A backend that prefers camelCase (keepCase: false) gets the same wire format.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import WebSocket from 'ws';

/** Upper bound for any single expected reply or message. */
const WAIT_MS = 20_000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} must be set (see the header of ${path.basename(import.meta.url)})`);
  }
  return value;
}

const ADMIN_ADDR = required('ADMIN_ADDR');
const ADMIN_TOKEN = required('ADMIN_TOKEN');
const WS_URL = required('WS_URL');

const here = path.dirname(fileURLToPath(import.meta.url));
const PROTO = path.resolve(here, '../../proto/karaoke/admin/v1/admin.proto');

const definition = protoLoader.loadSync(PROTO, {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { RoomAdmin } = grpc.loadPackageDefinition(definition).karaoke.admin.v1;
const admin = new RoomAdmin(ADMIN_ADDR, grpc.credentials.createInsecure());
after(() => admin.close());

function bearer(token = ADMIN_TOKEN) {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

/** One unary call as a promise; `metadata` carries (or not) the admin token. */
function call(method, request, metadata = bearer()) {
  return new Promise((resolve, reject) => {
    admin[method](request, metadata, { deadline: Date.now() + WAIT_MS }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

/** A player's socket: every JSON frame is queued; `next` takes them in order. */
class Player {
  constructor(id) {
    this.id = id;
    this.queue = [];
    this.waiters = [];
  }

  async connect(roomCode) {
    const url = new URL(WS_URL);
    url.searchParams.set('room', roomCode);
    this.ws = new WebSocket(url);
    this.ws.on('message', (data, isBinary) => {
      assert.equal(isBinary, false, 'the server sends text frames');
      const message = JSON.parse(data.toString());
      // Heartbeats come on a timer, not in answer to anything the test does.
      if (message.type === 'heartbeat') return;
      this.queue.push(message);
      this.wake();
    });
    this.ws.on('close', () => {
      this.closed = true;
      this.wake();
    });
    await new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('error', reject);
    });
  }

  wake() {
    for (const w of this.waiters.splice(0)) w();
  }

  send(message) {
    this.ws.send(JSON.stringify(message));
  }

  /** The next message, which must be of type `type`. */
  async next(type) {
    const deadline = Date.now() + WAIT_MS;
    while (this.queue.length === 0) {
      if (this.closed) throw new Error(`${this.id}: socket closed while waiting for ${type}`);
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
    this.ws?.close();
  }
}

function playerIn(snapshot, id) {
  const p = snapshot.players.find((p) => p.id === id);
  assert.ok(p, `player ${id} is in ${JSON.stringify(snapshot)}`);
  return p;
}

test('backend creates a room, adds players, mints tokens; two sockets play', { timeout: 120_000 }, async (t) => {
  const created = await call('CreateRoom', {});
  const room = created.room;
  assert.match(room.code, /^[ABCDEFGHJKMNPQRSTUVWXYZ23456789]{6}$/, 'a generated code');
  assert.equal(room.status, 'GAME_STATUS_LOBBY');
  assert.equal(room.current_phase, 'CREATION_PHASE_UNSPECIFIED');
  assert.deepEqual(room.players, []);
  const code = room.code;
  t.after(() => call('CloseRoom', { room_code: code }).catch(() => {}));

  const upsert1 = await call('UpsertPlayer', {
    room_code: code,
    player: { id: 'alice', name: 'Alice', emoji: '🎤', is_host: true, seat_index: 0 },
  });
  const upsert2 = await call('UpsertPlayer', {
    room_code: code,
    player: { id: 'bob', name: 'Bob', emoji: '🎸', seat_index: 1 },
  });
  assert.equal(BigInt(upsert2.version), BigInt(upsert1.version) + 1n, 'one version per change');

  const now = Math.floor(Date.now() / 1000);
  const tokens = {};
  for (const id of ['alice', 'bob']) {
    const minted = await call('MintPlayerToken', { room_code: code, player_id: id });
    assert.equal(minted.token.split('.').length, 3, 'a JWT');
    assert.ok(Number(minted.expires_at) > now, `expires in the future: ${minted.expires_at}`);
    tokens[id] = minted.token;
  }

  const alice = new Player('alice');
  const bob = new Player('bob');
  t.after(() => {
    alice.close();
    bob.close();
  });

  await alice.connect(code);
  alice.send({ type: 'join_room', roomCode: code, playerId: 'alice', playerToken: tokens.alice });
  const aliceHello = await alice.next('hello_ack');
  assert.equal(aliceHello.roomCode, code);
  assert.equal(aliceHello.snapshot.players.length, 2);
  assert.equal(playerIn(aliceHello.snapshot, 'alice').connected, true);
  assert.equal(playerIn(aliceHello.snapshot, 'bob').connected, false);

  await bob.connect(code);
  bob.send({ type: 'join_room', roomCode: code, playerId: 'bob', playerToken: tokens.bob });
  const bobHello = await bob.next('hello_ack');
  assert.equal(playerIn(bobHello.snapshot, 'bob').connected, true);
  // Alice learns of Bob's arrival.
  const bobArrived = await alice.next('room_state');
  assert.equal(bobArrived.snapshot.version, bobHello.snapshot.version);
  assert.equal(playerIn(bobArrived.snapshot, 'bob').connected, true);

  // Alice is ready: both see the ready_update, then the room_state.
  alice.send({ type: 'set_ready', roomCode: code, playerId: 'alice', isReady: true });
  for (const p of [alice, bob]) {
    const update = await p.next('ready_update');
    assert.deepEqual(update, {
      type: 'ready_update',
      roomCode: code,
      playerId: 'alice',
      isReady: true,
      version: bobHello.snapshot.version + 1,
    });
    const state = await p.next('room_state');
    assert.equal(state.snapshot.version, update.version);
    assert.equal(playerIn(state.snapshot, 'alice').isReady, true);
    assert.equal(playerIn(state.snapshot, 'bob').isReady, false);
  }

  // Bob is ready: Alice (and Bob) see it.
  bob.send({ type: 'set_ready', roomCode: code, playerId: 'bob', isReady: true });
  for (const p of [alice, bob]) {
    const update = await p.next('ready_update');
    assert.deepEqual(update, {
      type: 'ready_update',
      roomCode: code,
      playerId: 'bob',
      isReady: true,
      version: bobHello.snapshot.version + 2,
    });
    const state = await p.next('room_state');
    assert.equal(playerIn(state.snapshot, 'alice').isReady, true);
    assert.equal(playerIn(state.snapshot, 'bob').isReady, true);
  }

  // The backend's view agrees with the players'.
  const { room: view } = await call('GetRoom', { room_code: code });
  assert.equal(view.version, String(bobHello.snapshot.version + 2));
  assert.equal(view.connection_count, 2);
  assert.deepEqual(
    view.players.map((p) => [p.id, p.is_ready, p.connected]),
    [
      ['alice', true, true],
      ['bob', true, true],
    ],
  );
});

test('a call without the admin token is UNAUTHENTICATED', async () => {
  await assert.rejects(call('CreateRoom', {}, new grpc.Metadata()), (err) => {
    assert.equal(err.code, grpc.status.UNAUTHENTICATED);
    assert.equal(err.code, 16);
    return true;
  });
  await assert.rejects(call('ListRooms', {}, bearer(`${ADMIN_TOKEN}x`)), (err) => {
    assert.equal(err.code, grpc.status.UNAUTHENTICATED);
    return true;
  });
});
