-- Rooms' durable state: snapshots (the whole room, coalesced) and the append-only
-- event log (every state change, in version order per room). Same shape as the
-- Postgres schema; JSON is stored as TEXT and times as RFC 3339 TEXT.
--
-- (room_code, version) is the primary key of both tables, so a retried write of the
-- same row is a no-op, and it indexes "latest snapshot" and "events after N".
CREATE TABLE room_snapshots (
    room_code   TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 0),
    snapshot    TEXT    NOT NULL CHECK (json_valid(snapshot)),
    captured_at TEXT    NOT NULL,
    PRIMARY KEY (room_code, version)
) WITHOUT ROWID;

CREATE TABLE room_events (
    room_code  TEXT    NOT NULL,
    event_type TEXT    NOT NULL,
    version    INTEGER NOT NULL CHECK (version > 0),
    payload    TEXT    NOT NULL CHECK (json_valid(payload)),
    created_at TEXT    NOT NULL,
    PRIMARY KEY (room_code, version)
) WITHOUT ROWID;

CREATE INDEX room_events_created_at ON room_events (created_at);
