-- Migration 18: a schedule may give its jobs a unique key: a tick while the
-- previous tick's job is still queued or running queues nothing (an
-- overlapping run is skipped, as River's unique periodic jobs and
-- sidekiq-cron do). Fleets of the previous version ignore the column.

ALTER TABLE {s}.schedules ADD COLUMN unique_key text;
