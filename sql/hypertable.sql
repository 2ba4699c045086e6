-- TimescaleDB: event_store becomes a hypertable on created_at when timescaledb is installed
-- in the database, at CREATE EXTENSION or later by calling es_enable_hypertable().
CREATE FUNCTION es_enable_hypertable(chunk_time_interval interval DEFAULT interval '7 days')
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ts_schema name;
BEGIN
    SELECT n.nspname INTO ts_schema
      FROM pg_catalog.pg_extension x JOIN pg_catalog.pg_namespace n ON n.oid = x.extnamespace
     WHERE x.extname = 'timescaledb';
    IF ts_schema IS NULL THEN
        RAISE EXCEPTION 'event_store: the timescaledb extension is not installed in this database'
            USING ERRCODE = '55000', HINT = 'Run CREATE EXTENSION timescaledb, then es_enable_hypertable().';
    END IF;
    IF EXISTS (SELECT FROM timescaledb_information.hypertables h
                WHERE format('%I.%I', h.hypertable_schema, h.hypertable_name)::regclass = '@extschema@.event_store'::regclass) THEN
        RETURN false;
    END IF;
    -- Migrating existing rows into chunks deletes them from the parent table. All of this
    -- is one transaction: no other session sees the table unguarded.
    PERFORM @extschema@._es_guard_event_store(false);
    EXECUTE format('SELECT %I.create_hypertable($1, $2, chunk_time_interval => $3, '
                   'create_default_indexes => false, migrate_data => true)', ts_schema)
        USING '@extschema@.event_store'::regclass, 'created_at'::name, chunk_time_interval;
    PERFORM @extschema@._es_guard_event_store(true);
    RETURN true;
END
$$;
COMMENT ON FUNCTION es_enable_hypertable(interval) IS
    'Turns event_store into a TimescaleDB hypertable on created_at, moving existing events into chunks. Returns false when it already is one.';

-- Not while pg_restore replays a dump (timescaledb_pre_restore() sets timescaledb.restoring):
-- the dump carries TimescaleDB's own catalog, which makes event_store a hypertable again.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'timescaledb')
       AND coalesce(pg_catalog.current_setting('timescaledb.restoring', true), 'off') <> 'on' THEN
        PERFORM @extschema@.es_enable_hypertable();
    END IF;
END
$$;
