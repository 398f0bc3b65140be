-- Migration 13: masters' heartbeats. Each master records one every second, with
-- its children; a master whose heartbeat is older than
-- `--rescue-after` is taken for dead, and a live master hands its
-- children's running jobs back (see store::rescue).

CREATE TABLE {s}.masters (
    host text NOT NULL,
    pid int NOT NULL,
    queues text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, pid)
);
