-- Migration 6: the launcher's words: the processes a master forks are children,
-- and what they count is jobs.

ALTER TABLE {s}.workers RENAME TO children;
ALTER TABLE {s}.children RENAME COLUMN tasks TO jobs;
