-- Reducers, snapshots, and es_fold: the state functions' machinery (src/fold/time_travel.rs,
-- core/src/fold/rules.rs, src/fold/aggregate.rs) as far as it is tables and SQL.

-- How events change state, per category and event type ('*' = any). Rules are checked by
-- es_define_reducer; folding applies the most specific one, or merges the event data.
CREATE TABLE _event_store.es_reducers (
    category   text        NOT NULL,
    event_type text        NOT NULL,
    rule       jsonb       NOT NULL,
    defined_at timestamptz NOT NULL DEFAULT now(),
    defined_by text        NOT NULL,
    PRIMARY KEY (category, event_type)
);
COMMENT ON TABLE _event_store.es_reducers IS 'Declarative reducers: change with es_define_reducer and es_drop_reducer.';
SELECT pg_catalog.pg_extension_config_dump('_event_store.es_reducers', '');
CREATE VIEW @extschema@.es_reducers WITH (security_invoker = true) AS SELECT * FROM _event_store.es_reducers;

-- Derived data: a stream's state after stream_version under the reducers whose fingerprint
-- is `reducers`. Never dumped, safe to delete; only ever a shortcut.
CREATE TABLE _event_store.es_snapshots (
    stream_id      text        NOT NULL,
    reducers       bytea       NOT NULL,
    stream_version bigint      NOT NULL,
    last_at        timestamptz NOT NULL,
    state          jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, reducers, stream_version)
);
-- The latest snapshot at or before an instant, and the first after it, in one probe each
-- (a stream's snapshot times grow with its versions).
CREATE INDEX es_snapshots_time_idx ON _event_store.es_snapshots (stream_id, reducers, last_at, stream_version);
COMMENT ON TABLE _event_store.es_snapshots IS 'Snapshots of stream states (derived data, safe to delete with es_drop_snapshots).';
-- A snapshot folds every event of its stream, those a row level security policy hides from
-- a reader included: readers see snapshots only where no policy filters event_store for them
-- (the state functions then ignore snapshots anyway). The owner, who takes them, is exempt.
ALTER TABLE _event_store.es_snapshots ENABLE ROW LEVEL SECURITY;
CREATE POLICY es_snapshots_unfiltered ON _event_store.es_snapshots FOR SELECT
    USING (NOT pg_catalog.row_security_active('@extschema@.event_store'::pg_catalog.regclass));
CREATE VIEW @extschema@.es_snapshots WITH (security_invoker = true) AS SELECT * FROM _event_store.es_snapshots;

CREATE FUNCTION @extschema@.es_define_reducer(category text, event_type text, rule jsonb)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM _event_store._es_check_reducer($1, $2, $3);
    INSERT INTO _event_store.es_reducers (category, event_type, rule, defined_by)
    VALUES ($1, $2, $3, _event_store._es_calling_role())
    ON CONFLICT (category, event_type) DO UPDATE
        SET rule = EXCLUDED.rule, defined_at = now(), defined_by = EXCLUDED.defined_by;
    -- Snapshots under the old rules can never be used again.
    DELETE FROM _event_store.es_snapshots s WHERE $1 = '*' OR _event_store._es_category(s.stream_id) = $1;
END
$$;
COMMENT ON FUNCTION @extschema@.es_define_reducer(text, text, jsonb) IS
    'Defines or replaces how events of a type change the state of streams of a category (''*'' = any).';

CREATE FUNCTION @extschema@.es_drop_reducer(category text, event_type text)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    DELETE FROM _event_store.es_reducers r WHERE r.category = $1 AND r.event_type = $2;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM _event_store.es_snapshots s WHERE $1 = '*' OR _event_store._es_category(s.stream_id) = $1;
    RETURN true;
END
$$;

CREATE FUNCTION @extschema@.es_snapshot(stream_id text)
RETURNS bigint
LANGUAGE sql
VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT _event_store._es_take_snapshot($1) $$;
COMMENT ON FUNCTION @extschema@.es_snapshot(text) IS
    'Stores a snapshot of the stream''s current state; returns its version (NULL for a stream without events).';

CREATE FUNCTION @extschema@.es_drop_snapshots(stream_id text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (DELETE FROM _event_store.es_snapshots s WHERE $1 IS NULL OR s.stream_id = $1 RETURNING 1)
    SELECT count(*) FROM gone
$$;
COMMENT ON FUNCTION @extschema@.es_drop_snapshots(text) IS
    'Deletes the snapshots of one stream, or all of them for NULL; answers do not change.';

-- The state functions (src/fold/time_travel.rs): the stream folded by its category's reducers, from the
-- latest snapshot that applies.
CREATE FUNCTION @extschema@.es_state(stream_id text) RETURNS jsonb
    LANGUAGE c STRICT STABLE PARALLEL SAFE SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_state_wrapper';
CREATE FUNCTION @extschema@.es_state_at(stream_id text, at timestamptz) RETURNS jsonb
    LANGUAGE c STRICT STABLE PARALLEL SAFE SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_state_at_wrapper';
CREATE FUNCTION @extschema@.es_state_at_version(stream_id text, version bigint) RETURNS jsonb
    LANGUAGE c STRICT STABLE PARALLEL SAFE SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_state_at_version_wrapper';

-- What changed in a stream's state between two instants, path by path (src/fold/diff.rs).
CREATE FUNCTION @extschema@.es_diff(stream_id text, "from" timestamptz, "to" timestamptz)
RETURNS TABLE (stream_version bigint, event_id uuid, event_type text, created_at timestamptz,
               correlation_id text, path text, before jsonb, after jsonb)
    LANGUAGE c STRICT STABLE PARALLEL SAFE SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_diff_wrapper';

-- The events a fold reads through SQL (src/fold/time_travel.rs, when row level security or column
-- privileges rule out reading the table directly), and those es_diff reads: only the columns
-- each needs, so a role granted just those columns may call them. SQL-standard bodies, bound
-- when created and inlined into the caller's statement; NULL bounds are no bounds.
CREATE FUNCTION _event_store._es_fold_rows(stream_id text, after_version bigint, upto_version bigint,
                                           from_at timestamptz, upto_at timestamptz)
RETURNS TABLE (event_type text, event_version integer, event_data jsonb)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT e.event_type, e.event_version, e.event_data
      FROM @extschema@.event_store e
     WHERE e.stream_id OPERATOR(pg_catalog.=) _es_fold_rows.stream_id
       AND e.stream_version OPERATOR(pg_catalog.>) COALESCE(_es_fold_rows.after_version, 0::bigint)
       AND e.stream_version OPERATOR(pg_catalog.<=) COALESCE(_es_fold_rows.upto_version, 9223372036854775807::bigint)
       AND e.created_at OPERATOR(pg_catalog.>=) COALESCE(_es_fold_rows.from_at, '-infinity'::timestamptz)
       AND e.created_at OPERATOR(pg_catalog.<=) COALESCE(_es_fold_rows.upto_at, 'infinity'::timestamptz)
     ORDER BY e.stream_version;
END;

CREATE FUNCTION _event_store._es_diff_rows(stream_id text, after_at timestamptz, upto_at timestamptz,
                                           after_version bigint)
RETURNS TABLE (event_type text, event_data jsonb, stream_version bigint, created_at timestamptz,
               event_id uuid, correlation_id text, event_version integer)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT e.event_type, e.event_data, e.stream_version, e.created_at, e.event_id,
           e.metadata OPERATOR(pg_catalog.->>) 'correlationId'::text, e.event_version
      FROM @extschema@.event_store e
     WHERE e.stream_id OPERATOR(pg_catalog.=) _es_diff_rows.stream_id
       AND e.created_at OPERATOR(pg_catalog.>) _es_diff_rows.after_at
       AND e.created_at OPERATOR(pg_catalog.<=) _es_diff_rows.upto_at
       AND e.stream_version OPERATOR(pg_catalog.>) _es_diff_rows.after_version
     ORDER BY e.stream_version;
END;

-- es_fold(e ORDER BY e.stream_version): the same fold as es_state_at, over any rows.
CREATE FUNCTION _event_store._es_fold_step(internal, @extschema@.event_store) RETURNS internal
    LANGUAGE c STABLE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', '_es_fold_step';
CREATE FUNCTION _event_store._es_fold_final(internal) RETURNS jsonb
    LANGUAGE c STABLE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', '_es_fold_final';
CREATE AGGREGATE @extschema@.es_fold(@extschema@.event_store) (
    SFUNC = _event_store._es_fold_step,
    STYPE = internal,
    FINALFUNC = _event_store._es_fold_final,
    FINALFUNC_MODIFY = READ_ONLY
);

-- The state functions' fold (src/fold/time_travel.rs): over columns, from a snapshot's state (NULL for
-- none), with the reducers of the stream's category.
CREATE FUNCTION _event_store._es_fold_events_step(internal, text, integer, jsonb, jsonb, text) RETURNS internal
    LANGUAGE c STABLE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', '_es_fold_events_step';
CREATE AGGREGATE _event_store._es_fold_events(event_type text, event_version integer, event_data jsonb, start jsonb, stream_id text) (
    SFUNC = _event_store._es_fold_events_step,
    STYPE = internal,
    FINALFUNC = _event_store._es_fold_final,
    FINALFUNC_MODIFY = READ_ONLY
);

-- es_fold(e, 'my_reducer(jsonb, event_store)' ORDER BY e.stream_version): a custom reducer.
CREATE FUNCTION _event_store._es_fold_with(jsonb, @extschema@.event_store, regprocedure) RETURNS jsonb
    LANGUAGE c STABLE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', '_es_fold_with';
CREATE AGGREGATE @extschema@.es_fold(@extschema@.event_store, regprocedure) (
    SFUNC = _event_store._es_fold_with,
    STYPE = jsonb
);

-- The state functions with a custom reducer: the events up to `version` and up to `at`.
-- Bounded by the stream's first and last times, so a hypertable skips chunks the stream has
-- no events in. SQL-standard bodies, bound when created: no search_path is involved, and the
-- reducer runs under its caller's. A custom reducer has no snapshots: a stream retention cut
-- cannot be folded with one (ES008).
CREATE FUNCTION _event_store._es_state_with(stream_id text, at timestamptz, version bigint, reducer regprocedure)
RETURNS jsonb
LANGUAGE sql STABLE STRICT
BEGIN ATOMIC
    SELECT @extschema@.es_fold(e, _es_state_with.reducer ORDER BY e.stream_version)
      FROM @extschema@.event_store e
     WHERE _event_store._es_check_uncut(_es_state_with.stream_id)
       AND e.stream_id OPERATOR(pg_catalog.=) _es_state_with.stream_id
       AND e.stream_version OPERATOR(pg_catalog.<=) _es_state_with.version
       AND e.created_at OPERATOR(pg_catalog.>=) (SELECT s.first_at FROM _event_store.es_streams s
                                                  WHERE s.stream_id OPERATOR(pg_catalog.=) _es_state_with.stream_id)
       AND e.created_at OPERATOR(pg_catalog.<=) LEAST(_es_state_with.at,
               (SELECT s.last_at FROM _event_store.es_streams s WHERE s.stream_id OPERATOR(pg_catalog.=) _es_state_with.stream_id));
END;

CREATE FUNCTION @extschema@.es_state_at(stream_id text, at timestamptz, reducer regprocedure)
RETURNS jsonb
LANGUAGE sql STABLE STRICT
RETURN _event_store._es_state_with(es_state_at.stream_id, es_state_at.at, 9223372036854775807::bigint, es_state_at.reducer);

CREATE FUNCTION @extschema@.es_state_at_version(stream_id text, version bigint, reducer regprocedure)
RETURNS jsonb
LANGUAGE sql STABLE STRICT
RETURN _event_store._es_state_with(es_state_at_version.stream_id, 'infinity'::timestamptz, es_state_at_version.version, es_state_at_version.reducer);

CREATE FUNCTION @extschema@.es_state(stream_id text, reducer regprocedure)
RETURNS jsonb
LANGUAGE sql STABLE STRICT
RETURN _event_store._es_state_with(es_state.stream_id, 'infinity'::timestamptz, 9223372036854775807::bigint, es_state.reducer);
