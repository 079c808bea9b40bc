// A small stand-in for the Concept Karaoke browser client. It speaks the player
// protocol (docs/protocol.md) with the browser's own WebSocket, as the real client
// does: `join_room` with the token the backend handed out and an `initialSnapshot`
// on every join (re-joins too, with `lastVersion` to resume), a heartbeat on a timer,
// events taken only when their version is newer than the one held. It talks to the
// backend (the page's own origin, played by tests/e2e/game.mjs) for what the real
// app keeps in its own database: the session, the game's start, saved work, votes.
//
// Everything it holds is rendered into the DOM as text and data-* attributes, which
// is what the driver reads: each tab asserts what it shows, not what it was sent.

const PHASES = ['big_idea', 'visual', 'headline', 'pitch'];
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const ROOM = params.get('room');
const ME = params.get('player');

const state = {
  session: null, // {wsUrl, wsUrls, token, snapshot, advanceVia, heartbeatMs}
  urlAt: 0, // which of session.wsUrls the socket goes to (the next one after a close)
  helloOnSocket: false, // the current socket has had its hello_ack
  snapshot: null, // the room as this tab holds it (RoomSnapshot)
  version: 0,
  settings: null,
  briefId: null,
  ideas: {}, // adlobId -> {text, authorId}
  strokes: 0,
  contents: [], // content_submitted events
  presentation: null, // {presentIndex, showCampaign}
  submitted: '', // the phase this tab last submitted work for
  voted: '',
  results: null,
  errors: [],
  joins: 0,
  recovered: null, // hello_ack.recovered of the last join
  heartbeatsSent: 0,
  heartbeatsReceived: 0,
  advances: 0, // the host's advance requests that have completed
  socket: null,
  open: false,
  closedForGood: false,
};

// For the driver: a read-only view, the frames received, and a way to simulate a
// dropped connection (the page reconnects and resumes on its own).
window.karaoke = { state, frames: [], dropConnection: () => state.socket?.close() };

function error(text) {
  state.errors.push(text);
  render();
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: body ? { 'Content-Type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const answer = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(answer)}`);
  return answer;
}

function send(message) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) {
    error(`not connected, dropped ${message.type}`);
    return;
  }
  state.socket.send(JSON.stringify(message));
}

function me() {
  return state.snapshot?.players.find((p) => p.id === ME);
}

function phaseIndex() {
  return PHASES.indexOf(state.snapshot?.currentPhase);
}

/** The adlob this player works on in the running creation phase: they rotate. */
function myAdlob() {
  const i = phaseIndex();
  const seat = me()?.seatIndex;
  if (i < 0 || seat === undefined) return '';
  const n = state.snapshot.players.length;
  return `${ROOM}-ad-${(seat + i) % n}`;
}

// ---------------------------------------------------------------------------------
// The socket

function connect() {
  const urls = state.session.wsUrls ?? [state.session.wsUrl];
  const url = new URL(urls[state.urlAt % urls.length]);
  state.helloOnSocket = false;
  url.searchParams.set('room', ROOM);
  const ws = new WebSocket(url);
  state.socket = ws;
  ws.onopen = () => {
    state.open = true;
    const join = {
      type: 'join_room',
      roomCode: ROOM,
      playerId: ME,
      playerToken: state.session.token,
      // The real client sends the snapshot it holds on every join; the server's
      // state wins when it has the room.
      initialSnapshot: state.snapshot,
    };
    if (state.joins > 0) join.lastVersion = state.version;
    ws.send(JSON.stringify(join));
    render();
  };
  ws.onmessage = (frame) => {
    let message;
    try {
      message = JSON.parse(frame.data);
    } catch {
      error(`a frame that is not JSON: ${String(frame.data).slice(0, 80)}`);
      return;
    }
    window.karaoke.frames.push(message);
    handle(message);
    render();
  };
  ws.onclose = (event) => {
    state.open = false;
    render();
    if (state.closedForGood || event.code === 4000) return; // the room was closed
    // Reconnect (a restart, or its node gone: then the next node of the cluster, as a
    // load balancer would send it), resuming from the version held.
    state.urlAt += 1;
    setTimeout(connect, 500);
  };
}

/** Takes a versioned change only when it is newer than what the tab holds. */
function newer(message) {
  if (typeof message.version !== 'number') {
    error(`${message.type} without a version`);
    return false;
  }
  if (message.version <= state.version) return false;
  state.version = message.version;
  return true;
}

function handle(m) {
  const snap = state.snapshot;
  switch (m.type) {
    case 'hello_ack':
      state.joins += 1;
      state.helloOnSocket = true;
      state.recovered = m.recovered;
      state.snapshot = m.snapshot;
      state.version = m.snapshot.version;
      for (const [id, idea] of Object.entries(m.bigIdeas ?? {})) state.ideas[id] = idea;
      state.strokes = Object.values(m.canvases ?? {}).reduce(
        (n, c) => n + c.ops.filter((op) => op.op === 'stroke').length,
        0,
      );
      if (m.snapshot.presentation) state.presentation = m.snapshot.presentation;
      break;
    case 'room_state':
      if (m.snapshot.version >= state.version) {
        state.snapshot = m.snapshot;
        state.version = m.snapshot.version;
      }
      break;
    case 'player_joined':
      if (newer(m)) {
        const others = snap.players.filter((p) => p.id !== m.player.id);
        snap.players = [...others, m.player].sort((a, b) => a.seatIndex - b.seatIndex);
      }
      break;
    case 'player_left':
      if (newer(m)) {
        const p = snap.players.find((p) => p.id === m.playerId);
        if (p) Object.assign(p, { isReady: false, connected: false });
      }
      break;
    case 'ready_update':
      if (newer(m)) {
        const p = snap.players.find((p) => p.id === m.playerId);
        if (p) p.isReady = m.isReady;
      }
      break;
    case 'status_changed':
      if (newer(m)) {
        Object.assign(snap, { status: m.status, currentPhase: m.currentPhase, phaseStartTime: m.phaseStartTime });
      }
      break;
    case 'phase_changed':
      if (newer(m)) Object.assign(snap, { currentPhase: m.currentPhase, phaseStartTime: m.phaseStartTime });
      break;
    case 'settings_changed':
      if (newer(m)) {
        state.settings = {
          productCategory: m.productCategory,
          phaseDurationSeconds: m.phaseDurationSeconds,
          briefStyle: m.briefStyle,
        };
      }
      break;
    case 'brief_updated':
      if (newer(m)) state.briefId = m.briefId;
      break;
    case 'content_submitted':
      if (newer(m)) state.contents.push({ adlobId: m.adlobId, phase: m.phase, playerId: m.playerId });
      break;
    case 'big_idea_submitted':
      if (newer(m)) state.ideas[m.adlobId] = { text: m.text, authorId: m.authorId };
      break;
    case 'canvas_delta':
      if (newer(m) && m.delta.op === 'stroke') state.strokes += 1;
      break;
    case 'presentation_state':
      // Changes no state: same version, never dropped for it.
      state.presentation = { presentIndex: m.presentIndex, showCampaign: m.showCampaign };
      break;
    case 'heartbeat':
      state.heartbeatsReceived += 1;
      break;
    case 'error':
      if (m.code === 'unavailable' && !state.helloOnSocket) {
        // A join while the room moves between nodes: try again, as the real client
        // does with its reconnect loop.
        state.socket?.close();
        break;
      }
      error(`${m.code}: ${m.message}`);
      break;
    default:
      error(`unexpected message type ${m.type}`);
  }
}

// ---------------------------------------------------------------------------------
// What the player does

function setReady(isReady) {
  send({ type: 'set_ready', roomCode: ROOM, playerId: ME, isReady });
}

async function advance() {
  if (state.session.advanceVia === 'backend') {
    // The existing app: the backend applies its rules and pushes the change.
    await api('POST', '/api/advance', { room: ROOM, playerId: ME });
  } else {
    send({ type: 'advance_phase', roomCode: ROOM, playerId: ME });
  }
  state.advances += 1;
  render();
}

async function submitWork(phase, text) {
  const adlobId = myAdlob();
  if (phase === 'big_idea') send({ type: 'submit_big_idea', roomCode: ROOM, adlobId, text });
  // The backend saves the work and announces it (content_submitted).
  await api('POST', '/api/content', { room: ROOM, playerId: ME, adlobId, phase, text });
  state.submitted = phase;
  setReady(true);
  render();
}

function wireCanvas() {
  const canvas = $('canvas');
  const ctx = canvas.getContext('2d');
  let points = null;
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return { x: Math.round(e.clientX - r.left), y: Math.round(e.clientY - r.top), pressure: 0.5 };
  };
  canvas.addEventListener('pointerdown', (e) => {
    points = [at(e)];
  });
  canvas.addEventListener('pointermove', (e) => {
    if (!points) return;
    const p = at(e);
    const last = points[points.length - 1];
    ctx.strokeStyle = '#d1495b';
    ctx.lineWidth = 4;
    ctx.beginPath();
    ctx.moveTo(last.x, last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
    points.push(p);
  });
  canvas.addEventListener('pointerup', () => {
    if (points && points.length >= 2) {
      send({
        type: 'submit_canvas_delta',
        roomCode: ROOM,
        adlobId: myAdlob(),
        phase: state.snapshot.currentPhase,
        delta: { op: 'stroke', id: `${ME}-${Date.now()}`, color: '#d1495b', width: 4, points },
      });
    }
    points = null;
  });
}

function wire() {
  $('ready').onclick = () => setReady(!me()?.isReady);
  $('start').onclick = async () => {
    try {
      await api('POST', '/api/start', { room: ROOM, playerId: ME });
      await advance();
    } catch (e) {
      error(String(e));
    }
  };
  $('advance').onclick = () => advance().catch((e) => error(String(e)));
  const onSubmit = (id, phase, input) => {
    $(id).onclick = () => submitWork(phase, input ? $(input).value : 'a drawing').catch((e) => error(String(e)));
  };
  onSubmit('submit-idea', 'big_idea', 'idea-text');
  onSubmit('submit-visual', 'visual', null);
  onSubmit('submit-headline', 'headline', 'headline-text');
  onSubmit('submit-pitch', 'pitch', 'pitch-text');
  $('next-present').onclick = () => {
    const i = state.presentation ? state.presentation.presentIndex + 1 : 0;
    send({ type: 'presentation_state', roomCode: ROOM, playerId: ME, presentIndex: i, showCampaign: true });
  };
  wireCanvas();
}

async function vote(adlobId) {
  try {
    await api('POST', '/api/vote', { room: ROOM, playerId: ME, adlobId });
    state.voted = adlobId;
    setReady(true);
    render();
  } catch (e) {
    error(String(e));
  }
}

let resultsAsked = false;
async function fetchResults() {
  if (resultsAsked) return;
  resultsAsked = true;
  try {
    state.results = await api('GET', `/api/results?room=${encodeURIComponent(ROOM)}`);
    render();
  } catch (e) {
    error(String(e));
  }
}

// ---------------------------------------------------------------------------------
// Rendering: everything the driver checks is here, as text and data-* attributes.

function set(id, value, attr = 'value') {
  const el = $(id);
  el.dataset[attr] = String(value);
  el.textContent = String(value);
}

function render() {
  set('conn', state.open ? 'open' : 'closed');
  set('joins', state.joins, 'count');
  set('heartbeats', state.heartbeatsSent, 'count');
  set('server-heartbeats', state.heartbeatsReceived, 'count');
  set('advances', state.advances, 'count');
  set('version', state.version);
  $('errors').dataset.count = String(state.errors.length);
  $('errors').replaceChildren(
    ...state.errors.map((text) => {
      const li = document.createElement('li');
      li.textContent = text;
      return li;
    }),
  );
  const snap = state.snapshot;
  if (!snap) return;
  const self = me();
  $('host-badge').hidden = !self?.isHost;
  set('status', snap.status);
  set('phase', snap.currentPhase ?? '');
  set(
    'settings',
    state.settings ? `${state.settings.productCategory} / ${state.settings.phaseDurationSeconds}s / ${state.settings.briefStyle}` : '',
  );
  set('brief', state.briefId ?? '');

  const list = $('players');
  list.replaceChildren(
    ...snap.players.map((p) => {
      const li = document.createElement('li');
      li.dataset.id = p.id;
      li.dataset.ready = String(p.isReady);
      li.dataset.connected = String(p.connected !== false);
      li.dataset.host = String(p.isHost);
      li.textContent = `${p.emoji} ${p.name}${p.isHost ? ' (host)' : ''}${p.connected === false ? ' — offline' : ''}`;
      return li;
    }),
  );
  const allReady = snap.players.length > 0 && snap.players.every((p) => p.isReady);
  set('all-ready', allReady);
  $('ready').textContent = self?.isReady ? 'Not ready' : 'Ready';
  $('start').hidden = !(self?.isHost && snap.status === 'lobby');
  $('advance').hidden = !(self?.isHost && snap.status !== 'lobby');

  const task = snap.status === 'creating' ? snap.currentPhase : snap.status;
  for (const el of document.querySelectorAll('.task')) el.hidden = el.id !== `task-${task}`;
  set('adlob', myAdlob());
  set('submitted', state.submitted);

  const ideas = Object.entries(state.ideas).sort(([a], [b]) => a.localeCompare(b));
  $('ideas').dataset.count = String(ideas.length);
  $('ideas').replaceChildren(
    ...ideas.map(([adlobId, idea]) => {
      const li = document.createElement('li');
      li.dataset.adlob = adlobId;
      li.dataset.author = idea.authorId;
      li.textContent = `${adlobId}: “${idea.text}” — ${idea.authorId}`;
      return li;
    }),
  );
  set('strokes', state.strokes, 'count');
  $('contents').dataset.count = String(state.contents.length);
  $('contents').replaceChildren(
    ...state.contents.map((c) => {
      const li = document.createElement('li');
      Object.assign(li.dataset, { adlob: c.adlobId, phase: c.phase, player: c.playerId });
      li.textContent = `${c.phase}: ${c.adlobId} by ${c.playerId}`;
      return li;
    }),
  );

  const pres = $('presentation');
  pres.dataset.index = state.presentation ? String(state.presentation.presentIndex) : '';
  pres.dataset.campaign = state.presentation ? String(state.presentation.showCampaign) : '';
  pres.textContent = state.presentation ? `campaign #${state.presentation.presentIndex}` : '—';
  $('next-present').hidden = !self?.isHost;

  if (snap.status === 'voting' && $('vote-buttons').childElementCount === 0) {
    $('vote-buttons').replaceChildren(
      ...snap.players.map((_, i) => {
        const b = document.createElement('button');
        b.className = 'vote';
        b.dataset.adlob = `${ROOM}-ad-${i}`;
        b.textContent = `Vote ${ROOM}-ad-${i}`;
        b.onclick = () => vote(b.dataset.adlob);
        return b;
      }),
    );
  }
  set('voted', state.voted);
  if (snap.status === 'results') fetchResults();
  set('winner', state.results?.winner ?? '');
  $('tally').textContent = state.results ? JSON.stringify(state.results.tally) : '';

}

async function main() {
  $('room').textContent = ROOM;
  $('me').textContent = ME;
  wire();
  try {
    state.session = await api(
      'GET',
      `/api/session?room=${encodeURIComponent(ROOM)}&player=${encodeURIComponent(ME)}`,
    );
  } catch (e) {
    error(String(e));
    return;
  }
  // The page's copy of the room, as the real app renders it from its own database.
  state.snapshot = state.session.snapshot;
  render();
  setInterval(() => {
    if (state.open && state.joins > 0) {
      send({ type: 'heartbeat', roomCode: ROOM });
      state.heartbeatsSent += 1;
      render();
    }
  }, state.session.heartbeatMs);
  connect();
}

main();
