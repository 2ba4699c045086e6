-- Reading streams. Queries go through the stream's time bounds in es_streams so that a
-- hypertable with years of chunks only scans the chunks the stream lives in.
-- SQL-standard bodies: every name in them is bound when the function is created.

-- The stream's time bounds are read first, so that the events' query is planned with them:
-- a hypertable then scans only the chunks the stream has events in. Personal data revealed as
-- the reader may see it (sql/privacy/sealing.sql), then upcast on request; OFFSET 0 keeps the lateral
-- row from being flattened into one reveal per column.
CREATE FUNCTION @extschema@.es_stream(stream_id text, from_version bigint DEFAULT 1, max_count bigint DEFAULT NULL,
                                      upcast boolean DEFAULT false)
RETURNS SETOF @extschema@.event_store
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    lo timestamptz;
    hi timestamptz;
BEGIN
    SELECT s.first_at, s.last_at INTO lo, hi FROM _event_store.es_streams s
     WHERE s.stream_id = es_stream.stream_id;
    IF lo IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT (r.e).*
          FROM _event_store.log l,
               LATERAL (SELECT CASE WHEN es_stream.upcast
                                    THEN _event_store._es_upcast(_event_store._es_reveal(_event_store._es_event(l)))
                                    ELSE _event_store._es_reveal(_event_store._es_event(l)) END AS e
                        OFFSET 0) r
         WHERE l.stream_id = es_stream.stream_id AND l.created_at BETWEEN lo AND hi
           AND l.stream_version >= coalesce(es_stream.from_version, 1)
         ORDER BY l.stream_version
         LIMIT es_stream.max_count;
END
$$;
COMMENT ON FUNCTION @extschema@.es_stream(text, bigint, bigint, boolean) IS
    'Events of one stream from from_version on, in version order, at most max_count (NULL = all); as stored, or upcast to their types'' latest versions.';

CREATE FUNCTION @extschema@.es_stream_version(stream_id text)
RETURNS bigint
LANGUAGE sql
STABLE STRICT
RETURN COALESCE((SELECT r.version FROM _event_store.es_streams r WHERE r.stream_id OPERATOR(pg_catalog.=) es_stream_version.stream_id), 0::bigint);
COMMENT ON FUNCTION @extschema@.es_stream_version(text) IS 'Current version of a stream, 0 when it does not exist.';
