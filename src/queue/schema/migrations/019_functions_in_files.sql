-- Migration 19: the server-side functions move to files of their own
-- (../functions/), each defined once and applied after the migrations;
-- the retry schedule becomes a function (retry_delay). What no version
-- since 11 calls goes: the one-queue claim (versions 3 to 10), the
-- four-argument complete (3 to 7) and finish (4 to 7).

DROP FUNCTION IF EXISTS {s}.claim(text, int, text, float8);
DROP FUNCTION IF EXISTS {s}.complete(text, int8[], bool[], text[]);
DROP FUNCTION IF EXISTS {s}.finish(text, int8[], bool[], text[]);
