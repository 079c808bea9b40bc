-- Canvases stored apart from the room's snapshot, and a place for rows the database
-- refused for their content.
--
-- room_canvases: one row per canvas per version, written only when the canvas changed
-- since its last row. A snapshot (format 2) names the canvas versions it needs in
-- `canvasVersions`; restoring a room reads exactly those rows. A canvas's content at
-- a given room version never changes, so a retried row is harmless; rows older than
-- the version the latest snapshot needs are deleted when that snapshot is written.
-- The primary key serves both "the rows a snapshot needs" and that pruning.
CREATE TABLE room_canvases (
    room_code   TEXT        NOT NULL,
    adlob_id    TEXT        NOT NULL,
    version     BIGINT      NOT NULL CHECK (version > 0),
    ops         JSONB       NOT NULL,
    captured_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_code, adlob_id, version)
);

-- Rows the database refused for what they hold (a constraint, bad data, a size
-- limit), moved here so that they stop blocking every other room's writes. Nothing
-- here is checked: every column is nullable TEXT or a number, so whatever a refused
-- row holds can be kept. `body` is the row's JSON as text (not JSONB, which could
-- refuse it again). An operator inspects these and repairs by hand (runbook).
CREATE TABLE persist_dead_letters (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind      TEXT,
    room_code TEXT,
    adlob_id  TEXT,
    event_type TEXT,
    version   BIGINT,
    body      TEXT,
    error     TEXT,
    failed_at TIMESTAMPTZ DEFAULT now()
);

CREATE INDEX persist_dead_letters_room ON persist_dead_letters (room_code, version);
