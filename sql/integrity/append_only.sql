-- Append-only, for every role including the owner. A superuser can still disable triggers;
-- es_verify's hash chains catch what that lets through.
-- No SET search_path and no function call: it only raises. Every name is qualified.
CREATE FUNCTION _event_store._es_refuse_change() RETURNS trigger
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
-- directly, without SQL and so without triggers (src/append/registry.rs).
CREATE FUNCTION _event_store._es_guard_registry() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', '_es_guard_registry';

-- event_store itself, by oid (a SQL-standard body is bound when created): for the statements
-- that must name the table itself, such as triggers and TimescaleDB's functions.
CREATE FUNCTION _event_store.event_table() RETURNS pg_catalog.regclass
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN '@extschema@.event_store'::pg_catalog.regclass;

-- Installs or removes event_store's guards; only es_enable_hypertable removes them, for the
-- moment it moves rows into chunks (TimescaleDB cannot disable triggers on a hypertable).
CREATE FUNCTION _event_store._es_guard_event_store(enabled boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF enabled THEN
        EXECUTE pg_catalog.format('CREATE TRIGGER event_store_append_only BEFORE UPDATE OR DELETE ON %s '
                                  'FOR EACH ROW EXECUTE FUNCTION _event_store._es_refuse_change(''event_store'')',
                                  _event_store.event_table());
        EXECUTE pg_catalog.format('CREATE TRIGGER event_store_no_truncate BEFORE TRUNCATE ON %s '
                                  'FOR EACH STATEMENT EXECUTE FUNCTION _event_store._es_refuse_change(''event_store'')',
                                  _event_store.event_table());
    ELSE
        EXECUTE pg_catalog.format('DROP TRIGGER event_store_append_only ON %s', _event_store.event_table());
        EXECUTE pg_catalog.format('DROP TRIGGER event_store_no_truncate ON %s', _event_store.event_table());
    END IF;
END
$$;
SELECT _event_store._es_guard_event_store(true);

CREATE TRIGGER es_streams_guard BEFORE UPDATE OR DELETE ON _event_store.es_streams
    FOR EACH ROW EXECUTE FUNCTION _event_store._es_guard_registry();
CREATE TRIGGER es_streams_no_truncate BEFORE TRUNCATE ON _event_store.es_streams
    FOR EACH STATEMENT EXECUTE FUNCTION _event_store._es_guard_registry();
