-- Migration 26: each child's row says which kinds it serves (`--kinds`;
-- NULL: every kind), as it says its queues, so that `prefork status` can
-- show the kinds that wait with no live fleet to serve them.
ALTER TABLE {s}.children ADD COLUMN kinds text[];
