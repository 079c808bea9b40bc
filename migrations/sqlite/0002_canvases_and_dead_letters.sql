-- Canvases stored apart from the room's snapshot, and a place for rows the database
-- refused for their content. Same shape as the Postgres schema (see its comments);
-- JSON is stored as TEXT and times as RFC 3339 TEXT.
CREATE TABLE room_canvases (
    room_code   TEXT    NOT NULL,
    adlob_id    TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version > 0),
    ops         TEXT    NOT NULL CHECK (json_valid(ops)),
    captured_at TEXT    NOT NULL,
    PRIMARY KEY (room_code, adlob_id, version)
) WITHOUT ROWID;

-- No constraint here that a refused row's content could break.
CREATE TABLE persist_dead_letters (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind      TEXT,
    room_code TEXT,
    adlob_id  TEXT,
    event_type TEXT,
    version   INTEGER,
    body      TEXT,
    error     TEXT,
    failed_at TEXT
);

CREATE INDEX persist_dead_letters_room ON persist_dead_letters (room_code, version);
