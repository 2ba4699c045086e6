-- Append-only, for every role including the owner. A superuser can still disable triggers;
-- es_verify's hash chains catch what that lets through.
-- No SET search_path: it fires on every append's registry update, and a per-call setting is
-- costly there. Every name is qualified instead.
CREATE FUNCTION _es_refuse_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- TG_ARGV[0] names the guarded table: on a hypertable the trigger fires on chunks.
    IF TG_OP = 'UPDATE' AND TG_ARGV[0] = 'es_streams' AND @extschema@._es_registry_write_allowed() THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'event_store: % of % is not allowed', TG_OP, TG_ARGV[0]
        USING ERRCODE = 'ES003',
              DETAIL = 'Events are append-only and es_streams is maintained by es_append.',
              HINT = 'Append a compensating event with es_append instead.';
END
$$;

-- Installs or removes event_store's guards; only es_enable_hypertable removes them, for the
-- moment it moves rows into chunks (TimescaleDB cannot disable triggers on a hypertable).
CREATE FUNCTION _es_guard_event_store(enabled boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
BEGIN
    IF enabled THEN
        CREATE TRIGGER event_store_append_only BEFORE UPDATE OR DELETE ON event_store
            FOR EACH ROW EXECUTE FUNCTION _es_refuse_change('event_store');
        CREATE TRIGGER event_store_no_truncate BEFORE TRUNCATE ON event_store
            FOR EACH STATEMENT EXECUTE FUNCTION _es_refuse_change('event_store');
    ELSE
        DROP TRIGGER event_store_append_only ON event_store;
        DROP TRIGGER event_store_no_truncate ON event_store;
    END IF;
END
$$;
SELECT _es_guard_event_store(true);

CREATE TRIGGER es_streams_guard BEFORE UPDATE OR DELETE ON es_streams
    FOR EACH ROW EXECUTE FUNCTION _es_refuse_change('es_streams');
CREATE TRIGGER es_streams_no_truncate BEFORE TRUNCATE ON es_streams
    FOR EACH STATEMENT EXECUTE FUNCTION _es_refuse_change('es_streams');
