-- Baselines measured in the same run, on the same cluster, as event_store.
-- Every table gets the same partitioning as event_store (hypertable or not).

-- floor: the same event row and the same indexes as event_store, no versions, no hashes.
CREATE SEQUENCE bench_floor_seq;
CREATE TABLE bench_floor (
    global_position bigint NOT NULL, event_id uuid NOT NULL, stream_id text NOT NULL,
    stream_version bigint NOT NULL, event_type text NOT NULL, event_data jsonb NOT NULL,
    metadata jsonb NOT NULL, event_version integer NOT NULL, created_at timestamptz NOT NULL,
    transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id());
CREATE INDEX ON bench_floor (stream_id, stream_version);
CREATE INDEX ON bench_floor (global_position);
CREATE INDEX ON bench_floor (event_id);
CREATE INDEX ON bench_floor (event_type, created_at);
CREATE INDEX ON bench_floor (created_at);

-- handed design: the ADR's table as written: three indexes, no concurrency control.
CREATE TABLE bench_handed (
    event_id uuid NOT NULL, stream_id text NOT NULL, event_type text NOT NULL,
    event_data jsonb NOT NULL, metadata jsonb NOT NULL, event_version integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON bench_handed (stream_id, created_at);
CREATE INDEX ON bench_handed (event_type, created_at);
CREATE INDEX ON bench_handed (created_at);

-- category-lock design, written from the description of Message DB: an advisory lock per
-- category, read the stream's current position, compare, insert.
CREATE SEQUENCE bench_catlock_seq;
CREATE TABLE bench_catlock (
    global_position bigint NOT NULL DEFAULT nextval('bench_catlock_seq'), position bigint NOT NULL,
    time timestamptz NOT NULL DEFAULT clock_timestamp(), stream_name text NOT NULL, type text NOT NULL,
    data jsonb, metadata jsonb, id uuid NOT NULL);
CREATE UNIQUE INDEX ON bench_catlock (global_position);
CREATE UNIQUE INDEX ON bench_catlock (stream_name, position);
CREATE UNIQUE INDEX ON bench_catlock (id);
CREATE INDEX ON bench_catlock (split_part(stream_name, '-', 1), global_position);

CREATE FUNCTION bench_catlock_write(id uuid, stream_name text, type text, data jsonb,
                                    metadata jsonb DEFAULT NULL, expected_version bigint DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(split_part(stream_name, '-', 1)));
    SELECT max(c.position) INTO v FROM bench_catlock c WHERE c.stream_name = bench_catlock_write.stream_name;
    v := coalesce(v, -1);
    IF expected_version IS NOT NULL AND expected_version <> v THEN
        RAISE EXCEPTION 'Wrong expected version: % (Stream: %, Stream Version: %)', expected_version, stream_name, v;
    END IF;
    INSERT INTO bench_catlock (position, stream_name, type, data, metadata, id)
    VALUES (v + 1, stream_name, type, data, metadata, id);
    RETURN v + 1;
END $$;

-- A 1,000-event batch, prepared once so that building it is not measured.
CREATE TABLE bench_payload AS
SELECT jsonb_agg(jsonb_build_object('type', 'ItemAdded', 'data',
           jsonb_build_object('sku', 'sku-' || i, 'qty', i % 5 + 1, 'price', 9.99))) AS events
  FROM generate_series(1, 1000) AS i;

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
