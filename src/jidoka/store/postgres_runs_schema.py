"""The PostgreSQL store's runs index, webhook outbox and idempotency keys (schema version 4): two
tables, and the trigger on ``events`` that keeps them (:mod:`.runs` says what each event does).

The trigger is ``AFTER INSERT ... FOR EACH ROW`` with a ``WHEN`` on the event's type, so it runs
in the statement that inserts the events (the writer's group statement, unchanged) and commits
with them; for any other event it costs the ``WHEN`` alone. A ``conversation_added`` costs a
byte search for ``"idempotency_key"`` in its data more (a message's append is the hot path): the
function runs only when it is found. Its queries see the whole inserting statement's changes, the
head row that statement created or updated included, which is where a run's owner is read.

Nothing in an event's data fails the append: a run id or a key already recorded is left as it is
(``ON CONFLICT DO NOTHING``; first writer wins), and a field that is missing, not a string or
holds a NUL character is taken as absent (as every store does: :mod:`.runs`). The data is parsed
as ``json``; Postgres cannot turn a ``\\u0000`` escape into text, and refuses to read any field
of a document holding one, so ``json_data`` first rewrites each such escape as ``\\uffff``, an
escape the writer's encoder never writes (it writes that character as it is); ``json_text``
then takes a string holding one as absent.

``queued``/``completed`` are the events' data, the bytes as written. ``idempotency_keys.owner``
is ``''`` for a session with no principal (``NOT NULL``, so the unique ``(owner, key)`` holds for
the anonymous principal too; a principal is never the empty string). ``{schema}`` is the quoted
schema name.
"""

from __future__ import annotations

from typing import Final

__all__ = ["V4_RUNS"]

V4_RUNS: Final = r"""
CREATE TABLE {schema}.runs (
    run_id text PRIMARY KEY,
    session_id text NOT NULL,
    owner text,
    seq bigint NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    ended_at timestamptz,
    queued bytea NOT NULL,
    completed bytea,
    webhook_url text,
    webhook_state text,
    webhook_attempts integer NOT NULL DEFAULT 0,
    webhook_next_at timestamptz,
    webhook_error text
);
CREATE INDEX runs_by_session ON {schema}.runs (session_id, seq);
CREATE INDEX runs_unfinished ON {schema}.runs (session_id, seq)
    WHERE status IN ('queued', 'running');
CREATE INDEX runs_outbox ON {schema}.runs (webhook_next_at, run_id)
    WHERE webhook_state = 'pending';
CREATE TABLE {schema}.idempotency_keys (
    owner text NOT NULL,
    key text NOT NULL,
    request_hash text NOT NULL,
    session_id text NOT NULL,
    seq bigint NOT NULL,
    run_id text,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_keys_age ON {schema}.idempotency_keys (created_at);
CREATE INDEX idempotency_keys_session ON {schema}.idempotency_keys (session_id);
CREATE FUNCTION {schema}.json_text(v json) RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
    SELECT CASE WHEN json_typeof(v) = 'string' AND v::text !~ '(^|[^\\])(\\\\)*\\uffff'
                THEN v #>> '{}' END
$fn$;
CREATE FUNCTION {schema}.json_data(raw bytea) RETURNS json LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    t text := convert_from(raw, 'UTF8');
BEGIN
    WHILE strpos(t, '\u0000') > 0 AND t ~ '(^|[^\\])(\\\\)*\\u0000' LOOP
        t := regexp_replace(t, '((?:^|[^\\])(?:\\\\)*)\\u0000', '\1\\uffff', 'g');
    END LOOP;
    RETURN t::json;
END
$fn$;
CREATE FUNCTION {schema}.derive_runs() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    d json := {schema}.json_data(NEW.data);
    run text := {schema}.json_text(d->'run_id');
    who text;
    digest text := CASE WHEN d->'request_hash' IS NULL THEN ''
                        ELSE {schema}.json_text(d->'request_hash') END;
BEGIN
    IF run IS NULL AND NEW.type <> 'conversation_added' THEN
        RETURN NULL;  -- malformed: nothing to index
    ELSIF NEW.type = 'run_started' THEN
        UPDATE {schema}.runs SET status = 'running', started_at = NEW.time WHERE run_id = run;
        RETURN NULL;
    ELSIF NEW.type = 'run_completed' THEN
        UPDATE {schema}.runs SET status = {schema}.json_text(d->'status'), ended_at = NEW.time,
            completed = NEW.data,
            webhook_state = CASE WHEN webhook_url IS NOT NULL THEN 'pending' END,
            webhook_next_at = CASE WHEN webhook_url IS NOT NULL THEN NEW.time END
        WHERE run_id = run AND {schema}.json_text(d->'status') IS NOT NULL;
        RETURN NULL;
    END IF;
    SELECT owner INTO who FROM {schema}.sessions WHERE session_id = NEW.session_id;
    IF NEW.type = 'run_queued' THEN
        INSERT INTO {schema}.runs
            (run_id, session_id, owner, seq, status, created_at, queued, webhook_url)
        VALUES (run, NEW.session_id, who, NEW.seq, 'queued', NEW.time, NEW.data,
                nullif({schema}.json_text(d->'webhook'), ''))
        ON CONFLICT (run_id) DO NOTHING;
    ELSE
        run := NULL;  -- a message's key: no run
    END IF;
    IF {schema}.json_text(d->'idempotency_key') IS NOT NULL AND digest IS NOT NULL THEN
        INSERT INTO {schema}.idempotency_keys
            (owner, key, request_hash, session_id, seq, run_id, created_at)
        VALUES (coalesce(who, ''), {schema}.json_text(d->'idempotency_key'), digest,
                NEW.session_id, NEW.seq, run, NEW.time)
        ON CONFLICT (owner, key) DO NOTHING;
    END IF;
    RETURN NULL;
END
$fn$;
CREATE TRIGGER derive_runs AFTER INSERT ON {schema}.events FOR EACH ROW
    WHEN (NEW.type IN ('run_queued', 'run_started', 'run_completed')
          OR (NEW.type = 'conversation_added'
              AND position('"idempotency_key"'::bytea IN NEW.data) > 0))
    EXECUTE FUNCTION {schema}.derive_runs();
"""
