-- Least privilege: nobody but the owner writes tables directly; readers read, writers append.
REVOKE ALL ON event_store, es_streams, es_reducers, es_snapshots FROM PUBLIC;
REVOKE ALL ON SEQUENCE es_global_position_seq FROM PUBLIC;
GRANT USAGE ON SCHEMA @extschema@ TO event_store_reader;
-- Snapshots hold nothing a reader cannot fold from event_store.
GRANT SELECT ON event_store, es_streams, es_reducers, es_snapshots TO event_store_reader;
-- The feed's horizon reads how far positions have been handed out.
GRANT SELECT ON SEQUENCE es_global_position_seq TO event_store_reader;

REVOKE EXECUTE ON FUNCTION
    _es_append(text, jsonb, bigint, boolean),
    _es_open_stream(text),
    _es_advance_stream(text, bigint, timestamptz, timestamptz, bigint, bytea),
    _es_event_hash(bytea, uuid, text, bigint, bigint, text, integer, timestamptz, text, text),
    _es_check_append(text, bigint, text, integer),
    _es_check_event(text, text, text, integer, bigint, integer),
    _es_calling_role(),
    _es_guard_event_store(boolean),
    es_enable_hypertable(interval),
    es_append(text, text, jsonb, jsonb, bigint, uuid, integer),
    es_append_batch(text, jsonb, bigint),
    es_stream(text, bigint, bigint),
    es_stream_version(text),
    es_state(text),
    es_state_at(text, timestamptz),
    es_state_at_version(text, bigint),
    es_verify(text),
    _es_feed_register(),
    _es_feed_horizon(),
    _es_read_feed(bigint, integer, text[], text, integer, integer),
    es_read_all(bigint, integer, text[]),
    es_read_category(text, bigint, integer, integer, integer),
    _es_run_as(oid, oid, event_store),
    _es_setting_int(text),
    _es_wake_projections(boolean),
    _es_projection_for_update(text),
    _es_project_batch(text, integer, bigint),
    _es_feed_in_flight(),
    es_create_projection(text, regprocedure, text[], text[], regprocedure),
    es_pause_projection(text),
    es_resume_projection(text),
    es_rebuild_projection(text),
    es_drop_projection(text),
    es_run_projections(integer),
    _es_check_reducer(text, text, jsonb),
    _es_take_snapshot(text),
    _es_snapshot_after_append(text, bigint, bigint),
    es_define_reducer(text, text, jsonb),
    es_drop_reducer(text, text),
    es_snapshot(text),
    es_drop_snapshots(text),
    _es_fold_step(internal, event_store),
    _es_fold_final(internal),
    _es_fold_events_step(internal, text, jsonb),
    _es_fold_events(text, jsonb),
    _es_fold_with(jsonb, event_store, regprocedure),
    es_fold(event_store),
    es_fold(event_store, regprocedure),
    _es_state_with(text, timestamptz, bigint, regprocedure),
    es_state(text, regprocedure),
    es_state_at(text, timestamptz, regprocedure),
    es_state_at_version(text, bigint, regprocedure),
    es_diff(text, timestamptz, timestamptz)
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    es_stream(text, bigint, bigint),
    es_stream_version(text),
    es_state(text),
    es_state_at(text, timestamptz),
    es_state_at_version(text, bigint),
    es_verify(text),
    _es_feed_horizon(),
    _es_read_feed(bigint, integer, text[], text, integer, integer),
    es_read_all(bigint, integer, text[]),
    es_read_category(text, bigint, integer, integer, integer),
    es_create_projection(text, regprocedure, text[], text[], regprocedure),
    es_pause_projection(text),
    es_resume_projection(text),
    es_rebuild_projection(text),
    es_drop_projection(text),
    es_run_projections(integer),
    _es_fold_step(internal, event_store),
    _es_fold_final(internal),
    _es_fold_events_step(internal, text, jsonb),
    _es_fold_events(text, jsonb),
    _es_fold_with(jsonb, event_store, regprocedure),
    es_fold(event_store),
    es_fold(event_store, regprocedure),
    _es_state_with(text, timestamptz, bigint, regprocedure),
    es_state(text, regprocedure),
    es_state_at(text, timestamptz, regprocedure),
    es_state_at_version(text, bigint, regprocedure),
    es_diff(text, timestamptz, timestamptz)
TO event_store_reader;
REVOKE ALL ON es_projection_state FROM PUBLIC;
GRANT SELECT ON es_projection_state, es_projections TO event_store_reader;

GRANT EXECUTE ON FUNCTION
    es_append(text, text, jsonb, jsonb, bigint, uuid, integer),
    es_append_batch(text, jsonb, bigint),
    es_snapshot(text)
TO event_store_writer;
