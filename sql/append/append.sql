-- Appending: validation, the per-stream lock, idempotency, optimistic concurrency, hashing.
-- es_append and es_append_batch are the only ways in; they run as the extension owner
-- (SECURITY DEFINER, pinned search_path) because callers hold no INSERT privilege.

-- es_append, es_append_batch and es_append_multi are C functions over one engine in
-- src/append/ (engine.rs): validation, locks, ids, positions, hashes and rows in one call.

CREATE FUNCTION @extschema@.es_append(
    stream_id text,
    event_type text,
    event_data jsonb,
    metadata jsonb DEFAULT '{}',
    expected_version bigint DEFAULT NULL,
    id uuid DEFAULT NULL,
    event_version integer DEFAULT 1,
    tags text[] DEFAULT '{}')
RETURNS TABLE (event_id uuid, stream_version bigint, global_position bigint, created_at timestamptz)
LANGUAGE c VOLATILE CALLED ON NULL INPUT SECURITY DEFINER ROWS 1
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'es_append';
COMMENT ON FUNCTION @extschema@.es_append(text, text, jsonb, jsonb, bigint, uuid, integer, text[]) IS
    'Appends one event; expected_version NULL = any, 0 = new stream, N = stream must be at N (else SQLSTATE ES001); tags for conditional appends (docs/dcb.md).';

CREATE FUNCTION @extschema@.es_append_batch(stream_id text, events jsonb, expected_version bigint DEFAULT NULL)
RETURNS TABLE (event_id uuid, stream_version bigint, global_position bigint, created_at timestamptz)
LANGUAGE c VOLATILE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'es_append_batch';
COMMENT ON FUNCTION @extschema@.es_append_batch(text, jsonb, bigint) IS
    'Appends a JSON array of {"type","data","metadata"?,"id"?,"version"?,"tags"?} to one stream, all or nothing, at consecutive global positions.';

CREATE FUNCTION @extschema@.es_append_multi(appends jsonb)
RETURNS TABLE (stream_id text, event_id uuid, stream_version bigint, global_position bigint, created_at timestamptz)
LANGUAGE c VOLATILE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'es_append_multi';
COMMENT ON FUNCTION @extschema@.es_append_multi(jsonb) IS
    'Appends to several streams atomically: a JSON array of {"stream_id","expected_version"?,"events"}; every expected version is checked, all or nothing, at consecutive global positions.';

-- es_append for the store's own records (_es_record), under a name no one else can shadow.
CREATE FUNCTION _event_store._es_append(stream_id text, event_type text, event_data jsonb, metadata jsonb,
                                        expected_version bigint, id uuid, event_version integer)
RETURNS TABLE (event_id uuid, stream_version bigint, global_position bigint, created_at timestamptz)
LANGUAGE c VOLATILE CALLED ON NULL INPUT SECURITY DEFINER ROWS 1
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'es_append';
