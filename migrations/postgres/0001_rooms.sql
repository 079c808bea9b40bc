-- Rooms' durable state: snapshots (the whole room, coalesced) and the append-only
-- event log (every state change, in version order per room).
--
-- (room_code, version) is the primary key of both tables: a retried write of the
-- same row is a no-op (ON CONFLICT), which is what makes "exactly once" after an
-- outage. The primary keys' btree indexes serve both hot queries:
--   latest snapshot of a room: WHERE room_code = $1 ORDER BY version DESC LIMIT 1
--   events after version N:    WHERE room_code = $1 AND version > $2 ORDER BY version
CREATE TABLE room_snapshots (
    room_code   TEXT        NOT NULL,
    version     BIGINT      NOT NULL CHECK (version >= 0),
    snapshot    JSONB       NOT NULL,
    captured_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_code, version)
);

CREATE TABLE room_events (
    room_code  TEXT        NOT NULL,
    event_type TEXT        NOT NULL,
    version    BIGINT      NOT NULL CHECK (version > 0),
    payload    JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_code, version)
);

-- Operators' "what happened lately" queries.
CREATE INDEX room_events_created_at ON room_events (created_at);
