-- Append-only, for every role including the owner. A superuser can still disable triggers;
-- es_verify's hash chains catch what that lets through.
-- No SET search_path and no function call: it only raises. Every name is qualified.
CREATE FUNCTION _es_refuse_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- TG_ARGV[0] names the guarded table: on a hypertable the trigger fires on chunks.
    RAISE EXCEPTION 'event_store: % of % is not allowed', TG_OP, TG_ARGV[0]
        USING ERRCODE = 'ES003',
              DETAIL = 'Events are append-only and es_streams is maintained by es_append.',
              HINT = 'Append a compensating event with es_append instead.';
END
$$;

-- es_streams' guard refuses every UPDATE, DELETE and TRUNCATE: appends advance its rows
-- directly, without SQL and so without triggers (src/registry.rs).
CREATE FUNCTION _es_guard_registry() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', '_es_guard_registry';

-- Installs or removes event_store's guards; only es_enable_hypertable removes them, for the
-- moment it moves rows into chunks (TimescaleDB cannot disable triggers on a hypertable).
CREATE FUNCTION _es_guard_event_store(enabled boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF enabled THEN
        CREATE TRIGGER event_store_append_only BEFORE UPDATE OR DELETE ON @extschema@.event_store
            FOR EACH ROW EXECUTE FUNCTION @extschema@._es_refuse_change('event_store');
        CREATE TRIGGER event_store_no_truncate BEFORE TRUNCATE ON @extschema@.event_store
            FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._es_refuse_change('event_store');
    ELSE
        DROP TRIGGER event_store_append_only ON @extschema@.event_store;
        DROP TRIGGER event_store_no_truncate ON @extschema@.event_store;
    END IF;
END
$$;
SELECT _es_guard_event_store(true);

CREATE TRIGGER es_streams_guard BEFORE UPDATE OR DELETE ON es_streams
    FOR EACH ROW EXECUTE FUNCTION _es_guard_registry();
CREATE TRIGGER es_streams_no_truncate BEFORE TRUNCATE ON es_streams
    FOR EACH STATEMENT EXECUTE FUNCTION _es_guard_registry();
