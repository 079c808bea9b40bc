-- Cluster mode's fencing: one row per room that a node has owned, holding the
-- owner's epoch. Taking a room over raises its epoch here (a durable, linearizable
-- counter: Redis, which holds the leases, can lose an increment in a failover), and
-- every write an owner makes is checked against it inside the write's transaction
-- (SELECT … FOR SHARE), so a write by a node that lost the room is refused. A single
-- node never writes here: its rows carry no epoch and are not checked.
CREATE TABLE room_owners (
    room_code TEXT        PRIMARY KEY,
    epoch     BIGINT      NOT NULL CHECK (epoch > 0),
    node_id   TEXT        NOT NULL,
    since     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX room_owners_node ON room_owners (node_id);
