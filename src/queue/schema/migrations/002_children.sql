-- Migration 2: live children (called workers until migration 6), kept by each
-- master.

CREATE TABLE {s}.workers (
   host text NOT NULL,
   pid int NOT NULL,
   master_pid int NOT NULL,
   queue text NOT NULL,
   since timestamptz NOT NULL,
   tasks bigint NOT NULL DEFAULT 0,
   seen_at timestamptz NOT NULL DEFAULT now(),
   PRIMARY KEY (host, pid)
);
