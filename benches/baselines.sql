-- Baselines measured in the same run, on the same cluster, as event_store.
-- Every table gets the same partitioning as event_store (hypertable or not).

-- floor: the same event row and the same indexes as event_store, no versions, no hashes.
CREATE SEQUENCE bench_floor_seq;
CREATE TABLE bench_floor (
    global_position bigint NOT NULL, event_id uuid NOT NULL, stream_id text NOT NULL,
    stream_version bigint NOT NULL, event_type text NOT NULL, event_data jsonb NOT NULL,
    metadata jsonb NOT NULL, event_version integer NOT NULL, created_at timestamptz NOT NULL,
    transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id());
CREATE INDEX ON bench_floor (stream_id, stream_version, created_at);
CREATE INDEX ON bench_floor (global_position);
CREATE INDEX ON bench_floor (event_id);
CREATE INDEX ON bench_floor (event_type, created_at);
CREATE INDEX ON bench_floor (created_at);
CREATE INDEX ON bench_floor (split_part(stream_id, '-', 1), global_position);

-- handed design: the ADR's table as written: three indexes, no concurrency control.
CREATE TABLE bench_handed (
    event_id uuid NOT NULL, stream_id text NOT NULL, event_type text NOT NULL,
    event_data jsonb NOT NULL, metadata jsonb NOT NULL, event_version integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON bench_handed (stream_id, created_at);
CREATE INDEX ON bench_handed (event_type, created_at);
CREATE INDEX ON bench_handed (created_at);

-- A 1,000-event batch, prepared once so that building it is not measured.
CREATE TABLE bench_payload AS
SELECT jsonb_agg(jsonb_build_object('type', 'ItemAdded', 'data',
           jsonb_build_object('sku', 'sku-' || i, 'qty', i % 5 + 1, 'price', 9.99))) AS events
  FROM generate_series(1, 1000) AS i;

-- 100 multi-stream appends for es_append_multi, each 100 streams x 10 events (1,000 rows),
-- prepared once; a call picks one at random, so 10,000 streams get 10 events per pick.
CREATE TABLE bench_multi_payload AS
SELECT p AS id, jsonb_agg(jsonb_build_object('stream_id', 'multi-' || (p * 100 + s), 'events', (
           SELECT jsonb_agg(jsonb_build_object('type', 'ItemAdded', 'data',
                      jsonb_build_object('sku', 'sku-' || i, 'qty', i % 5 + 1, 'price', 9.99)) ORDER BY i)
             FROM generate_series(1, 10) AS i)) ORDER BY s) AS appends
  FROM generate_series(1, 100) AS p, generate_series(1, 100) AS s
 GROUP BY p;
ALTER TABLE bench_multi_payload ADD PRIMARY KEY (id);

-- The same fold as es_state_at, as a PL/pgSQL loop (events here are flat objects without
-- nulls, for which jsonb || is exactly JSON Merge Patch).
-- The fold of scenario 4, as reducers (category '*': every bench stream) and as the PL/pgSQL
-- loop a team would write by hand: UserEmailChanged sets email from newEmail,
-- UserRoleChanged sets role from newRole, anything else merges its data.
DO $$
BEGIN
    PERFORM es_define_reducer('*', 'UserEmailChanged', '{"op": "set", "path": "/email", "from": "/newEmail"}');
    PERFORM es_define_reducer('*', 'UserRoleChanged', '{"op": "set", "path": "/role", "from": "/newRole"}');
END $$;

CREATE FUNCTION bench_plpgsql_state_at(p_stream text, p_at timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    state jsonb;
    r record;
BEGIN
    FOR r IN SELECT event_type, event_data FROM event_store WHERE stream_id = p_stream AND created_at <= p_at
             ORDER BY stream_version LOOP
        state := coalesce(state, '{}');
        CASE r.event_type
            WHEN 'UserEmailChanged' THEN state := jsonb_set(state, '{email}', r.event_data -> 'newEmail');
            WHEN 'UserRoleChanged' THEN state := jsonb_set(state, '{role}', r.event_data -> 'newRole');
            ELSE state := state || r.event_data;
        END CASE;
    END LOOP;
    RETURN state;
END $$;

-- A user stream of p_events events, appended p_batch at a time (each batch shares a time).
CREATE FUNCTION bench_load_user_stream(p_stream text, p_events int, p_batch int) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    FOR b IN 0 .. (p_events - 1) / p_batch LOOP
        PERFORM es_append_batch(p_stream, (
            SELECT jsonb_agg(CASE
                WHEN i = 1 THEN jsonb_build_object('type', 'UserRegistered', 'data',
                    jsonb_build_object('userId', p_stream, 'email', 'first@example.com', 'role', 'user', 'name', 'Ann'))
                WHEN i % 3 = 0 THEN jsonb_build_object('type', 'UserEmailChanged', 'data',
                    jsonb_build_object('newEmail', 'u' || i || '@example.com'))
                WHEN i % 3 = 1 THEN jsonb_build_object('type', 'UserRoleChanged', 'data',
                    jsonb_build_object('newRole', 'role' || i % 7))
                ELSE jsonb_build_object('type', 'ProfileUpdated', 'data',
                    jsonb_build_object('field' || i % 20, i, 'updatedBy', 'svc-' || i % 5))
                END ORDER BY i)
              FROM generate_series(b * p_batch + 1, least(p_events, b * p_batch + p_batch)) i));
    END LOOP;
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('bench_floor', 'created_at', chunk_time_interval => interval '7 days', create_default_indexes => false);
        PERFORM create_hypertable('bench_handed', 'created_at', chunk_time_interval => interval '7 days', create_default_indexes => false);
    END IF;
END $$;

-- Table plus indexes (and chunks, for a hypertable).
CREATE FUNCTION bench_bytes(t regclass) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE 'SELECT hypertable_size($1)' INTO n USING t;
        RETURN n;
    END IF;
    RETURN pg_total_relation_size(t);
END $$;
