-- Walking the hash chains (src/integrity/verify.rs): every way the stored events differ from what
-- their appends wrote, one row each; none when nothing was altered.
CREATE FUNCTION @extschema@.es_verify(stream_id text DEFAULT NULL, snapshots boolean DEFAULT false)
RETURNS TABLE (stream_id text, stream_version bigint, problem text, detail text)
    LANGUAGE c VOLATILE SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_verify_wrapper';
