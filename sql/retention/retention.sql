-- Retention: es_apply_retention removes the events older than an interval, the only way any
-- role removes events. Each stream it cuts keeps an anchor, so that es_verify and
-- es_verify_digest check its chain from the first kept event, and a snapshot of its state at
-- the cut, so that its state functions still fold. Recorded in event_store-retention.

-- Where retention cut each stream: the first kept version, and the hash, position and time
-- of the last removed event, which the first kept one chains to.
CREATE TABLE _event_store.es_anchors (
    stream_id     text        PRIMARY KEY,
    first_version bigint      NOT NULL CHECK (first_version > 1),
    prev_hash     bytea       NOT NULL,
    prev_position bigint      NOT NULL,
    prev_at       timestamptz NOT NULL,
    cut_at        timestamptz NOT NULL
);
COMMENT ON TABLE _event_store.es_anchors IS 'Where es_apply_retention cut each stream: es_verify checks its chain from here.';
SELECT pg_catalog.pg_extension_config_dump('_event_store.es_anchors', '');
CREATE VIEW @extschema@.es_anchors WITH (security_invoker = true) AS SELECT * FROM _event_store.es_anchors;

-- For folds that read a stream from its first event (custom reducers, which have no
-- snapshots): refuses a stream retention cut, whose first events are gone.
CREATE FUNCTION _event_store._es_check_uncut(stream_id text) RETURNS boolean
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    first_kept bigint;
BEGIN
    SELECT a.first_version INTO first_kept FROM _event_store.es_anchors a
     WHERE a.stream_id = _es_check_uncut.stream_id;
    IF FOUND THEN
        RAISE EXCEPTION 'event_store: the state of % needs events that retention removed', _es_check_uncut.stream_id
            USING ERRCODE = 'ES008',
                  DETAIL = pg_catalog.format('Retention removed versions 1 to %s of the stream; a custom reducer has no snapshot that stands for them.', first_kept - 1);
    END IF;
    RETURN true;
END
$$;

-- The policy the projection worker applies (es_set_retention); one row at most.
CREATE TABLE _event_store.es_retention (
    one         boolean     PRIMARY KEY DEFAULT true CHECK (one),
    older_than  interval    NOT NULL,
    set_at      timestamptz NOT NULL DEFAULT now(),
    set_by      text        NOT NULL,
    next_run_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE _event_store.es_retention IS 'The retention policy set by es_set_retention, applied by the projection worker.';
SELECT pg_catalog.pg_extension_config_dump('_event_store.es_retention', '');
CREATE VIEW @extschema@.es_retention WITH (security_invoker = true) AS SELECT * FROM _event_store.es_retention;

-- The last event before `cut_before` of every stream that has one: where retention cuts it.
CREATE FUNCTION _event_store._es_retention_cut(cut_before timestamptz)
RETURNS TABLE (stream_id text, stream_version bigint, hash bytea, global_position bigint, created_at timestamptz)
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
        SELECT DISTINCT ON (l.stream_id) l.stream_id, l.stream_version, l.hash, l.global_position, l.created_at
          FROM _event_store.log l WHERE l.created_at < _es_retention_cut.cut_before
         ORDER BY l.stream_id, l.stream_version DESC;
END
$$;

CREATE FUNCTION _event_store._es_apply_retention(older_than interval, batch_size integer)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz;
    cut_before timestamptz;
    chunk text;
    hypertable boolean := false;
    complete boolean := true;
    removed bigint := 0;
    deleted bigint;
    streams bigint := 0;
    doc jsonb;
BEGIN
    IF older_than IS NULL OR batch_size IS NULL THEN
        RAISE EXCEPTION 'event_store: older_than and batch_size must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF older_than < interval '0' OR batch_size < 1 THEN
        RAISE EXCEPTION 'event_store: older_than must not be negative and batch_size must be positive'
            USING ERRCODE = '22023';
    END IF;
    -- One run at a time: two would anchor the same streams twice.
    LOCK TABLE _event_store.es_anchors IN SHARE ROW EXCLUSIVE MODE;
    cutoff := now() - older_than;
    hypertable := _event_store._es_is_hypertable();
    IF hypertable THEN
        -- Whole chunks: those that end by the cutoff. Chunks do not overlap, so the events
        -- before the latest such end are exactly theirs.
        SELECT max(c.range_end) INTO cut_before
          FROM timescaledb_information.chunks c, pg_catalog.pg_class t, pg_catalog.pg_namespace n
         WHERE t.oid = _event_store.event_table() AND n.oid = t.relnamespace
           AND c.hypertable_schema = n.nspname AND c.hypertable_name = t.relname
           AND c.range_end <= cutoff;
    ELSE
        -- In batches: the oldest batch_size events (more where they share an instant).
        SELECT e.created_at INTO cut_before FROM _event_store.log e
         WHERE e.created_at < cutoff ORDER BY e.created_at OFFSET batch_size LIMIT 1;
        IF cut_before IS NULL THEN
            cut_before := cutoff;
        ELSIF NOT EXISTS (SELECT FROM _event_store.log e WHERE e.created_at < cut_before) THEN
            cut_before := cut_before + interval '1 microsecond';
        END IF;
    END IF;
    IF cut_before IS NOT NULL THEN
        -- Each cut stream: a snapshot of its state at the cut, taken while every fold can still
        -- read the events (before any anchor), then the anchor; snapshots of removed versions
        -- go with them. One statement each: a loop would plan the folds' anchor probe once.
        PERFORM count(_event_store._es_snapshot_at(c.stream_id, c.stream_version, c.created_at))
           FROM _event_store._es_retention_cut(cut_before) c;
        DELETE FROM _event_store.es_snapshots s USING _event_store._es_retention_cut(cut_before) c
         WHERE s.stream_id = c.stream_id AND s.stream_version < c.stream_version;
        INSERT INTO _event_store.es_anchors AS a
               (stream_id, first_version, prev_hash, prev_position, prev_at, cut_at)
        SELECT c.stream_id, c.stream_version + 1, c.hash, c.global_position, c.created_at, now()
          FROM _event_store._es_retention_cut(cut_before) c
        ON CONFLICT (stream_id) DO UPDATE
           SET first_version = EXCLUDED.first_version, prev_hash = EXCLUDED.prev_hash,
               prev_position = EXCLUDED.prev_position, prev_at = EXCLUDED.prev_at,
               cut_at = EXCLUDED.cut_at;
        GET DIAGNOSTICS streams = ROW_COUNT;
        IF hypertable THEN
            SELECT count(*) INTO removed FROM _event_store.log e WHERE e.created_at < cut_before;
            -- Dropped as tables (TimescaleDB removes them from its catalog), not through
            -- drop_chunks: that is called by name in TimescaleDB's schema, usually public,
            -- where a database owner could add a better-matching drop_chunks.
            FOR chunk IN
                SELECT pg_catalog.format('%I.%I', c.chunk_schema, c.chunk_name)
                  FROM timescaledb_information.chunks c, pg_catalog.pg_class t, pg_catalog.pg_namespace n
                 WHERE t.oid = _event_store.event_table() AND n.oid = t.relnamespace
                   AND c.hypertable_schema = n.nspname AND c.hypertable_name = t.relname
                   AND c.range_end <= cut_before
            LOOP
                EXECUTE pg_catalog.format('DROP TABLE %s', chunk);
            END LOOP;
        END IF;
        -- The append-only trigger refuses every DELETE; replica mode skips it for this one
        -- statement of this transaction (the function's own GUC level undoes it on error).
        PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
        DELETE FROM _event_store.log e WHERE e.created_at < cut_before;
        GET DIAGNOSTICS deleted = ROW_COUNT;
        PERFORM pg_catalog.set_config('session_replication_role', 'origin', true);
        removed := removed + deleted;
    END IF;
    IF NOT hypertable THEN
        complete := NOT EXISTS (SELECT FROM _event_store.log e WHERE e.created_at < cutoff);
    END IF;
    doc := pg_catalog.jsonb_build_object(
        'older_than', older_than::text,
        'cut_before', cut_before,
        'events_removed', removed,
        'streams_cut', streams,
        'whole_chunks', hypertable,
        'complete', complete);
    IF removed > 0 THEN
        PERFORM _event_store._es_record('retention', 'RetentionApplied', doc);
    END IF;
    RETURN doc;
END
$$;
CREATE FUNCTION @extschema@.es_apply_retention(older_than interval, batch_size integer DEFAULT 100000)
RETURNS jsonb
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN _event_store._es_apply_retention(es_apply_retention.older_than, es_apply_retention.batch_size);
COMMENT ON FUNCTION @extschema@.es_apply_retention(interval, integer) IS
    'Removes the events older than older_than (whole chunks on a hypertable, at most batch_size per call otherwise), anchoring each cut stream; recorded in event_store-retention.';

CREATE FUNCTION @extschema@.es_set_retention(older_than interval) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF es_set_retention.older_than IS NULL THEN
        DELETE FROM _event_store.es_retention;
        RETURN;
    END IF;
    IF es_set_retention.older_than < interval '0' THEN
        RAISE EXCEPTION 'event_store: older_than must not be negative' USING ERRCODE = '22023';
    END IF;
    INSERT INTO _event_store.es_retention (older_than, set_by)
    VALUES (es_set_retention.older_than, _event_store._es_calling_role())
    ON CONFLICT (one) DO UPDATE
        SET older_than = EXCLUDED.older_than, set_at = now(), set_by = EXCLUDED.set_by, next_run_at = now();
    PERFORM _event_store._es_wake_projections(true);
END
$$;
COMMENT ON FUNCTION @extschema@.es_set_retention(interval) IS
    'Sets the retention policy the projection worker applies hourly (NULL: none).';

-- For the projection worker: applies the policy when due; true when more is due at once (a
-- batch left events older than the policy).
CREATE FUNCTION _event_store._es_apply_retention_policy() RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    policy _event_store.es_retention;
    complete boolean;
BEGIN
    SELECT * INTO policy FROM _event_store.es_retention WHERE next_run_at <= now() FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    complete := (_event_store._es_apply_retention(policy.older_than, 100000) ->> 'complete')::boolean;
    UPDATE _event_store.es_retention
       SET next_run_at = CASE WHEN complete THEN now() + interval '1 hour' ELSE now() END;
    RETURN NOT complete;
END
$$;
