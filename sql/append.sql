-- Appending: validation, the per-stream lock, idempotency, optimistic concurrency, hashing.
-- es_append and es_append_batch are the only ways in; they run as the extension owner
-- (SECURITY DEFINER, pinned search_path) because callers hold no INSERT privilege.

-- Refuses event_data or metadata nested deeper than event_store.max_event_depth (src/validate.rs).
CREATE FUNCTION _es_check_depth(event_data jsonb, metadata jsonb, ordinal integer) RETURNS void
    LANGUAGE c STABLE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', '_es_check_depth';

CREATE FUNCTION _es_append(
    p_stream_id text, p_events jsonb, p_expected_version bigint, p_single boolean)
RETURNS TABLE (event_id uuid, stream_version bigint, global_position bigint, created_at timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    n        int := CASE jsonb_typeof(p_events) WHEN 'array' THEN jsonb_array_length(p_events) ELSE 0 END;
    context  jsonb := jsonb_strip_nulls(jsonb_build_object(
                 'correlationId', nullif(current_setting('event_store.correlation_id', true), ''),
                 'causationId',   nullif(current_setting('event_store.causation_id', true), '')));
    appended_by jsonb := jsonb_build_object('appendedBy', @extschema@._es_calling_role());
    ev       jsonb;
    meta     jsonb;
    ids      uuid[] := '{}';
    types    text[] := '{}';
    datas    jsonb[] := '{}';
    data_txt text[] := '{}';
    metas    jsonb[] := '{}';
    meta_txt text[] := '{}';
    versions int[] := '{}';
    given    uuid[];
    found    int;
    head     record;
    v        bigint;
    pos      bigint;
    at       timestamptz;
    prev     bytea;
    id       uuid;
BEGIN
    PERFORM @extschema@._es_check_append(p_stream_id, p_expected_version, coalesce(jsonb_typeof(p_events), 'null'), n);

    -- Everything is validated before any lock is taken or row written.
    FOR i IN 1..n LOOP
        ev := p_events -> (i - 1);
        IF jsonb_typeof(ev) <> 'object' THEN
            RAISE EXCEPTION 'event_store: event %: must be a JSON object, not %', i, jsonb_typeof(ev)
                USING ERRCODE = '22023';
        END IF;
        meta := coalesce(ev -> 'metadata', '{}');
        IF jsonb_typeof(meta) = 'object' THEN
            meta := context || meta || appended_by;
        END IF;
        ids[i]      := (ev ->> 'id')::uuid;
        types[i]    := CASE jsonb_typeof(ev -> 'type') WHEN 'string' THEN ev ->> 'type' END;
        datas[i]    := ev -> 'data';
        data_txt[i] := datas[i]::text;
        metas[i]    := meta;
        meta_txt[i] := meta::text;
        versions[i] := coalesce((ev ->> 'version')::int, 1);
        PERFORM @extschema@._es_check_event(types[i], coalesce(jsonb_typeof(datas[i]), CASE WHEN p_single THEN 'null' ELSE 'missing' END),
                                jsonb_typeof(meta), versions[i],
                                octet_length(data_txt[i]) + octet_length(meta_txt[i]),
                                CASE WHEN NOT p_single THEN i END);
        PERFORM @extschema@._es_check_depth(datas[i], metas[i], CASE WHEN NOT p_single THEN i END);
    END LOOP;

    SELECT * INTO head FROM @extschema@._es_open_stream(p_stream_id);

    -- Caller-chosen ids: a retry of events already stored returns them; any other reuse fails.
    given := array(SELECT DISTINCT x FROM unnest(ids) x WHERE x IS NOT NULL ORDER BY 1);
    IF cardinality(given) > 0 THEN
        IF cardinality(given) <> (SELECT count(*) FROM unnest(ids) x WHERE x IS NOT NULL) THEN
            RAISE EXCEPTION 'event_store: the batch uses an event id twice' USING ERRCODE = 'ES002';
        END IF;
        -- Claims the ids: an append of the same id elsewhere waits here until this one ends.
        -- A row per id, not a lock per id: a batch of any size takes no lock-table entries.
        INSERT INTO @extschema@.es_event_ids SELECT x FROM unnest(given) x ON CONFLICT DO NOTHING;
        SELECT count(*) INTO found FROM @extschema@.event_store e WHERE e.event_id = ANY (given);
        IF found > 0 THEN
            IF found = n AND cardinality(given) = n AND NOT EXISTS (
                SELECT FROM unnest(ids, types, datas, versions) AS b(id, type, data, version)
                LEFT JOIN @extschema@.event_store e ON e.event_id = b.id
                WHERE e.event_id IS NULL OR e.stream_id <> p_stream_id OR e.event_type <> b.type
                   OR e.event_data <> b.data OR e.event_version <> b.version)
            THEN
                RETURN QUERY
                    SELECT e.event_id, e.stream_version, e.global_position, e.created_at
                      FROM unnest(ids) WITH ORDINALITY AS b(id, ord)
                      JOIN @extschema@.event_store e ON e.event_id = b.id
                     ORDER BY b.ord;
                RETURN;
            END IF;
            SELECT e.event_id, e.stream_id, e.stream_version INTO head
              FROM @extschema@.event_store e WHERE e.event_id = ANY (given) ORDER BY e.global_position LIMIT 1;
            RAISE EXCEPTION 'event_store: event id % already exists with other content', head.event_id
                USING ERRCODE = 'ES002',
                      DETAIL = format('It is version %s of stream %s. A retry must repeat the stream, type, data and version of every event of the original append.',
                                      head.stream_version, head.stream_id);
        END IF;
    END IF;

    IF p_expected_version IS NOT NULL AND p_expected_version <> head.version THEN
        RAISE EXCEPTION 'event_store: wrong expected version for stream %: expected %, actual %',
                p_stream_id, p_expected_version, head.version
            USING ERRCODE = 'ES001',
                  HINT = 'Read the stream again, decide, and retry with its current version.';
    END IF;

    -- Visible to feed readers at once: they stop below our positions until we end.
    PERFORM @extschema@._es_feed_register();
    v := head.version;
    prev := head.head_hash;  -- NULL for a new stream: its chain starts from the zero hash
    -- Times never go backwards within a stream, so "state at an instant" follows version order.
    at := greatest(clock_timestamp(), head.last_at);
    FOR i IN 1..n LOOP
        v := v + 1;
        pos := pg_catalog.nextval('@extschema@.es_global_position_seq'::pg_catalog.regclass);
        id := coalesce(ids[i], @extschema@.es_uuidv7());
        prev := @extschema@._es_event_hash(prev, id, p_stream_id, v, pos, types[i], versions[i], at, data_txt[i], meta_txt[i]);
        INSERT INTO @extschema@.event_store (global_position, event_id, stream_id, stream_version, event_type,
                                 event_data, metadata, event_version, created_at, hash)
        VALUES (pos, id, p_stream_id, v, types[i], datas[i], metas[i], versions[i], at, prev);
        event_id := id; stream_version := v; global_position := pos; created_at := at;
        RETURN NEXT;
    END LOOP;
    PERFORM @extschema@._es_advance_stream(p_stream_id, v, at, at, pos, prev);
    PERFORM @extschema@._es_snapshot_after_append(p_stream_id, head.version, v);
    -- Delivered at commit, so listeners learn of committed events only.
    IF current_setting('event_store.notify')::boolean THEN
        PERFORM pg_notify('event_store', pos::text);
    END IF;
    PERFORM @extschema@._es_wake_projections();
END
$$;

CREATE FUNCTION es_append(
    stream_id text,
    event_type text,
    event_data jsonb,
    metadata jsonb DEFAULT '{}',
    expected_version bigint DEFAULT NULL,
    id uuid DEFAULT NULL,
    event_version integer DEFAULT 1)
RETURNS TABLE (event_id uuid, stream_version bigint, global_position bigint, created_at timestamptz)
LANGUAGE sql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM @extschema@._es_append($1,
        jsonb_build_array(jsonb_build_object('type', $2, 'data', $3, 'metadata', coalesce($4, 'null'::jsonb), 'id', $6, 'version', $7)),
        $5, true)
$$;
COMMENT ON FUNCTION es_append(text, text, jsonb, jsonb, bigint, uuid, integer) IS
    'Appends one event; expected_version NULL = any, 0 = new stream, N = stream must be at N (else SQLSTATE ES001).';

CREATE FUNCTION es_append_batch(stream_id text, events jsonb, expected_version bigint DEFAULT NULL)
RETURNS TABLE (event_id uuid, stream_version bigint, global_position bigint, created_at timestamptz)
LANGUAGE sql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM @extschema@._es_append($1, $2, $3, false)
$$;
COMMENT ON FUNCTION es_append_batch(text, jsonb, bigint) IS
    'Appends a JSON array of {"type","data","metadata"?,"id"?,"version"?} to one stream, all or nothing.';
