-- Least privilege: PUBLIC gets nothing of the extension, readers read, writers append, and
-- nobody but the owner writes tables directly. Every function and relation that belongs to the
-- extension (pg_depend) loses PUBLIC's rights here, so a new one cannot slip through; each
-- grant below is on purpose. tests/security.rs checks the result from pg_depend too.
DO $$
DECLARE
    ext oid := (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'event_store');
    obj text;
BEGIN
    FOR obj IN
        SELECT pg_catalog.format('FUNCTION %s', d.objid::pg_catalog.regprocedure)
          FROM pg_catalog.pg_depend d
         WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.refobjid = ext
           AND d.deptype = 'e' AND d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
        UNION ALL
        SELECT pg_catalog.format(CASE c.relkind WHEN 'S' THEN 'SEQUENCE %s' ELSE 'TABLE %s' END, d.objid::pg_catalog.regclass)
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid = d.objid
         WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.refobjid = ext
           AND d.deptype = 'e' AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM PUBLIC', obj);
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA @extschema@ TO event_store_reader;
-- Snapshots hold nothing a reader cannot fold from event_store; under row level security
-- their policy hides them (sql/fold.sql).
GRANT SELECT ON event_store, es_streams, es_reducers, es_snapshots, es_projection_state, es_projections,
                es_feed_in_flight, es_catalog_types, es_upcasts, es_catalog_modes, es_event_types,
                es_checkpoints, es_metrics, es_verifications, es_feed_published, es_digests,
                es_digest_heads, es_anchors, es_retention
   TO event_store_reader;
-- The feed's horizon reads how far positions have been handed out.
GRANT SELECT ON SEQUENCE es_global_position_seq TO event_store_reader;

GRANT EXECUTE ON FUNCTION
    es_uuidv7(),
    _es_category(text),
    es_stream(text, bigint, bigint, boolean),
    es_upcast(event_store),
    -- The reads reveal personal data as the reader may see it.
    _es_reveal(event_store),
    es_catalog(),
    es_stream_version(text),
    es_state(text),
    es_state_at(text, timestamptz),
    es_state_at_version(text, bigint),
    es_verify(text, boolean),
    -- An auditor takes digests and checks them against the store.
    es_digest(),
    es_verify_digest(jsonb),
    -- The feed reads run as the reader (row level security applies) and call these.
    _es_feed_horizon(),
    es_feed_horizon(),
    -- A consumer saves its position with its effects; it may only move its own.
    es_save_checkpoint(text, bigint),
    es_checkpoint(text),
    es_metrics_prometheus(),
    _es_feed_holders(),
    _es_check_feed_isolation(),
    _es_check_feed_read(integer, integer, integer),
    _es_consumer_group_member(text, integer),
    _es_read_feed(bigint, integer, text[], text, integer, integer, boolean),
    es_read_all(bigint, integer, text[], boolean),
    es_read_category(text, bigint, integer, integer, integer, boolean),
    es_create_projection(text, regprocedure, text[], text[], regprocedure),
    es_pause_projection(text),
    es_resume_projection(text),
    es_rebuild_projection(text),
    es_drop_projection(text),
    es_run_projections(integer),
    -- es_fold and the state functions run as the caller and use these aggregates.
    _es_fold_step(internal, event_store),
    _es_fold_final(internal),
    _es_fold_events_step(internal, text, integer, jsonb, jsonb, text),
    _es_fold_events(text, integer, jsonb, jsonb, text),
    _es_fold_with(jsonb, event_store, regprocedure),
    es_fold(event_store),
    es_fold(event_store, regprocedure),
    _es_state_with(text, timestamptz, bigint, regprocedure),
    es_state(text, regprocedure),
    es_state_at(text, timestamptz, regprocedure),
    es_state_at_version(text, bigint, regprocedure),
    _es_check_uncut(text),
    es_diff(text, timestamptz, timestamptz)
TO event_store_reader;

GRANT EXECUTE ON FUNCTION
    es_append(text, text, jsonb, jsonb, bigint, uuid, integer),
    es_append_batch(text, jsonb, bigint),
    es_append_multi(jsonb),
    es_snapshot(text)
TO event_store_writer;
