-- Least privilege: PUBLIC gets nothing of the extension, readers read, writers append, and
-- nobody but the owner writes tables directly. Every function and relation that belongs to the
-- extension (pg_depend) loses PUBLIC's rights here, so a new one cannot slip through; each
-- grant below is on purpose. tests/security.rs checks the result from pg_depend too.
DO $$
DECLARE
    ext oid := (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'event_store'::name);
    obj text;
BEGIN
    FOR obj IN
        SELECT pg_catalog.format('FUNCTION %s', d.objid::pg_catalog.regprocedure)
          FROM pg_catalog.pg_depend d
         WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass::pg_catalog.oid
           AND d.refobjid OPERATOR(pg_catalog.=) ext
           AND d.deptype OPERATOR(pg_catalog.=) 'e'::"char"
           AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass::pg_catalog.oid
        UNION ALL
        SELECT pg_catalog.format(CASE c.relkind WHEN 'S' THEN 'SEQUENCE %s' ELSE 'TABLE %s' END, d.objid::pg_catalog.regclass)
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.objid
         WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass::pg_catalog.oid
           AND d.refobjid OPERATOR(pg_catalog.=) ext
           AND d.deptype OPERATOR(pg_catalog.=) 'e'::"char"
           AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM PUBLIC', obj);
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA @extschema@, _event_store TO event_store_reader;
-- Snapshots hold nothing a reader cannot fold from event_store; under row level security
-- their policy hides them (sql/fold/fold.sql). The views in the extension's schema read the
-- internal tables as their caller, who needs both.
GRANT SELECT ON @extschema@.event_store, _event_store.log,
                _event_store.es_streams, @extschema@.es_streams,
                _event_store.es_reducers, @extschema@.es_reducers,
                _event_store.es_snapshots, @extschema@.es_snapshots,
                _event_store.es_projection_state, @extschema@.es_projection_state,
                @extschema@.es_projections, @extschema@.es_feed_in_flight,
                _event_store.es_catalog_types, @extschema@.es_catalog_types,
                _event_store.es_upcasts, @extschema@.es_upcasts,
                _event_store.es_catalog_modes, @extschema@.es_catalog_modes,
                @extschema@.es_event_types,
                _event_store.es_checkpoints, @extschema@.es_checkpoints,
                @extschema@.es_metrics,
                _event_store.es_verifications, @extschema@.es_verifications,
                _event_store.es_feed_published, @extschema@.es_feed_published,
                _event_store.es_digests, @extschema@.es_digests,
                _event_store.es_digest_heads, @extschema@.es_digest_heads,
                _event_store.es_anchors, @extschema@.es_anchors,
                _event_store.es_retention, @extschema@.es_retention
   TO event_store_reader;
-- The feed's horizon reads how far positions have been handed out.
GRANT SELECT ON SEQUENCE _event_store.es_global_position_seq TO event_store_reader;

GRANT EXECUTE ON FUNCTION
    @extschema@.es_uuidv7(),
    _event_store._es_category(text),
    @extschema@.es_stream(text, bigint, bigint, boolean),
    _event_store._es_event(_event_store.log),
    @extschema@.es_upcast(@extschema@.event_store),
    _event_store._es_upcast(@extschema@.event_store),
    -- The reads reveal personal data as the reader may see it.
    _event_store._es_reveal(@extschema@.event_store),
    @extschema@.es_catalog(),
    @extschema@.es_stream_version(text),
    @extschema@.es_state(text),
    @extschema@.es_state_at(text, timestamptz),
    @extschema@.es_state_at_version(text, bigint),
    @extschema@.es_verify(text, boolean),
    -- An auditor takes digests and checks them against the store.
    @extschema@.es_digest(),
    @extschema@.es_verify_digest(jsonb),
    -- The feed reads run as the reader (row level security applies) and call these.
    _event_store._es_feed_horizon(),
    -- es_projections and es_metrics say whether a worker serves the database.
    _event_store._es_worker_state(),
    @extschema@.es_feed_horizon(),
    -- A consumer saves its position with its effects; it may only move its own.
    @extschema@.es_save_checkpoint(text, bigint),
    @extschema@.es_checkpoint(text),
    @extschema@.es_metrics_prometheus(),
    _event_store._es_feed_holders(),
    _event_store._es_check_feed_isolation(),
    _event_store._es_check_feed_read(integer, integer, integer),
    _event_store._es_consumer_group_member(text, integer),
    _event_store._es_read_feed(bigint, integer, text[], text, integer, integer, boolean),
    @extschema@.es_read_all(bigint, integer, text[], boolean),
    @extschema@.es_read_category(text, bigint, integer, integer, integer, boolean),
    @extschema@.es_dcb_read(jsonb, bigint, integer),
    @extschema@.es_create_projection(text, regprocedure, text[], text[], regprocedure),
    @extschema@.es_pause_projection(text),
    @extschema@.es_resume_projection(text),
    @extschema@.es_rebuild_projection(text),
    @extschema@.es_drop_projection(text),
    @extschema@.es_run_projections(integer),
    -- es_fold and the state functions run as the caller and use these aggregates.
    _event_store._es_fold_step(internal, @extschema@.event_store),
    _event_store._es_fold_final(internal),
    _event_store._es_fold_events_step(internal, text, integer, jsonb, jsonb, text),
    _event_store._es_fold_events(text, integer, jsonb, jsonb, text),
    _event_store._es_fold_with(jsonb, @extschema@.event_store, regprocedure),
    @extschema@.es_fold(@extschema@.event_store),
    @extschema@.es_fold(@extschema@.event_store, regprocedure),
    _event_store._es_state_with(text, timestamptz, bigint, regprocedure),
    @extschema@.es_state(text, regprocedure),
    @extschema@.es_state_at(text, timestamptz, regprocedure),
    @extschema@.es_state_at_version(text, bigint, regprocedure),
    _event_store._es_check_uncut(text),
    _event_store._es_fold_rows(text, bigint, bigint, timestamptz, timestamptz),
    _event_store._es_diff_rows(text, timestamptz, timestamptz, bigint),
    @extschema@.es_diff(text, timestamptz, timestamptz)
TO event_store_reader;

GRANT EXECUTE ON FUNCTION
    @extschema@.es_append(text, text, jsonb, jsonb, bigint, uuid, integer, text[]),
    @extschema@.es_append_batch(text, jsonb, bigint),
    @extschema@.es_append_multi(jsonb),
    @extschema@.es_dcb_append(jsonb, jsonb),
    @extschema@.es_snapshot(text)
TO event_store_writer;
