-- Dynamic Consistency Boundary (docs/dcb.md): appends conditioned on a query over tags and
-- types, and reads by such a query. The locking rule is in core/src/dcb/mod.rs.

-- An append of events that may name their streams, failing (ES001) if an event the condition's
-- query matches was stored after its position; on the append engine (src/dcb/mod.rs), as the
-- extension's owner like es_append.
CREATE FUNCTION @extschema@.es_dcb_append(events jsonb, condition jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- The planner settings its statements need are set around them (src/pg/plans.rs,
-- for_few_rows), not here: a SET clause costs every call, most of which run no statement.
AS 'MODULE_PATHNAME', 'es_dcb_append';
COMMENT ON FUNCTION @extschema@.es_dcb_append(jsonb, jsonb) IS
    'Appends a JSON array of {"type","data","tags"?,"id"?,"metadata"?,"version"?,"stream_id"?} at consecutive positions in array order, unless an event matching condition''s fail_if_events_match was stored after its "after" (SQLSTATE ES001); returns the last position.';

-- The committed events a query matches, as the reader may see them (row level security,
-- personal data revealed as es_read_all does), after a position and never past the feed's
-- horizon, in position order; each item read through its own index (src/dcb/read.rs). Runs as
-- the caller.
CREATE FUNCTION @extschema@.es_dcb_read(query jsonb DEFAULT NULL, after bigint DEFAULT NULL, "limit" integer DEFAULT NULL)
RETURNS TABLE (global_position bigint, event_type text, event_data jsonb, tags text[], metadata jsonb, created_at timestamptz)
LANGUAGE c VOLATILE CALLED ON NULL INPUT
SET search_path = pg_catalog, pg_temp
-- Planner settings as for es_dcb_append.
AS 'MODULE_PATHNAME', 'es_dcb_read';
COMMENT ON FUNCTION @extschema@.es_dcb_read(jsonb, bigint, integer) IS
    'Committed events matching a DCB query ({"items": [{"types": [...], "tags": [...]}]}; NULL or no items: all) after a position, in position order, at most limit (NULL: all), never past es_feed_horizon().';
