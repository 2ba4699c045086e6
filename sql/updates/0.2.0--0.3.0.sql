-- event_store 0.2.0 -> 0.3.0: the internals move out of the extension's schema into
-- _event_store, where only the extension's owner creates objects (docs/security.md).
-- This part holds only what a fresh install does differently: the schema, and moving the
-- existing tables, sequence and internal functions into it. scripts/update-script.py appends
-- every function, view, comment and grant of this version's install script (the same
-- definitions a fresh install runs), so nothing is written twice; tests/upgrade.rs proves the
-- result equals a fresh install.

-- Fails when someone made a schema of that name first, as CREATE EXTENSION does.
CREATE SCHEMA _event_store;

-- Names resolve in pg_catalog alone for the rest of the update: nothing anyone created in
-- the extension's schema or in public is picked up.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

ALTER SEQUENCE @extschema@.es_global_position_seq SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_streams SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_event_ids SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_reducers SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_snapshots SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_projection_state SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_checkpoints SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_feed_published SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_catalog_types SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_upcasts SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_catalog_modes SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_verifications SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_digests SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_digest_heads SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_anchors SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_retention SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_subject_keys SET SCHEMA _event_store;

-- 0.3.0 claims the ids the store generates too (no id serves two events): those of the events
-- already stored are claimed here, so that no later append can take one.
INSERT INTO _event_store.es_event_ids SELECT DISTINCT e.event_id FROM @extschema@.event_store e
    ON CONFLICT DO NOTHING;

-- Every internal function and aggregate of the extension (named _es_*), by oid.
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.oid::pg_catalog.regprocedure AS sig, p.prokind
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) d.objid
         WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass::pg_catalog.oid
           AND d.refobjid OPERATOR(pg_catalog.=) (SELECT e.oid FROM pg_catalog.pg_extension e
                                                   WHERE e.extname OPERATOR(pg_catalog.=) 'event_store'::name)
           AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass::pg_catalog.oid
           AND d.deptype OPERATOR(pg_catalog.=) 'e'::"char"
           AND pg_catalog.starts_with(p.proname::text, '_es_')
    LOOP
        EXECUTE pg_catalog.format('ALTER %s %s SET SCHEMA _event_store',
                                  CASE f.prokind WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END, f.sig);
    END LOOP;
END
$$;

-- Plain functions now, SQL-standard bodies or C in 0.3.0 with other attributes: replaced below.
