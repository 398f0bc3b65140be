-- Migration 20: leases held by the children that run the jobs (see
-- ../../lease.rs). Each child keeps its row in `children` itself, and
-- renews `lease_until` from a thread of its own while it lives, however
-- long its jobs run and whatever its master does; a running job goes
-- back to the queue when the lease of the child that claimed it lapses.
-- The master's heartbeat (migration 13) no longer decides anything: a
-- master stopped alone kept its children working while another fleet
-- took their jobs. A row written by an older master has no lease
-- (NULL): its children's jobs come back at their claim's own expiry
-- (`locked_until`), as before.

ALTER TABLE {s}.children ADD COLUMN lease_until timestamptz;
