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
AS 'MODULE_PATHNAME', 'es_dcb_append';
COMMENT ON FUNCTION @extschema@.es_dcb_append(jsonb, jsonb) IS
    'Appends a JSON array of {"type","data","tags"?,"id"?,"metadata"?,"version"?,"stream_id"?} at consecutive positions in array order, unless an event matching condition''s fail_if_events_match was stored after its "after" (SQLSTATE ES001); returns the last position.';

-- The committed events a query matches, as the reader may see them (row level security,
-- personal data revealed as es_read_all does), after a position and never past the feed's
-- horizon, in position order. Each item reads through its own index (tags, or types).
CREATE FUNCTION @extschema@.es_dcb_read(query jsonb DEFAULT NULL, after bigint DEFAULT NULL, "limit" integer DEFAULT NULL)
RETURNS TABLE (global_position bigint, event_type text, event_data jsonb, tags text[], metadata jsonb, created_at timestamptz)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
-- As for es_dcb_append: the branch for items without tags plans a scan of every chunk.
SET jit = off
AS $$
DECLARE
    -- Computed before the query below takes its snapshot: everything up to it has settled.
    horizon bigint := _event_store._es_feed_horizon();
    lo bigint := coalesce(es_dcb_read.after, 0);
BEGIN
    PERFORM _event_store._es_check_feed_isolation();
    PERFORM _event_store._es_dcb_check_limit(es_dcb_read."limit");
    IF NOT EXISTS (SELECT FROM _event_store._es_dcb_items(es_dcb_read.query)) THEN
        RETURN QUERY
            SELECT (r.e).global_position, (r.e).event_type, (r.e).event_data, (r.e).tags, (r.e).metadata, (r.e).created_at
              FROM _event_store.log l,
                   LATERAL (SELECT _event_store._es_reveal(_event_store._es_event(l)) AS e OFFSET 0) r
             WHERE l.global_position > lo AND l.global_position <= horizon
             ORDER BY l.global_position
             LIMIT es_dcb_read."limit";
        RETURN;
    END IF;
    -- Each item through its own index: the tags' (positions as an expression, so that a plan
    -- made without knowing them, a generic one, still reads it), or for an item without tags
    -- its types'. An event several items match is returned once.
    RETURN QUERY
        SELECT (r.e).global_position, (r.e).event_type, (r.e).event_data, (r.e).tags, (r.e).metadata, (r.e).created_at
          FROM (SELECT DISTINCT ON (m.global_position) m.*
                  FROM _event_store._es_dcb_items(es_dcb_read.query) i
                 CROSS JOIN LATERAL (
                       SELECT l.* FROM _event_store.log l
                        WHERE cardinality(i.tags) > 0 AND l.tags @> i.tags AND l.tags <> '{}'::text[]
                          AND (cardinality(i.types) = 0 OR l.event_type = ANY (i.types))
                          AND l.global_position + 0 > lo AND l.global_position + 0 <= horizon
                       UNION ALL
                       SELECT l.* FROM _event_store.log l
                        WHERE cardinality(i.tags) = 0 AND l.event_type = ANY (i.types)
                          AND l.global_position > lo AND l.global_position <= horizon) m
                 ORDER BY m.global_position
                 LIMIT es_dcb_read."limit") l,
               LATERAL (SELECT _event_store._es_reveal(_event_store._es_event(l::_event_store.log)) AS e OFFSET 0) r
         ORDER BY 1;
END
$$;
COMMENT ON FUNCTION @extschema@.es_dcb_read(jsonb, bigint, integer) IS
    'Committed events matching a DCB query ({"items": [{"types": [...], "tags": [...]}]}; NULL or no items: all) after a position, in position order, at most limit (NULL: all), never past es_feed_horizon().';
