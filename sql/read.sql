-- Reading streams. Queries go through the stream's time bounds in es_streams so that a
-- hypertable with years of chunks only scans the chunks the stream lives in.

CREATE FUNCTION es_stream(stream_id text, from_version bigint DEFAULT 1, max_count bigint DEFAULT NULL,
                          upcast boolean DEFAULT false)
RETURNS SETOF event_store
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s @extschema@.es_streams;
BEGIN
    SELECT * INTO s FROM @extschema@.es_streams r WHERE r.stream_id = es_stream.stream_id;
    IF NOT FOUND OR s.version = 0 THEN
        RETURN;
    END IF;
    IF upcast THEN
        RETURN QUERY
            SELECT u.* FROM @extschema@.es_stream(stream_id, from_version, max_count) e,
                   LATERAL @extschema@.es_upcast(e) u
             ORDER BY u.stream_version;
        RETURN;
    END IF;
    -- Personal data revealed as the reader may see it (sql/personal.sql).
    RETURN QUERY
        SELECT r.* FROM @extschema@.event_store e, LATERAL @extschema@._es_reveal(e) r
         WHERE e.stream_id = s.stream_id
           AND e.created_at BETWEEN s.first_at AND s.last_at
           AND e.stream_version >= coalesce(from_version, 1)
         ORDER BY e.stream_version
         LIMIT max_count;
END
$$;
COMMENT ON FUNCTION es_stream(text, bigint, bigint, boolean) IS
    'Events of one stream from from_version on, in version order, at most max_count (NULL = all); as stored, or upcast to their types'' latest versions.';

CREATE FUNCTION es_stream_version(stream_id text)
RETURNS bigint
LANGUAGE sql
STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT version FROM @extschema@.es_streams r WHERE r.stream_id = $1), 0)
$$;
COMMENT ON FUNCTION es_stream_version(text) IS 'Current version of a stream, 0 when it does not exist.';
