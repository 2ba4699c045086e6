-- Projections: handlers applied to the feed in order, each batch committed together with the
-- projection's checkpoint, so projection tables see every event's effect exactly once.

CREATE TABLE _event_store.es_projection_state (
    name                text        PRIMARY KEY,
    handler             regprocedure NOT NULL,
    reset_handler       regprocedure,
    event_types         text[],
    categories          text[],
    owner               regrole     NOT NULL,
    status              text        NOT NULL DEFAULT 'running'
                                    CHECK (status IN ('running', 'paused', 'failed', 'rebuilding')),
    position            bigint      NOT NULL DEFAULT 0,
    attempts            integer     NOT NULL DEFAULT 0,
    retry_at            timestamptz,
    last_error          text,
    last_error_position bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('_event_store.es_projection_state', '');
CREATE VIEW @extschema@.es_projection_state WITH (security_invoker = true) AS SELECT * FROM _event_store.es_projection_state;

-- Checks that the calling role may manage the projection (its owner, a member of it, or a
-- superuser), and returns it locked.
CREATE FUNCTION _event_store._es_projection_for_update(p_name text) RETURNS _event_store.es_projection_state
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p _event_store.es_projection_state;
BEGIN
    SELECT * INTO p FROM _event_store.es_projection_state WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event_store: projection "%" does not exist', p_name USING ERRCODE = '42704';
    END IF;
    IF NOT pg_catalog.pg_has_role(_event_store._es_calling_role_id(), p.owner::pg_catalog.oid, 'MEMBER'::pg_catalog.text) THEN
        RAISE EXCEPTION 'event_store: only members of % may manage projection "%"', p.owner, p_name
            USING ERRCODE = '42501';
    END IF;
    RETURN p;
END
$$;

CREATE FUNCTION @extschema@.es_create_projection(name text, handler regprocedure, event_types text[] DEFAULT NULL,
                                     categories text[] DEFAULT NULL, reset_handler regprocedure DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- By oid: a role's name read back as text and cast to regrole may name another role.
    caller pg_catalog.regrole := _event_store._es_calling_role_id()::pg_catalog.regrole;
    f regprocedure;
BEGIN
    PERFORM _event_store._es_check_append(name, NULL::bigint, 'array'::text, 1);  -- same rules as a stream id
    IF handler IS NULL THEN
        RAISE EXCEPTION 'event_store: handler must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) caller::pg_catalog.oid) THEN
        RAISE EXCEPTION 'event_store: projection handlers never run as a superuser'
            USING ERRCODE = '42501',
                  HINT = 'Create the projection as the role that owns its tables: SET ROLE that_role; SELECT es_create_projection(...).';
    END IF;
    FOREACH f IN ARRAY array_remove(ARRAY[handler, reset_handler], NULL) LOOP
        IF NOT pg_catalog.has_function_privilege(caller::pg_catalog.oid, f::pg_catalog.oid, 'EXECUTE'::pg_catalog.text) THEN
            RAISE EXCEPTION 'event_store: % may not execute %', caller, f USING ERRCODE = '42501';
        END IF;
    END LOOP;
    IF (SELECT pronargs <> 1 OR proargtypes[0] <> (SELECT c.reltype FROM pg_catalog.pg_class c WHERE c.oid = _event_store.event_table()) OR prorettype <> 'void'::regtype OR proretset
          FROM pg_catalog.pg_proc WHERE oid = handler) THEN
        RAISE EXCEPTION 'event_store: handler % must take (event event_store) and return void', handler
            USING ERRCODE = '42P13';
    END IF;
    IF reset_handler IS NOT NULL AND (SELECT pronargs <> 0 OR prorettype <> 'void'::regtype FROM pg_catalog.pg_proc WHERE oid = reset_handler) THEN
        RAISE EXCEPTION 'event_store: reset_handler % must take no arguments and return void', reset_handler
            USING ERRCODE = '42P13';
    END IF;
    INSERT INTO _event_store.es_projection_state (name, handler, reset_handler, event_types, categories, owner)
    VALUES (es_create_projection.name, handler, reset_handler, event_types, categories, caller);
    PERFORM _event_store._es_wake_projections(true);
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'event_store: projection "%" already exists', es_create_projection.name USING ERRCODE = '42710';
END
$$;

CREATE FUNCTION @extschema@.es_pause_projection(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM _event_store._es_projection_for_update(name);
    UPDATE _event_store.es_projection_state p SET status = 'paused', updated_at = now() WHERE p.name = es_pause_projection.name;
END
$$;

-- Resuming a failed projection retries the event it failed on, then goes on.
CREATE FUNCTION @extschema@.es_resume_projection(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM _event_store._es_projection_for_update(name);
    UPDATE _event_store.es_projection_state p SET status = 'running', attempts = 0, retry_at = NULL, updated_at = now()
     WHERE p.name = es_resume_projection.name;
    PERFORM _event_store._es_wake_projections(true);
END
$$;

-- Calls the reset handler (as the projection's owner) and replays the whole history.
CREATE FUNCTION @extschema@.es_rebuild_projection(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p _event_store.es_projection_state := _event_store._es_projection_for_update(name);
BEGIN
    IF p.reset_handler IS NOT NULL THEN
        PERFORM _event_store._es_run_as(p.reset_handler, p.owner, NULL);
    END IF;
    UPDATE _event_store.es_projection_state s SET status = 'rebuilding', position = 0, attempts = 0, retry_at = NULL,
           last_error = NULL, last_error_position = NULL, updated_at = now()
     WHERE s.name = p.name;
    PERFORM _event_store._es_wake_projections(true);
END
$$;

CREATE FUNCTION @extschema@.es_drop_projection(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM _event_store._es_projection_for_update(name);
    DELETE FROM _event_store.es_projection_state p WHERE p.name = es_drop_projection.name;
END
$$;

-- Applies one batch of one projection, reading up to `p_horizon` (from _event_store._es_feed_horizon(),
-- computed before this call so that the batch's snapshot is newer), and returns how many
-- events it applied. The batch and
-- the new position commit with the caller's transaction; a failing handler rolls back the
-- whole batch (a subtransaction) and is retried with backoff, then marked failed.
CREATE FUNCTION _event_store._es_project_batch(p_name text, p_batch_size integer, p_horizon bigint) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p       _event_store.es_projection_state;
    r       record;
    applied integer := 0;
    at_pos  bigint;
    msg     text;
    state   text;
    timed_out boolean;
    -- A batch takes new events for one time slice at most, then commits what it applied and
    -- yields to the other projections: a slow handler delays only its own projection.
    cut_at  timestamptz := pg_catalog.clock_timestamp()
                           OPERATOR(pg_catalog.+) _event_store._es_setting_int('event_store.projection_time_slice') * interval '1 millisecond';
    cut     boolean := false;
BEGIN
    -- SKIP LOCKED: a worker and a manual es_run_projections() never apply one batch twice.
    SELECT * INTO p FROM _event_store.es_projection_state WHERE name = p_name FOR UPDATE SKIP LOCKED;
    IF NOT FOUND OR p.status IN ('paused', 'failed') OR p.retry_at > now() THEN
        RETURN 0;
    END IF;
    at_pos := p.position;
    BEGIN
        -- A handler that runs past event_store.projection_timeout is cancelled: it holds up
        -- only its own projection, which records the timeout as a failure.
        PERFORM _event_store._es_projection_timer(true);
        -- Handlers see events as their types' latest versions. Planned afresh for every batch
        -- (EXECUTE): a plan this long-lived backend kept could miss a TimescaleDB chunk another
        -- session created since, and the batch would move past its events.
        FOR r IN EXECUTE
            'SELECT l.global_position, _event_store._es_upcast(_event_store._es_event(l)) AS event
               FROM _event_store.log l
              WHERE l.global_position > $1 AND l.global_position <= $2
                AND ($3 IS NULL OR l.event_type = ANY ($3))
                AND ($4 IS NULL OR _event_store._es_category(l.stream_id) = ANY ($4))
              ORDER BY l.global_position
              LIMIT $5'
            USING p.position, p_horizon, p.event_types, p.categories, p_batch_size
        LOOP
            at_pos := r.global_position;
            PERFORM _event_store._es_run_as(p.handler, p.owner, r.event);
            applied := applied + 1;
            IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>=) cut_at THEN
                cut := true;
                EXIT;
            END IF;
        END LOOP;
        PERFORM _event_store._es_projection_timer(false);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
        timed_out := _event_store._es_projection_timer(false);
        IF state = '57014' THEN
            -- A cancel that is not the timer's (pg_cancel_backend, statement_timeout) cancels
            -- the whole pass, as it would any statement.
            IF NOT timed_out THEN
                RAISE;
            END IF;
            msg := format('the handler ran longer than event_store.projection_timeout (%s ms)',
                          _event_store._es_setting_int('event_store.projection_timeout'));
        END IF;
        UPDATE _event_store.es_projection_state s
           SET attempts = s.attempts + 1,
               status = CASE WHEN s.attempts + 1 >= _event_store._es_setting_int('event_store.projection_max_attempts') THEN 'failed' ELSE s.status END,
               retry_at = now() + least(interval '5 minutes',
                   _event_store._es_setting_int('event_store.projection_retry_delay') * interval '1 millisecond' * 2 ^ s.attempts),
               last_error = msg, last_error_position = at_pos, updated_at = now()
         WHERE s.name = p.name;
        RETURN 0;
    END;
    -- A short batch that ran out of events read everything matching up to the horizon.
    UPDATE _event_store.es_projection_state s
       SET position = CASE WHEN applied < p_batch_size AND NOT cut THEN greatest(p_horizon, p.position) ELSE at_pos END,
           status = CASE WHEN s.status = 'rebuilding' AND applied < p_batch_size AND NOT cut THEN 'running' ELSE s.status END,
           attempts = 0, retry_at = NULL, updated_at = now()
     WHERE s.name = p.name AND (applied > 0 OR s.position < p_horizon OR s.status = 'rebuilding');
    RETURN applied;
END
$$;

-- One batch of every projection that has work. Call it again while it returns > 0; the
-- background worker does exactly that. Without the worker, a scheduler can call it.
-- SECURITY DEFINER to keep the checkpoints; handlers still run as their projections' owners.
-- A superuser's pass runs every projection; anyone else's only those of roles it is a member
-- of (those it may manage): a pass left open in a transaction then holds no other role's rows.
CREATE FUNCTION @extschema@.es_run_projections(batch_size integer DEFAULT NULL) RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    -- One horizon (one pg_locks scan) for every projection of the pass.
    WITH horizon AS MATERIALIZED (SELECT _event_store._es_feed_horizon() AS h),
         caller AS MATERIALIZED (SELECT _event_store._es_calling_role_id() AS id)
    SELECT coalesce(sum(_event_store._es_project_batch(name, coalesce(batch_size, _event_store._es_setting_int('event_store.projection_batch_size')), h)), 0)::integer
      FROM (SELECT s.name FROM _event_store.es_projection_state s, caller
             WHERE (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) caller.id)
                OR pg_catalog.pg_has_role(caller.id, s.owner::pg_catalog.oid, 'MEMBER'::pg_catalog.text)
             ORDER BY s.name) p, horizon
$$;

-- The horizon once per query: a volatile call in the WHERE below would scan pg_locks per event.
-- `worker`: whether a worker serves this database (src/projections/pool.rs, _es_worker_state:
-- serving, idle, waiting, no worker slot, standby, not preloaded), and since when.
CREATE VIEW @extschema@.es_projections AS
WITH horizon AS MATERIALIZED (SELECT _event_store._es_feed_horizon() AS h)
SELECT p.name,
       CASE WHEN p.status = 'running' AND lag.events = 0 THEN 'caught up' ELSE p.status END AS status,
       p.position,
       lag.events AS lag_events,
       coalesce(extract(epoch FROM now() - lag.oldest), 0)::double precision AS lag_seconds,
       p.last_error,
       p.last_error_position,
       p.attempts,
       p.retry_at,
       p.owner,
       p.updated_at,
       w.state AS worker,
       w.since AS worker_since
  FROM _event_store.es_projection_state p,
       horizon,
       _event_store._es_worker_state() w,
       LATERAL (SELECT count(*) AS events, min(e.created_at) AS oldest
                  FROM @extschema@.event_store e
                 WHERE e.global_position > p.position AND e.global_position <= horizon.h
                   AND (p.event_types IS NULL OR e.event_type = ANY (p.event_types))
                   AND (p.categories IS NULL OR _event_store._es_category(e.stream_id) = ANY (p.categories))) lag;
