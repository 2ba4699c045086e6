-- TimescaleDB: event_store becomes a hypertable on created_at when timescaledb is installed
-- in the database, at CREATE EXTENSION or later by calling es_enable_hypertable().

-- TimescaleDB's schema, from its pg_extension row (never a name someone could shadow); NULL
-- when it is not installed. Its functions are called there, with arguments of their exact
-- types: a better-matching create_hypertable or drop_chunks elsewhere is never picked up.
CREATE FUNCTION _event_store._es_timescaledb_schema() RETURNS name
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT n.nspname FROM pg_catalog.pg_extension x
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) x.extnamespace
     WHERE x.extname OPERATOR(pg_catalog.=) 'timescaledb'::name;
END;

-- Whether event_store is a hypertable, from TimescaleDB's catalog by oid.
CREATE FUNCTION _event_store._es_is_hypertable() RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ts_schema name := _event_store._es_timescaledb_schema();
    found boolean;
BEGIN
    IF ts_schema IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT FROM _timescaledb_catalog.hypertable h
                             WHERE pg_catalog.format(''%I.%I'', h.schema_name, h.table_name)::pg_catalog.regclass
                                   OPERATOR(pg_catalog.=) $1)'
       INTO found USING _event_store.event_table();
    RETURN found;
END
$$;

CREATE FUNCTION @extschema@.es_enable_hypertable(chunk_time_interval interval DEFAULT interval '7 days')
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ts_schema name := _event_store._es_timescaledb_schema();
BEGIN
    IF ts_schema IS NULL THEN
        RAISE EXCEPTION 'event_store: the timescaledb extension is not installed in this database'
            USING ERRCODE = '55000', HINT = 'Run CREATE EXTENSION timescaledb, then es_enable_hypertable().';
    END IF;
    IF _event_store._es_is_hypertable() THEN
        RETURN false;
    END IF;
    -- create_hypertable is called by name in TimescaleDB's schema, usually public, where a
    -- database owner may create functions: a better-matching create_hypertable there would run
    -- as the caller (a superuser). None may exist, and none may appear until this transaction
    -- ends (creating or renaming a function writes pg_proc, which this lock holds still).
    LOCK TABLE pg_catalog.pg_proc IN SHARE MODE;
    IF EXISTS (SELECT FROM pg_catalog.pg_proc p
                WHERE p.proname = 'create_hypertable'
                  AND p.pronamespace = (SELECT x.extnamespace FROM pg_catalog.pg_extension x WHERE x.extname = 'timescaledb')
                  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension x ON x.oid = d.refobjid
                                   WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                                     AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
                                     AND x.extname = 'timescaledb')) THEN
        RAISE EXCEPTION 'event_store: schema % has a create_hypertable that is not TimescaleDB''s', ts_schema
            USING ERRCODE = '42723',
                  HINT = 'Drop it: event_store calls only TimescaleDB''s own create_hypertable.';
    END IF;
    -- Migrating existing rows into chunks deletes them from the parent table. All of this
    -- is one transaction: no other session sees the table unguarded.
    PERFORM _event_store._es_guard_event_store(false);
    EXECUTE pg_catalog.format('SELECT %I.create_hypertable($1, $2, chunk_time_interval => $3, '
                              'create_default_indexes => $4, migrate_data => $5)', ts_schema)
        USING _event_store.event_table(), 'created_at'::name, chunk_time_interval, false, true;
    PERFORM _event_store._es_guard_event_store(true);
    RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@.es_enable_hypertable(interval) IS
    'Turns event_store into a TimescaleDB hypertable on created_at, moving existing events into chunks. Returns false when it already is one.';

-- Install only (an update keeps the table as it is). Not while pg_restore replays a dump (timescaledb_pre_restore() sets timescaledb.restoring):
-- the dump carries TimescaleDB's own catalog, which makes event_store a hypertable again.
DO $$
BEGIN
    IF _event_store._es_timescaledb_schema() IS NOT NULL
       AND COALESCE(pg_catalog.current_setting('timescaledb.restoring', true), 'off') OPERATOR(pg_catalog.<>) 'on' THEN
        PERFORM @extschema@.es_enable_hypertable();
    END IF;
END
$$;
