-- Dynamic Consistency Boundary (docs/dcb.md): appends conditioned on a query over tags and
-- types, and reads by such a query. The locking rule is in core/src/dcb/mod.rs.

-- An append of events that may name their streams, failing (ES001) if an event the condition's
-- query matches was stored after its position; on the append engine (src/dcb/mod.rs), as the
-- extension's owner like es_append.
CREATE FUNCTION @extschema@.es_dcb_append(events jsonb, condition jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- JIT compiling a condition's query (its plan over every chunk can cost past jit_above_cost)
-- takes hundreds of milliseconds, for a query that reads a few index entries.
SET jit = off
-- The condition's kept plans, generic: with the tags known a custom plan looks cheaper, so the
-- default mode would plan the check again on every call.
SET plan_cache_mode = force_generic_plan
-- TimescaleDB's ChunkAppend can exclude no chunk for these statements (tags and positions say
-- nothing of time), and starting it cost a tenth of a decision at 8 clients (benches/ section
-- 13). A placeholder where TimescaleDB is not loaded.
SET timescaledb.enable_chunk_append = off
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
-- As for es_dcb_append: reading every event plans a scan of every chunk, the kept plans are
-- generic, and no chunk can be excluded.
SET jit = off
SET plan_cache_mode = force_generic_plan
SET timescaledb.enable_chunk_append = off
AS 'MODULE_PATHNAME', 'es_dcb_read';
COMMENT ON FUNCTION @extschema@.es_dcb_read(jsonb, bigint, integer) IS
    'Committed events matching a DCB query ({"items": [{"types": [...], "tags": [...]}]}; NULL or no items: all) after a position, in position order, at most limit (NULL: all), never past es_feed_horizon().';
