-- Migration 27: a schedule queues jobs of a kind, with arguments, as an
-- enqueue does (migration 25): `prefork schedule add --kind K --args
-- JSON`. Existing schedules queue kind 'default' with their payload.
ALTER TABLE {s}.schedules ADD COLUMN kind text NOT NULL DEFAULT 'default',
                          ADD COLUMN args jsonb;
