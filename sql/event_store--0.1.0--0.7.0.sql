-- event_store 0.1.0 -> 0.7.0, assembled by scripts/update-script.py: edit the sources,
-- sql/updates/ and the definitions in sql/ and src/, not this file.

-- Waits for the projection worker's transaction in progress and holds back its next.
DO $$
BEGIN
    IF pg_catalog.to_regclass('_event_store.es_projection_state') IS NOT NULL THEN
        LOCK TABLE _event_store.es_projection_state IN ACCESS EXCLUSIVE MODE;
    ELSE -- before 0.3.0
        LOCK TABLE @extschema@.es_projection_state IN ACCESS EXCLUSIVE MODE;
    END IF;
END $$;

-- sql/updates/0.1.0--0.2.0.sql
-- event_store 0.1.0 -> 0.2.0: the tables of the event catalog, consumer checkpoints, the
-- verification log, the published feed horizon, digests, retention and subjects' keys, and the
-- drops of the functions whose signature changed. 0.1.0 is what main shipped up to commit
-- 7b97d24. Only table, data and privilege changes belong here: scripts/update-script.py
-- appends every definition of the current version's install script, and tests/upgrade.rs
-- proves the result equals a fresh install. The tables are created where 0.2.0 had them, in
-- the extension's schema; the next part (0.2.0--0.3.0.sql) moves them.

-- Names resolve in pg_catalog alone: nothing anyone created in the extension's schema or in
-- public is picked up.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

-- Changed signatures: the definitions create them again.
DROP FUNCTION @extschema@.es_stream(text, bigint, bigint);
DROP FUNCTION @extschema@.es_read_all(bigint, integer, text[]);
DROP FUNCTION @extschema@.es_read_category(text, bigint, integer, integer, integer);
DROP FUNCTION @extschema@._es_read_feed(bigint, integer, text[], text, integer, integer);
DROP AGGREGATE @extschema@._es_fold_events(text, jsonb, jsonb, text);
DROP FUNCTION @extschema@._es_fold_events_step(internal, text, jsonb, jsonb, text);

-- Keys that seal each subject's personal data (sql/privacy/sealing.sql).
CREATE TABLE @extschema@.es_subject_keys (
    key_id       uuid        PRIMARY KEY,
    subject_hash bytea       NOT NULL,
    wrapped      bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    destroyed_at timestamptz,
    destroyed_by text,
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
);
CREATE UNIQUE INDEX es_subject_keys_live ON @extschema@.es_subject_keys (subject_hash) WHERE wrapped IS NOT NULL;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_subject_keys', '');

-- The feed horizon published for hot standbys (sql/read/feed.sql): one row from the start.
CREATE TABLE @extschema@.es_feed_published (
    singleton    boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    horizon      bigint      NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO @extschema@.es_feed_published (horizon) VALUES (0);

-- Positions of feed consumers (sql/read/checkpoints.sql).
CREATE TABLE @extschema@.es_checkpoints (
    consumer text        PRIMARY KEY,
    position bigint      NOT NULL CHECK (position >= 0),
    owner    regrole     NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_checkpoints', '');

-- The event catalog (sql/catalog/catalog.sql). Its triggers are definitions: created with the
-- functions they call.
CREATE TABLE @extschema@.es_catalog_types (
    event_type    text        NOT NULL,
    version       integer     NOT NULL CHECK (version > 0),
    schema        jsonb,
    description   text,
    personal_data text[]      NOT NULL DEFAULT '{}',
    subject       text,
    defined_at    timestamptz NOT NULL DEFAULT now(),
    defined_by    text        NOT NULL,
    PRIMARY KEY (event_type, version)
);
CREATE TABLE @extschema@.es_upcasts (
    event_type   text        NOT NULL,
    from_version integer     NOT NULL CHECK (from_version > 0),
    rule         jsonb       NOT NULL,
    defined_at   timestamptz NOT NULL DEFAULT now(),
    defined_by   text        NOT NULL,
    PRIMARY KEY (event_type, from_version)
);
CREATE TABLE @extschema@.es_catalog_modes (
    category text        PRIMARY KEY,
    mode     text        NOT NULL CHECK (mode IN ('open', 'strict', 'off')),
    set_at   timestamptz NOT NULL DEFAULT now(),
    set_by   text        NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_catalog_types', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_upcasts', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_catalog_modes', '');

-- Every es_verify run by a role that sees all events (sql/metrics/metrics.sql).
CREATE TABLE @extschema@.es_verifications (
    verified_at timestamptz NOT NULL DEFAULT now(),
    stream_id   text,
    snapshots   boolean     NOT NULL,
    problems    bigint      NOT NULL,
    verified_by text        NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_verifications', '');

-- Digests and the stream heads they recorded (sql/integrity/digest.sql).
CREATE TABLE @extschema@.es_digests (
    position  bigint      PRIMARY KEY,
    events    bigint      NOT NULL,
    streams   bigint      NOT NULL,
    root      bytea       NOT NULL,
    taken_at  timestamptz NOT NULL DEFAULT now(),
    taken_by  text        NOT NULL
);
CREATE TABLE @extschema@.es_digest_heads (
    stream_id text   NOT NULL,
    position  bigint NOT NULL,
    version   bigint NOT NULL,
    hash      bytea  NOT NULL,
    PRIMARY KEY (stream_id, position)
);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_digests', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_digest_heads', '');

-- Where retention cut each stream, and the policy (sql/retention/retention.sql).
CREATE TABLE @extschema@.es_anchors (
    stream_id     text        PRIMARY KEY,
    first_version bigint      NOT NULL CHECK (first_version > 1),
    prev_hash     bytea       NOT NULL,
    prev_position bigint      NOT NULL,
    prev_at       timestamptz NOT NULL,
    cut_at        timestamptz NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_anchors', '');
CREATE TABLE @extschema@.es_retention (
    one         boolean     PRIMARY KEY DEFAULT true CHECK (one),
    older_than  interval    NOT NULL,
    set_at      timestamptz NOT NULL DEFAULT now(),
    set_by      text        NOT NULL,
    next_run_at timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.es_retention', '');

-- sql/updates/0.2.0--0.3.0.sql
-- event_store 0.2.0 -> 0.3.0: the internals move out of the extension's schema into
-- _event_store, where only the extension's owner creates objects (docs/security.md).
-- This part holds only what a fresh install does differently: the schema, and moving the
-- existing tables, sequence and internal functions into it. scripts/update-script.py appends
-- every function, view, comment and grant of this version's install script (the same
-- definitions a fresh install runs), so nothing is written twice; tests/upgrade.rs proves the
-- result equals a fresh install.

-- Fails when someone made a schema of that name first, as CREATE EXTENSION does.
CREATE SCHEMA _event_store;

-- Names resolve in pg_catalog alone for the rest of the update: nothing anyone created in
-- the extension's schema or in public is picked up.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

ALTER SEQUENCE @extschema@.es_global_position_seq SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_streams SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_event_ids SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_reducers SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_snapshots SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_projection_state SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_checkpoints SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_feed_published SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_catalog_types SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_upcasts SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_catalog_modes SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_verifications SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_digests SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_digest_heads SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_anchors SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_retention SET SCHEMA _event_store;
ALTER TABLE @extschema@.es_subject_keys SET SCHEMA _event_store;

-- 0.3.0 claims the ids the store generates too (no id serves two events): those of the events
-- already stored are claimed here, so that no later append can take one.
INSERT INTO _event_store.es_event_ids SELECT DISTINCT e.event_id FROM @extschema@.event_store e
    ON CONFLICT DO NOTHING;

-- Every internal function and aggregate of the extension (named _es_*), by oid.
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.oid::pg_catalog.regprocedure AS sig, p.prokind
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) d.objid
         WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass::pg_catalog.oid
           AND d.refobjid OPERATOR(pg_catalog.=) (SELECT e.oid FROM pg_catalog.pg_extension e
                                                   WHERE e.extname OPERATOR(pg_catalog.=) 'event_store'::name)
           AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass::pg_catalog.oid
           AND d.deptype OPERATOR(pg_catalog.=) 'e'::"char"
           AND pg_catalog.starts_with(p.proname::text, '_es_')
    LOOP
        EXECUTE pg_catalog.format('ALTER %s %s SET SCHEMA _event_store',
                                  CASE f.prokind WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END, f.sig);
    END LOOP;
END
$$;

-- Plain functions now, SQL-standard bodies or C in 0.3.0 with other attributes: replaced below.

-- sql/updates/0.3.0--0.4.0.sql
-- event_store 0.3.0 -> 0.4.0: projection workers become a cluster-wide pool (docs/operations.md).
-- Nothing of 0.3.0's tables, data or privileges changes: the new function (_es_worker_state),
-- the time slice in _es_project_batch, es_projections' worker columns and the workers'
-- metrics are all definitions, which scripts/update-script.py appends from the install script.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

-- sql/updates/0.4.0--0.5.0.sql
-- event_store 0.4.0 -> 0.5.0: tags on events and conditional appends (docs/dcb.md). The tags
-- column (constant default: no table rewrite) and its index; es_append and _es_event_hash
-- gain a tags argument, so their old signatures go. Everything else is definitions, which
-- scripts/update-script.py appends from the install script.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
-- A function whose body names event_store's row type would block the new column; the
-- definitions make it again with tags (it came with 0.3.0: absent on the way from older ones).
DROP FUNCTION IF EXISTS _event_store._es_event(_event_store.log);
ALTER TABLE @extschema@.event_store ADD COLUMN tags text[] NOT NULL DEFAULT '{}';
CREATE INDEX event_store_tags_idx ON @extschema@.event_store USING gin (tags) WITH (fastupdate = off)
    WHERE tags OPERATOR(pg_catalog.<>) '{}'::text[];
DROP FUNCTION @extschema@.es_append(text, text, jsonb, jsonb, bigint, uuid, integer);
DROP FUNCTION _event_store._es_event_hash(bytea, uuid, text, bigint, bigint, text, integer, timestamptz, text, text);

-- sql/updates/0.5.0--0.6.0.sql
-- event_store 0.5.0 -> 0.6.0: es_dcb_read becomes a function of the extension's library
-- (src/dcb/read.rs) instead of PL/pgSQL, which leaves the two helpers it called unused.
-- Its new definition is appended from the install script by scripts/update-script.py. The
-- helpers came with 0.5.0: absent on the way from older versions.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
DROP FUNCTION IF EXISTS _event_store._es_dcb_items(jsonb);
DROP FUNCTION IF EXISTS _event_store._es_dcb_check_limit(integer);

-- sql/updates/0.6.0--0.7.0.sql
-- event_store 0.6.0 -> 0.7.0: es_dcb_append and es_dcb_read lose their planner SET clauses
-- (jit, plan_cache_mode, timescaledb.enable_chunk_append), now set around their statements
-- (src/pg/plans.rs, for_few_rows). Only definitions change: scripts/update-script.py appends
-- them from the install script, and CREATE OR REPLACE FUNCTION replaces a function's SET
-- clauses with the new definition's.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

-- The definitions of the install script.
COMMENT ON SCHEMA _event_store IS 'event_store''s internals: tables, functions and views only the extension uses directly.';
CREATE OR REPLACE FUNCTION _event_store._es_category(stream_id text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN pg_catalog.split_part(stream_id, '-', 1);
CREATE OR REPLACE FUNCTION @extschema@.es_uuidv7() RETURNS uuid
    LANGUAGE c STRICT VOLATILE PARALLEL SAFE AS 'MODULE_PATHNAME', 'es_uuidv7_wrapper';
COMMENT ON TABLE @extschema@.event_store IS 'Append-only event log: write with es_append, never UPDATE, DELETE or TRUNCATE.';
COMMENT ON TABLE _event_store.es_streams IS 'Stream registry maintained by es_append: current version, time bounds and head hash of every stream.';
COMMENT ON TABLE _event_store.es_event_ids IS 'Every event id, caller-chosen or generated, claimed by es_append so that no id is held by two events and concurrent retries of one id are stored once.';
CREATE OR REPLACE VIEW _event_store.log WITH (security_invoker = true) AS SELECT * FROM @extschema@.event_store;
COMMENT ON VIEW _event_store.log IS 'event_store, bound by oid: what owner-run code reads and appends to.';
CREATE OR REPLACE FUNCTION _event_store._es_event(l _event_store.log) RETURNS @extschema@.event_store
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN ROW(l.global_position, l.event_id, l.stream_id, l.stream_version, l.event_type, l.event_data,
               l.metadata, l.event_version, l.created_at, l.transaction_id, l.hash, l.tags)::@extschema@.event_store;
CREATE OR REPLACE VIEW @extschema@.es_streams WITH (security_invoker = true) AS SELECT * FROM _event_store.es_streams;
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['event_store_reader', 'event_store_writer'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
    IF NOT pg_catalog.pg_has_role('event_store_writer', 'event_store_reader', 'MEMBER') THEN
        BEGIN
            GRANT event_store_reader TO event_store_writer;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION @extschema@.es_append(
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
CREATE OR REPLACE FUNCTION @extschema@.es_append_batch(stream_id text, events jsonb, expected_version bigint DEFAULT NULL)
RETURNS TABLE (event_id uuid, stream_version bigint, global_position bigint, created_at timestamptz)
LANGUAGE c VOLATILE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'es_append_batch';
COMMENT ON FUNCTION @extschema@.es_append_batch(text, jsonb, bigint) IS
    'Appends a JSON array of {"type","data","metadata"?,"id"?,"version"?,"tags"?} to one stream, all or nothing, at consecutive global positions.';
CREATE OR REPLACE FUNCTION @extschema@.es_append_multi(appends jsonb)
RETURNS TABLE (stream_id text, event_id uuid, stream_version bigint, global_position bigint, created_at timestamptz)
LANGUAGE c VOLATILE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'es_append_multi';
COMMENT ON FUNCTION @extschema@.es_append_multi(jsonb) IS
    'Appends to several streams atomically: a JSON array of {"stream_id","expected_version"?,"events"}; every expected version is checked, all or nothing, at consecutive global positions.';
CREATE OR REPLACE FUNCTION _event_store._es_append(stream_id text, event_type text, event_data jsonb, metadata jsonb,
                                        expected_version bigint, id uuid, event_version integer)
RETURNS TABLE (event_id uuid, stream_version bigint, global_position bigint, created_at timestamptz)
LANGUAGE c VOLATILE CALLED ON NULL INPUT SECURITY DEFINER ROWS 1
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'es_append';
COMMENT ON TABLE _event_store.es_digests IS 'Every digest es_digest took: position, counts, root hash, when and by whom.';
COMMENT ON TABLE _event_store.es_digest_heads IS 'Stream heads recorded by es_digest (only those changed since the previous digest).';
CREATE OR REPLACE VIEW @extschema@.es_digests WITH (security_invoker = true) AS SELECT * FROM _event_store.es_digests;
CREATE OR REPLACE VIEW @extschema@.es_digest_heads WITH (security_invoker = true) AS SELECT * FROM _event_store.es_digest_heads;
CREATE OR REPLACE FUNCTION @extschema@.es_digest() RETURNS jsonb
    LANGUAGE c STRICT VOLATILE SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_digest_wrapper';
CREATE OR REPLACE FUNCTION @extschema@.es_verify_digest(digest jsonb)
RETURNS TABLE (stream_id text, stream_version bigint, problem text, detail text)
    LANGUAGE c VOLATILE SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_verify_digest_wrapper';
COMMENT ON FUNCTION @extschema@.es_digest() IS
    'Takes a digest at the feed horizon (position, events, streams, Merkle root over stream heads) to keep outside the database.';
COMMENT ON FUNCTION @extschema@.es_verify_digest(jsonb) IS
    'One row per way the store fails to extend a digest es_digest returned; none when it does.';
CREATE OR REPLACE FUNCTION @extschema@.es_verify(stream_id text DEFAULT NULL, snapshots boolean DEFAULT false)
RETURNS TABLE (stream_id text, stream_version bigint, problem text, detail text)
    LANGUAGE c VOLATILE SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_verify_wrapper';
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'event_store_personal_data') THEN
        BEGIN
            CREATE ROLE event_store_personal_data NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;
COMMENT ON TABLE _event_store.es_subject_keys IS 'Keys that seal each subject''s personal data: destroyed by es_forget_subject. Owner only.';
CREATE OR REPLACE FUNCTION _event_store._es_reveal(event @extschema@.event_store) RETURNS @extschema@.event_store
    LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', '_es_reveal';
COMMENT ON FUNCTION _event_store._es_reveal(@extschema@.event_store) IS
    'The event with its personal data revealed as the current user may see it: plaintext, withheld, or erased.';
CREATE OR REPLACE FUNCTION _event_store._es_reveal_for_subject(event @extschema@.event_store, subject text) RETURNS @extschema@.event_store
    LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', '_es_reveal_for_subject';
COMMENT ON FUNCTION _event_store._es_reveal_for_subject(@extschema@.event_store, text) IS
    'The event as a subject''s export shows it: values sealed under that subject''s keys revealed, every other personal value withheld.';
CREATE OR REPLACE FUNCTION _event_store._es_refuse_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- TG_ARGV[0] names the guarded table: on a hypertable the trigger fires on chunks.
    RAISE EXCEPTION 'event_store: % of % is not allowed', TG_OP, TG_ARGV[0]
        USING ERRCODE = 'ES003',
              DETAIL = 'Events are append-only and es_streams is maintained by es_append.',
              HINT = 'Append a compensating event with es_append instead.';
END
$$;
CREATE OR REPLACE FUNCTION _event_store._es_guard_registry() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', '_es_guard_registry';
CREATE OR REPLACE FUNCTION _event_store.event_table() RETURNS pg_catalog.regclass
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN '@extschema@.event_store'::pg_catalog.regclass;
CREATE OR REPLACE FUNCTION _event_store._es_guard_event_store(enabled boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF enabled THEN
        EXECUTE pg_catalog.format('CREATE TRIGGER event_store_append_only BEFORE UPDATE OR DELETE ON %s '
                                  'FOR EACH ROW EXECUTE FUNCTION _event_store._es_refuse_change(''event_store'')',
                                  _event_store.event_table());
        EXECUTE pg_catalog.format('CREATE TRIGGER event_store_no_truncate BEFORE TRUNCATE ON %s '
                                  'FOR EACH STATEMENT EXECUTE FUNCTION _event_store._es_refuse_change(''event_store'')',
                                  _event_store.event_table());
    ELSE
        EXECUTE pg_catalog.format('DROP TRIGGER event_store_append_only ON %s', _event_store.event_table());
        EXECUTE pg_catalog.format('DROP TRIGGER event_store_no_truncate ON %s', _event_store.event_table());
    END IF;
END
$$;
CREATE OR REPLACE TRIGGER es_streams_guard BEFORE UPDATE OR DELETE ON _event_store.es_streams
    FOR EACH ROW EXECUTE FUNCTION _event_store._es_guard_registry();
CREATE OR REPLACE TRIGGER es_streams_no_truncate BEFORE TRUNCATE ON _event_store.es_streams
    FOR EACH STATEMENT EXECUTE FUNCTION _event_store._es_guard_registry();
CREATE OR REPLACE FUNCTION _event_store._es_timescaledb_schema() RETURNS name
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT n.nspname FROM pg_catalog.pg_extension x
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) x.extnamespace
     WHERE x.extname OPERATOR(pg_catalog.=) 'timescaledb'::name;
END;
CREATE OR REPLACE FUNCTION _event_store._es_is_hypertable() RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ts_schema name := _event_store._es_timescaledb_schema();
    found boolean;
BEGIN
    IF ts_schema IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT FROM _timescaledb_catalog.hypertable h
                             WHERE pg_catalog.format(''%I.%I'', h.schema_name, h.table_name)::pg_catalog.regclass
                                   OPERATOR(pg_catalog.=) $1)'
       INTO found USING _event_store.event_table();
    RETURN found;
END
$$;
CREATE OR REPLACE FUNCTION @extschema@.es_enable_hypertable(chunk_time_interval interval DEFAULT interval '7 days')
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ts_schema name := _event_store._es_timescaledb_schema();
BEGIN
    IF ts_schema IS NULL THEN
        RAISE EXCEPTION 'event_store: the timescaledb extension is not installed in this database'
            USING ERRCODE = '55000', HINT = 'Run CREATE EXTENSION timescaledb, then es_enable_hypertable().';
    END IF;
    IF _event_store._es_is_hypertable() THEN
        RETURN false;
    END IF;
    -- create_hypertable is called by name in TimescaleDB's schema, usually public, where a
    -- database owner may create functions: a better-matching create_hypertable there would run
    -- as the caller (a superuser). None may exist, and none may appear until this transaction
    -- ends (creating or renaming a function writes pg_proc, which this lock holds still).
    LOCK TABLE pg_catalog.pg_proc IN SHARE MODE;
    IF EXISTS (SELECT FROM pg_catalog.pg_proc p
                WHERE p.proname = 'create_hypertable'
                  AND p.pronamespace = (SELECT x.extnamespace FROM pg_catalog.pg_extension x WHERE x.extname = 'timescaledb')
                  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension x ON x.oid = d.refobjid
                                   WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                                     AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
                                     AND x.extname = 'timescaledb')) THEN
        RAISE EXCEPTION 'event_store: schema % has a create_hypertable that is not TimescaleDB''s', ts_schema
            USING ERRCODE = '42723',
                  HINT = 'Drop it: event_store calls only TimescaleDB''s own create_hypertable.';
    END IF;
    -- Migrating existing rows into chunks deletes them from the parent table. All of this
    -- is one transaction: no other session sees the table unguarded.
    PERFORM _event_store._es_guard_event_store(false);
    EXECUTE pg_catalog.format('SELECT %I.create_hypertable($1, $2, chunk_time_interval => $3, '
                              'create_default_indexes => $4, migrate_data => $5)', ts_schema)
        USING _event_store.event_table(), 'created_at'::name, chunk_time_interval, false, true;
    PERFORM _event_store._es_guard_event_store(true);
    RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@.es_enable_hypertable(interval) IS
    'Turns event_store into a TimescaleDB hypertable on created_at, moving existing events into chunks. Returns false when it already is one.';
CREATE OR REPLACE FUNCTION _event_store."_es_wake_projections"(
	"fresh" bool DEFAULT false /* bool */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_wake_projections_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_subject_hash"(
	"subject" TEXT /* & str */
) RETURNS bytea /* Vec < u8 > */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_subject_hash_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_reveal_data"(
	"doc" jsonb /* pgrx :: JsonB */
) RETURNS jsonb /* pgrx :: JsonB */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_reveal_data_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_consumer_group_member"(
	"stream_id" TEXT, /* & str */
	"size" INT /* i32 */
) RETURNS INT /* i32 */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_consumer_group_member_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_worker_state"() RETURNS TABLE (
	"state" TEXT,  /* String */
	"since" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"last_pass" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"workers" INT  /* i32 */
)
STRICT VOLATILE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_worker_state_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_projection_timer"(
	"on" bool /* bool */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_projection_timer_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_state_for_subject"(
	"stream_id" TEXT, /* & str */
	"subject" TEXT /* & str */
) RETURNS jsonb /* Option < pgrx :: JsonB > */
STRICT STABLE PARALLEL SAFE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_state_for_subject_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_check_append"(
	"stream_id" TEXT, /* Option < & str > */
	"expected_version" bigint, /* Option < i64 > */
	"batch_kind" TEXT, /* Option < & str > */
	"batch_len" INT /* Option < i32 > */
) RETURNS void
STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_check_append_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_check_reducer"(
	"category" TEXT, /* Option < & str > */
	"event_type" TEXT, /* Option < & str > */
	"rule" jsonb /* Option < pgrx :: JsonB > */
) RETURNS void
IMMUTABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_check_reducer_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_check_feed_read"(
	"max_count" INT, /* Option < i32 > */
	"member" INT, /* Option < i32 > */
	"size" INT /* Option < i32 > */
) RETURNS void
IMMUTABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_check_feed_read_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_subject_of"(
	"subject" TEXT, /* & str */
	"stream_id" TEXT, /* & str */
	"event_data" jsonb, /* pgrx :: JsonB */
	"metadata" jsonb /* pgrx :: JsonB */
) RETURNS TEXT /* Option < String > */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_subject_of_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_calling_role"() RETURNS TEXT /* String */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_calling_role_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_check_upcast"(
	"event_type" TEXT, /* Option < & str > */
	"from_version" INT, /* Option < i32 > */
	"rule" jsonb /* Option < pgrx :: JsonB > */
) RETURNS void
IMMUTABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_check_upcast_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_feed_holders"() RETURNS TABLE (
	"pid" INT,  /* i32 */
	"registered_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"lowest_position" bigint  /* i64 */
)
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_feed_holders_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_feed_horizon"() RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_feed_horizon_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_snapshot_at"(
	"stream_id" TEXT, /* & str */
	"version" bigint, /* i64 */
	"last_at" timestamp with time zone /* TimestampWithTimeZone */
) RETURNS bigint /* Option < i64 > */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_snapshot_at_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_check_event_type"(
	"event_type" TEXT, /* Option < & str > */
	"version" INT, /* Option < i32 > */
	"schema" jsonb, /* Option < pgrx :: JsonB > */
	"personal_data" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"subject" TEXT /* Option < & str > */
) RETURNS void
STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_check_event_type_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_check_catalog_mode"(
	"category" TEXT, /* Option < & str > */
	"mode" TEXT /* Option < & str > */
) RETURNS void
IMMUTABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_check_catalog_mode_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_setting_int"(
	"name" TEXT /* & str */
) RETURNS INT /* i32 */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_setting_int_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_take_snapshot"(
	"stream_id" TEXT /* & str */
) RETURNS bigint /* Option < i64 > */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_take_snapshot_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_event_hash"(
	"prev" bytea, /* Option < & [u8] > */
	"event_id" uuid, /* pgrx :: Uuid */
	"stream_id" TEXT, /* & str */
	"stream_version" bigint, /* i64 */
	"global_position" bigint, /* i64 */
	"event_type" TEXT, /* & str */
	"event_version" INT, /* i32 */
	"created_at" timestamp with time zone, /* TimestampWithTimeZone */
	"event_data" TEXT, /* & str */
	"metadata" TEXT, /* & str */
	"tags" TEXT[] DEFAULT '{}' /* Vec < String > */
) RETURNS bytea /* Vec < u8 > */
IMMUTABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_event_hash_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_calling_role_id"() RETURNS oid /* pg_sys :: Oid */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_calling_role_id_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_record"(
	"kind" TEXT, /* & str */
	"event_type" TEXT, /* & str */
	"event_data" jsonb /* pgrx :: JsonB */
) RETURNS bigint /* i64 */
STRICT VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_record_wrapper';
COMMENT ON TABLE _event_store.es_anchors IS 'Where es_apply_retention cut each stream: es_verify checks its chain from here.';
CREATE OR REPLACE VIEW @extschema@.es_anchors WITH (security_invoker = true) AS SELECT * FROM _event_store.es_anchors;
CREATE OR REPLACE FUNCTION _event_store._es_check_uncut(stream_id text) RETURNS boolean
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    first_kept bigint;
BEGIN
    SELECT a.first_version INTO first_kept FROM _event_store.es_anchors a
     WHERE a.stream_id = _es_check_uncut.stream_id;
    IF FOUND THEN
        RAISE EXCEPTION 'event_store: the state of % needs events that retention removed', _es_check_uncut.stream_id
            USING ERRCODE = 'ES008',
                  DETAIL = pg_catalog.format('Retention removed versions 1 to %s of the stream; a custom reducer has no snapshot that stands for them.', first_kept - 1);
    END IF;
    RETURN true;
END
$$;
COMMENT ON TABLE _event_store.es_retention IS 'The retention policy set by es_set_retention, applied by the projection worker.';
CREATE OR REPLACE VIEW @extschema@.es_retention WITH (security_invoker = true) AS SELECT * FROM _event_store.es_retention;
CREATE OR REPLACE FUNCTION _event_store._es_retention_cut(cut_before timestamptz)
RETURNS TABLE (stream_id text, stream_version bigint, hash bytea, global_position bigint, created_at timestamptz)
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
        SELECT DISTINCT ON (l.stream_id) l.stream_id, l.stream_version, l.hash, l.global_position, l.created_at
          FROM _event_store.log l WHERE l.created_at < _es_retention_cut.cut_before
         ORDER BY l.stream_id, l.stream_version DESC;
END
$$;
CREATE OR REPLACE FUNCTION _event_store._es_apply_retention(older_than interval, batch_size integer)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz;
    cut_before timestamptz;
    chunk text;
    hypertable boolean := false;
    complete boolean := true;
    removed bigint := 0;
    deleted bigint;
    streams bigint := 0;
    doc jsonb;
BEGIN
    IF older_than IS NULL OR batch_size IS NULL THEN
        RAISE EXCEPTION 'event_store: older_than and batch_size must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF older_than < interval '0' OR batch_size < 1 THEN
        RAISE EXCEPTION 'event_store: older_than must not be negative and batch_size must be positive'
            USING ERRCODE = '22023';
    END IF;
    -- One run at a time: two would anchor the same streams twice.
    LOCK TABLE _event_store.es_anchors IN SHARE ROW EXCLUSIVE MODE;
    cutoff := now() - older_than;
    hypertable := _event_store._es_is_hypertable();
    IF hypertable THEN
        -- Whole chunks: those that end by the cutoff. Chunks do not overlap, so the events
        -- before the latest such end are exactly theirs.
        SELECT max(c.range_end) INTO cut_before
          FROM timescaledb_information.chunks c, pg_catalog.pg_class t, pg_catalog.pg_namespace n
         WHERE t.oid = _event_store.event_table() AND n.oid = t.relnamespace
           AND c.hypertable_schema = n.nspname AND c.hypertable_name = t.relname
           AND c.range_end <= cutoff;
    ELSE
        -- In batches: the oldest batch_size events (more where they share an instant).
        SELECT e.created_at INTO cut_before FROM _event_store.log e
         WHERE e.created_at < cutoff ORDER BY e.created_at OFFSET batch_size LIMIT 1;
        IF cut_before IS NULL THEN
            cut_before := cutoff;
        ELSIF NOT EXISTS (SELECT FROM _event_store.log e WHERE e.created_at < cut_before) THEN
            cut_before := cut_before + interval '1 microsecond';
        END IF;
    END IF;
    IF cut_before IS NOT NULL THEN
        -- Each cut stream: a snapshot of its state at the cut, taken while every fold can still
        -- read the events (before any anchor), then the anchor; snapshots of removed versions
        -- go with them. One statement each: a loop would plan the folds' anchor probe once.
        PERFORM count(_event_store._es_snapshot_at(c.stream_id, c.stream_version, c.created_at))
           FROM _event_store._es_retention_cut(cut_before) c;
        DELETE FROM _event_store.es_snapshots s USING _event_store._es_retention_cut(cut_before) c
         WHERE s.stream_id = c.stream_id AND s.stream_version < c.stream_version;
        INSERT INTO _event_store.es_anchors AS a
               (stream_id, first_version, prev_hash, prev_position, prev_at, cut_at)
        SELECT c.stream_id, c.stream_version + 1, c.hash, c.global_position, c.created_at, now()
          FROM _event_store._es_retention_cut(cut_before) c
        ON CONFLICT (stream_id) DO UPDATE
           SET first_version = EXCLUDED.first_version, prev_hash = EXCLUDED.prev_hash,
               prev_position = EXCLUDED.prev_position, prev_at = EXCLUDED.prev_at,
               cut_at = EXCLUDED.cut_at;
        GET DIAGNOSTICS streams = ROW_COUNT;
        IF hypertable THEN
            SELECT count(*) INTO removed FROM _event_store.log e WHERE e.created_at < cut_before;
            -- Dropped as tables (TimescaleDB removes them from its catalog), not through
            -- drop_chunks: that is called by name in TimescaleDB's schema, usually public,
            -- where a database owner could add a better-matching drop_chunks.
            FOR chunk IN
                SELECT pg_catalog.format('%I.%I', c.chunk_schema, c.chunk_name)
                  FROM timescaledb_information.chunks c, pg_catalog.pg_class t, pg_catalog.pg_namespace n
                 WHERE t.oid = _event_store.event_table() AND n.oid = t.relnamespace
                   AND c.hypertable_schema = n.nspname AND c.hypertable_name = t.relname
                   AND c.range_end <= cut_before
            LOOP
                EXECUTE pg_catalog.format('DROP TABLE %s', chunk);
            END LOOP;
        END IF;
        -- The append-only trigger refuses every DELETE; replica mode skips it for this one
        -- statement of this transaction (the function's own GUC level undoes it on error).
        PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
        DELETE FROM _event_store.log e WHERE e.created_at < cut_before;
        GET DIAGNOSTICS deleted = ROW_COUNT;
        PERFORM pg_catalog.set_config('session_replication_role', 'origin', true);
        removed := removed + deleted;
    END IF;
    IF NOT hypertable THEN
        complete := NOT EXISTS (SELECT FROM _event_store.log e WHERE e.created_at < cutoff);
    END IF;
    doc := pg_catalog.jsonb_build_object(
        'older_than', older_than::text,
        'cut_before', cut_before,
        'events_removed', removed,
        'streams_cut', streams,
        'whole_chunks', hypertable,
        'complete', complete);
    IF removed > 0 THEN
        PERFORM _event_store._es_record('retention', 'RetentionApplied', doc);
    END IF;
    RETURN doc;
END
$$;
CREATE OR REPLACE FUNCTION @extschema@.es_apply_retention(older_than interval, batch_size integer DEFAULT 100000)
RETURNS jsonb
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN _event_store._es_apply_retention(es_apply_retention.older_than, es_apply_retention.batch_size);
COMMENT ON FUNCTION @extschema@.es_apply_retention(interval, integer) IS
    'Removes the events older than older_than (whole chunks on a hypertable, at most batch_size per call otherwise), anchoring each cut stream; recorded in event_store-retention.';
CREATE OR REPLACE FUNCTION @extschema@.es_set_retention(older_than interval) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF es_set_retention.older_than IS NULL THEN
        DELETE FROM _event_store.es_retention;
        RETURN;
    END IF;
    IF es_set_retention.older_than < interval '0' THEN
        RAISE EXCEPTION 'event_store: older_than must not be negative' USING ERRCODE = '22023';
    END IF;
    INSERT INTO _event_store.es_retention (older_than, set_by)
    VALUES (es_set_retention.older_than, _event_store._es_calling_role())
    ON CONFLICT (one) DO UPDATE
        SET older_than = EXCLUDED.older_than, set_at = now(), set_by = EXCLUDED.set_by, next_run_at = now();
    PERFORM _event_store._es_wake_projections(true);
END
$$;
COMMENT ON FUNCTION @extschema@.es_set_retention(interval) IS
    'Sets the retention policy the projection worker applies hourly (NULL: none).';
CREATE OR REPLACE FUNCTION _event_store._es_apply_retention_policy() RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    policy _event_store.es_retention;
    complete boolean;
BEGIN
    SELECT * INTO policy FROM _event_store.es_retention WHERE next_run_at <= now() FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    complete := (_event_store._es_apply_retention(policy.older_than, 100000) ->> 'complete')::boolean;
    UPDATE _event_store.es_retention
       SET next_run_at = CASE WHEN complete THEN now() + interval '1 hour' ELSE now() END;
    RETURN NOT complete;
END
$$;
COMMENT ON TABLE _event_store.es_reducers IS 'Declarative reducers: change with es_define_reducer and es_drop_reducer.';
CREATE OR REPLACE VIEW @extschema@.es_reducers WITH (security_invoker = true) AS SELECT * FROM _event_store.es_reducers;
COMMENT ON TABLE _event_store.es_snapshots IS 'Snapshots of stream states (derived data, safe to delete with es_drop_snapshots).';
CREATE OR REPLACE VIEW @extschema@.es_snapshots WITH (security_invoker = true) AS SELECT * FROM _event_store.es_snapshots;
CREATE OR REPLACE FUNCTION @extschema@.es_define_reducer(category text, event_type text, rule jsonb)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM _event_store._es_check_reducer($1, $2, $3);
    INSERT INTO _event_store.es_reducers (category, event_type, rule, defined_by)
    VALUES ($1, $2, $3, _event_store._es_calling_role())
    ON CONFLICT (category, event_type) DO UPDATE
        SET rule = EXCLUDED.rule, defined_at = now(), defined_by = EXCLUDED.defined_by;
    -- Snapshots under the old rules can never be used again.
    DELETE FROM _event_store.es_snapshots s WHERE $1 = '*' OR _event_store._es_category(s.stream_id) = $1;
END
$$;
COMMENT ON FUNCTION @extschema@.es_define_reducer(text, text, jsonb) IS
    'Defines or replaces how events of a type change the state of streams of a category (''*'' = any).';
CREATE OR REPLACE FUNCTION @extschema@.es_drop_reducer(category text, event_type text)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    DELETE FROM _event_store.es_reducers r WHERE r.category = $1 AND r.event_type = $2;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM _event_store.es_snapshots s WHERE $1 = '*' OR _event_store._es_category(s.stream_id) = $1;
    RETURN true;
END
$$;
CREATE OR REPLACE FUNCTION @extschema@.es_snapshot(stream_id text)
RETURNS bigint
LANGUAGE sql
VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT _event_store._es_take_snapshot($1) $$;
COMMENT ON FUNCTION @extschema@.es_snapshot(text) IS
    'Stores a snapshot of the stream''s current state; returns its version (NULL for a stream without events).';
CREATE OR REPLACE FUNCTION @extschema@.es_drop_snapshots(stream_id text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (DELETE FROM _event_store.es_snapshots s WHERE $1 IS NULL OR s.stream_id = $1 RETURNING 1)
    SELECT count(*) FROM gone
$$;
COMMENT ON FUNCTION @extschema@.es_drop_snapshots(text) IS
    'Deletes the snapshots of one stream, or all of them for NULL; answers do not change.';
CREATE OR REPLACE FUNCTION @extschema@.es_state(stream_id text) RETURNS jsonb
    LANGUAGE c STRICT STABLE PARALLEL SAFE SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_state_wrapper';
CREATE OR REPLACE FUNCTION @extschema@.es_state_at(stream_id text, at timestamptz) RETURNS jsonb
    LANGUAGE c STRICT STABLE PARALLEL SAFE SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_state_at_wrapper';
CREATE OR REPLACE FUNCTION @extschema@.es_state_at_version(stream_id text, version bigint) RETURNS jsonb
    LANGUAGE c STRICT STABLE PARALLEL SAFE SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_state_at_version_wrapper';
CREATE OR REPLACE FUNCTION @extschema@.es_diff(stream_id text, "from" timestamptz, "to" timestamptz)
RETURNS TABLE (stream_version bigint, event_id uuid, event_type text, created_at timestamptz,
               correlation_id text, path text, before jsonb, after jsonb)
    LANGUAGE c STRICT STABLE PARALLEL SAFE SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_diff_wrapper';
CREATE OR REPLACE FUNCTION _event_store._es_fold_rows(stream_id text, after_version bigint, upto_version bigint,
                                           from_at timestamptz, upto_at timestamptz)
RETURNS TABLE (event_type text, event_version integer, event_data jsonb)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT e.event_type, e.event_version, e.event_data
      FROM @extschema@.event_store e
     WHERE e.stream_id OPERATOR(pg_catalog.=) _es_fold_rows.stream_id
       AND e.stream_version OPERATOR(pg_catalog.>) COALESCE(_es_fold_rows.after_version, 0::bigint)
       AND e.stream_version OPERATOR(pg_catalog.<=) COALESCE(_es_fold_rows.upto_version, 9223372036854775807::bigint)
       AND e.created_at OPERATOR(pg_catalog.>=) COALESCE(_es_fold_rows.from_at, '-infinity'::timestamptz)
       AND e.created_at OPERATOR(pg_catalog.<=) COALESCE(_es_fold_rows.upto_at, 'infinity'::timestamptz)
     ORDER BY e.stream_version;
END;
CREATE OR REPLACE FUNCTION _event_store._es_diff_rows(stream_id text, after_at timestamptz, upto_at timestamptz,
                                           after_version bigint)
RETURNS TABLE (event_type text, event_data jsonb, stream_version bigint, created_at timestamptz,
               event_id uuid, correlation_id text, event_version integer)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT e.event_type, e.event_data, e.stream_version, e.created_at, e.event_id,
           e.metadata OPERATOR(pg_catalog.->>) 'correlationId'::text, e.event_version
      FROM @extschema@.event_store e
     WHERE e.stream_id OPERATOR(pg_catalog.=) _es_diff_rows.stream_id
       AND e.created_at OPERATOR(pg_catalog.>) _es_diff_rows.after_at
       AND e.created_at OPERATOR(pg_catalog.<=) _es_diff_rows.upto_at
       AND e.stream_version OPERATOR(pg_catalog.>) _es_diff_rows.after_version
     ORDER BY e.stream_version;
END;
CREATE OR REPLACE FUNCTION _event_store._es_fold_step(internal, @extschema@.event_store) RETURNS internal
    LANGUAGE c STABLE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', '_es_fold_step';
CREATE OR REPLACE FUNCTION _event_store._es_fold_final(internal) RETURNS jsonb
    LANGUAGE c STABLE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', '_es_fold_final';
CREATE OR REPLACE AGGREGATE @extschema@.es_fold(@extschema@.event_store) (
    SFUNC = _event_store._es_fold_step,
    STYPE = internal,
    FINALFUNC = _event_store._es_fold_final,
    FINALFUNC_MODIFY = READ_ONLY
);
CREATE OR REPLACE FUNCTION _event_store._es_fold_events_step(internal, text, integer, jsonb, jsonb, text) RETURNS internal
    LANGUAGE c STABLE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', '_es_fold_events_step';
CREATE OR REPLACE AGGREGATE _event_store._es_fold_events(event_type text, event_version integer, event_data jsonb, start jsonb, stream_id text) (
    SFUNC = _event_store._es_fold_events_step,
    STYPE = internal,
    FINALFUNC = _event_store._es_fold_final,
    FINALFUNC_MODIFY = READ_ONLY
);
CREATE OR REPLACE FUNCTION _event_store._es_fold_with(jsonb, @extschema@.event_store, regprocedure) RETURNS jsonb
    LANGUAGE c STABLE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', '_es_fold_with';
CREATE OR REPLACE AGGREGATE @extschema@.es_fold(@extschema@.event_store, regprocedure) (
    SFUNC = _event_store._es_fold_with,
    STYPE = jsonb
);
CREATE OR REPLACE FUNCTION _event_store._es_state_with(stream_id text, at timestamptz, version bigint, reducer regprocedure)
RETURNS jsonb
LANGUAGE sql STABLE STRICT
BEGIN ATOMIC
    SELECT @extschema@.es_fold(e, _es_state_with.reducer ORDER BY e.stream_version)
      FROM @extschema@.event_store e
     WHERE _event_store._es_check_uncut(_es_state_with.stream_id)
       AND e.stream_id OPERATOR(pg_catalog.=) _es_state_with.stream_id
       AND e.stream_version OPERATOR(pg_catalog.<=) _es_state_with.version
       AND e.created_at OPERATOR(pg_catalog.>=) (SELECT s.first_at FROM _event_store.es_streams s
                                                  WHERE s.stream_id OPERATOR(pg_catalog.=) _es_state_with.stream_id)
       AND e.created_at OPERATOR(pg_catalog.<=) LEAST(_es_state_with.at,
               (SELECT s.last_at FROM _event_store.es_streams s WHERE s.stream_id OPERATOR(pg_catalog.=) _es_state_with.stream_id));
END;
CREATE OR REPLACE FUNCTION @extschema@.es_state_at(stream_id text, at timestamptz, reducer regprocedure)
RETURNS jsonb
LANGUAGE sql STABLE STRICT
RETURN _event_store._es_state_with(es_state_at.stream_id, es_state_at.at, 9223372036854775807::bigint, es_state_at.reducer);
CREATE OR REPLACE FUNCTION @extschema@.es_state_at_version(stream_id text, version bigint, reducer regprocedure)
RETURNS jsonb
LANGUAGE sql STABLE STRICT
RETURN _event_store._es_state_with(es_state_at_version.stream_id, 'infinity'::timestamptz, es_state_at_version.version, es_state_at_version.reducer);
CREATE OR REPLACE FUNCTION @extschema@.es_state(stream_id text, reducer regprocedure)
RETURNS jsonb
LANGUAGE sql STABLE STRICT
RETURN _event_store._es_state_with(es_state.stream_id, 'infinity'::timestamptz, 9223372036854775807::bigint, es_state.reducer);
COMMENT ON TABLE _event_store.es_catalog_types IS 'Event types and their schemas per version: change with es_define_event_type and es_drop_event_type.';
COMMENT ON TABLE _event_store.es_upcasts IS 'Upcasts from one version of an event type to the next: change with es_define_upcast and es_drop_upcast.';
COMMENT ON TABLE _event_store.es_catalog_modes IS 'How appends to a category use the catalog (''*'': every category without its own): change with es_set_catalog_mode.';
CREATE OR REPLACE VIEW @extschema@.es_catalog_types WITH (security_invoker = true) AS SELECT * FROM _event_store.es_catalog_types;
CREATE OR REPLACE VIEW @extschema@.es_upcasts WITH (security_invoker = true) AS SELECT * FROM _event_store.es_upcasts;
CREATE OR REPLACE VIEW @extschema@.es_catalog_modes WITH (security_invoker = true) AS SELECT * FROM _event_store.es_catalog_modes;
CREATE OR REPLACE FUNCTION _event_store._es_catalog_changed() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', '_es_catalog_changed';
CREATE OR REPLACE TRIGGER es_catalog_types_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON _event_store.es_catalog_types
    FOR EACH STATEMENT EXECUTE FUNCTION _event_store._es_catalog_changed();
CREATE OR REPLACE TRIGGER es_upcasts_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON _event_store.es_upcasts
    FOR EACH STATEMENT EXECUTE FUNCTION _event_store._es_catalog_changed();
CREATE OR REPLACE TRIGGER es_catalog_modes_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON _event_store.es_catalog_modes
    FOR EACH STATEMENT EXECUTE FUNCTION _event_store._es_catalog_changed();
CREATE OR REPLACE VIEW @extschema@.es_event_types AS
SELECT t.event_type, t.version, t.schema, t.description, t.personal_data, t.subject,
       u.rule AS upcast_to_next, t.defined_at, t.defined_by
  FROM _event_store.es_catalog_types t
  LEFT JOIN _event_store.es_upcasts u ON u.event_type = t.event_type AND u.from_version = t.version;
COMMENT ON VIEW @extschema@.es_event_types IS 'The event catalog: every event type and version with its schema, personal data paths, subject and the upcast to the next version.';
CREATE OR REPLACE FUNCTION @extschema@.es_define_event_type(event_type text, schema jsonb DEFAULT NULL, version integer DEFAULT 1,
                                     description text DEFAULT NULL, personal_data text[] DEFAULT NULL,
                                     subject text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    -- Appends wait until the definition commits, and those in flight finish first: no event
    -- slips in between the check of stored events and the new schema (an append locks
    -- event_store before it reads the catalog).
    LOCK TABLE _event_store.log IN SHARE MODE;
    PERFORM _event_store._es_check_event_type($1, $3, $2, $5, $6);
    INSERT INTO _event_store.es_catalog_types (event_type, version, schema, description, personal_data, subject, defined_by)
    VALUES ($1, $3, $2, $4, coalesce($5, '{}'), $6, _event_store._es_calling_role())
    ON CONFLICT (event_type, version) DO UPDATE
        SET schema = EXCLUDED.schema, description = EXCLUDED.description,
            personal_data = EXCLUDED.personal_data, subject = EXCLUDED.subject,
            defined_at = now(), defined_by = EXCLUDED.defined_by;
END
$$;
COMMENT ON FUNCTION @extschema@.es_define_event_type(text, jsonb, integer, text, text[], text) IS
    'Defines or redefines an event type at a version: its JSON Schema (draft 2020-12), description, personal data paths and subject.';
CREATE OR REPLACE FUNCTION @extschema@.es_drop_event_type(event_type text, version integer DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'event_store: event_type must not be NULL' USING ERRCODE = '22004';
    END IF;
    DELETE FROM _event_store.es_catalog_types t WHERE t.event_type = $1 AND ($2 IS NULL OR t.version = $2);
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION @extschema@.es_drop_event_type(text, integer) IS
    'Removes an event type from the catalog, at one version or all (NULL); stored events and upcasts stay.';
CREATE OR REPLACE FUNCTION @extschema@.es_define_upcast(event_type text, from_version integer, rule jsonb)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM _event_store._es_check_upcast($1, $2, $3);
    INSERT INTO _event_store.es_upcasts (event_type, from_version, rule, defined_by)
    VALUES ($1, $2, $3, _event_store._es_calling_role())
    ON CONFLICT (event_type, from_version) DO UPDATE
        SET rule = EXCLUDED.rule, defined_at = now(), defined_by = EXCLUDED.defined_by;
    -- Snapshots are keyed by the upcasts they were folded with: the old ones can never be used.
    DELETE FROM _event_store.es_snapshots;
END
$$;
COMMENT ON FUNCTION @extschema@.es_define_upcast(text, integer, jsonb) IS
    'Defines or replaces how an event of a type at from_version becomes one at from_version + 1 (reducer operations plus rename).';
CREATE OR REPLACE FUNCTION @extschema@.es_drop_upcast(event_type text, from_version integer)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    DELETE FROM _event_store.es_upcasts u WHERE u.event_type = $1 AND u.from_version = $2;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM _event_store.es_snapshots;
    RETURN true;
END
$$;
CREATE OR REPLACE FUNCTION @extschema@.es_set_catalog_mode(category text, mode text)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM _event_store._es_check_catalog_mode($1, $2);
    LOCK TABLE _event_store.log IN SHARE MODE;
    INSERT INTO _event_store.es_catalog_modes (category, mode, set_by)
    VALUES ($1, $2, _event_store._es_calling_role())
    ON CONFLICT (category) DO UPDATE SET mode = EXCLUDED.mode, set_at = now(), set_by = EXCLUDED.set_by;
END
$$;
COMMENT ON FUNCTION @extschema@.es_set_catalog_mode(text, text) IS
    'How appends to a category (''*'': every category without its own) use the catalog: open (default), strict or off.';
CREATE OR REPLACE FUNCTION @extschema@.es_upcast(event @extschema@.event_store) RETURNS @extschema@.event_store
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'es_upcast';
COMMENT ON FUNCTION @extschema@.es_upcast(@extschema@.event_store) IS
    'The event upcast to its type''s latest version (the event itself when no upcast applies).';
CREATE OR REPLACE FUNCTION _event_store._es_upcast(event @extschema@.event_store) RETURNS @extschema@.event_store
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'es_upcast';
CREATE OR REPLACE FUNCTION @extschema@.es_catalog()
RETURNS TABLE (event_type text, in_catalog boolean, description text, versions jsonb,
               personal_data text[], subject text, events_by_version jsonb,
               first_seen timestamptz, last_seen timestamptz, categories text[])
LANGUAGE sql
STABLE
BEGIN ATOMIC
    WITH stored AS (
        SELECT e.event_type, e.event_version, count(*) AS n, min(e.created_at) AS first_seen,
               max(e.created_at) AS last_seen,
               array_agg(DISTINCT _event_store._es_category(e.stream_id)) AS categories
          FROM @extschema@.event_store e
         GROUP BY e.event_type, e.event_version
    ),
    stored_types AS (
        SELECT s.event_type, jsonb_object_agg(s.event_version::text, s.n) AS events_by_version,
               min(s.first_seen) AS first_seen, max(s.last_seen) AS last_seen,
               (SELECT array_agg(DISTINCT c ORDER BY c) FROM stored s2, unnest(s2.categories) c
                 WHERE s2.event_type = s.event_type) AS categories
          FROM stored s
         GROUP BY s.event_type
    ),
    defined AS (
        SELECT t.event_type, latest.description, latest.personal_data, latest.subject,
               jsonb_agg(jsonb_build_object('version', t.version, 'schema', t.schema,
                                            'upcast_to_next', u.rule, 'defined_at', t.defined_at)
                         ORDER BY t.version) AS versions
          FROM _event_store.es_catalog_types t
          LEFT JOIN _event_store.es_upcasts u ON u.event_type = t.event_type AND u.from_version = t.version
          -- The description, personal data and subject of the latest version.
          CROSS JOIN LATERAL (SELECT l.description, l.personal_data, l.subject
                                FROM _event_store.es_catalog_types l
                               WHERE l.event_type = t.event_type
                               ORDER BY l.version DESC LIMIT 1) latest
         GROUP BY t.event_type, latest.description, latest.personal_data, latest.subject
    )
    SELECT coalesce(d.event_type, s.event_type), d.event_type IS NOT NULL, d.description,
           coalesce(d.versions, '[]'), coalesce(d.personal_data, '{}'), d.subject,
           coalesce(s.events_by_version, '{}'), s.first_seen, s.last_seen, coalesce(s.categories, '{}')
      FROM defined d
      FULL JOIN stored_types s ON s.event_type = d.event_type
     ORDER BY 1;
END;
COMMENT ON FUNCTION @extschema@.es_catalog() IS
    'The event catalog as a document: one row per event type defined or stored, with its versions, schemas, personal data, counts per version, first and last seen, and categories.';
CREATE OR REPLACE FUNCTION @extschema@.es_stream(stream_id text, from_version bigint DEFAULT 1, max_count bigint DEFAULT NULL,
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
CREATE OR REPLACE FUNCTION @extschema@.es_stream_version(stream_id text)
RETURNS bigint
LANGUAGE sql
STABLE STRICT
RETURN COALESCE((SELECT r.version FROM _event_store.es_streams r WHERE r.stream_id OPERATOR(pg_catalog.=) es_stream_version.stream_id), 0::bigint);
COMMENT ON FUNCTION @extschema@.es_stream_version(text) IS 'Current version of a stream, 0 when it does not exist.';
CREATE OR REPLACE FUNCTION @extschema@.es_subject_export(subject text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    doc jsonb;
BEGIN
    IF es_subject_export.subject IS NULL THEN
        RAISE EXCEPTION 'event_store: subject must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF es_subject_export.subject = '' THEN
        RAISE EXCEPTION 'event_store: subject must not be empty' USING ERRCODE = '22023';
    END IF;
    WITH about AS (
        -- Only the values sealed under the subject's own keys open.
        SELECT (r.e).*
          FROM _event_store.es_catalog_types t
          JOIN _event_store.log l ON l.event_type = t.event_type AND l.event_version = t.version,
               LATERAL (SELECT _event_store._es_reveal_for_subject(_event_store._es_event(l), es_subject_export.subject) AS e
                        OFFSET 0) r
         WHERE t.subject IS NOT NULL
           AND _event_store._es_subject_of(t.subject, (r.e).stream_id, (r.e).event_data, (r.e).metadata) = es_subject_export.subject
    )
    SELECT jsonb_build_object(
               'subject', es_subject_export.subject,
               'exported_at', now(),
               'exported_by', _event_store._es_calling_role(),
               'events', coalesce((
                   SELECT jsonb_agg(jsonb_build_object(
                              'stream_id', a.stream_id, 'stream_version', a.stream_version,
                              'global_position', a.global_position, 'event_id', a.event_id,
                              'event_type', a.event_type, 'event_version', a.event_version,
                              'created_at', a.created_at,
                              'appended_by', a.metadata -> 'appendedBy',
                              'correlation_id', a.metadata -> 'correlationId',
                              'causation_id', a.metadata -> 'causationId',
                              'data', a.event_data, 'metadata', a.metadata)
                          ORDER BY a.global_position)
                     FROM about a), '[]'),
               'streams', coalesce((
                   SELECT jsonb_object_agg(s.stream_id, jsonb_build_object(
                              'version', (SELECT v.version FROM _event_store.es_streams v WHERE v.stream_id = s.stream_id),
                              'state', _event_store._es_state_for_subject(s.stream_id, es_subject_export.subject)))
                     FROM (SELECT DISTINCT a.stream_id FROM about a) s), '{}'))
      INTO doc;
    -- The record holds no personal data: the subject only as a hash.
    PERFORM _event_store._es_record('privacy', 'SubjectExported', jsonb_build_object(
        'subject_sha256', encode(_event_store._es_subject_hash(es_subject_export.subject), 'hex'),
        'events', jsonb_array_length(doc -> 'events'),
        'streams', (SELECT count(*) FROM jsonb_object_keys(doc -> 'streams'))));
    RETURN doc;
END
$$;
COMMENT ON FUNCTION @extschema@.es_subject_export(text) IS
    'GDPR Art. 15: every event about a subject (by the catalog''s subject pointers) with provenance, and the state of each stream involved; recorded in event_store-privacy.';
CREATE OR REPLACE FUNCTION @extschema@.es_forget_subject(subject text, reason text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    destroyed bigint;
BEGIN
    IF es_forget_subject.subject IS NULL OR es_forget_subject.reason IS NULL THEN
        RAISE EXCEPTION 'event_store: subject and reason must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF es_forget_subject.subject = '' OR btrim(es_forget_subject.reason) = '' THEN
        RAISE EXCEPTION 'event_store: subject and reason must not be empty' USING ERRCODE = '22023';
    END IF;
    UPDATE _event_store.es_subject_keys k
       SET wrapped = NULL, destroyed_at = now(), destroyed_by = _event_store._es_calling_role()
     WHERE k.subject_hash = _event_store._es_subject_hash(es_forget_subject.subject) AND k.wrapped IS NOT NULL;
    GET DIAGNOSTICS destroyed = ROW_COUNT;
    PERFORM _event_store._es_record('privacy', 'SubjectForgotten', jsonb_build_object(
        'subject_sha256', encode(_event_store._es_subject_hash(es_forget_subject.subject), 'hex'),
        'keys_destroyed', destroyed,
        'reason', es_forget_subject.reason));
    RETURN destroyed;
END
$$;
COMMENT ON FUNCTION @extschema@.es_forget_subject(text, text) IS
    'GDPR Art. 17: destroys the subject''s key (every value sealed with it reads as [erased]); recorded in event_store-privacy.';
CREATE OR REPLACE FUNCTION _event_store."_es_feed_in_flight"() RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_feed_in_flight_wrapper';
CREATE OR REPLACE FUNCTION _event_store."_es_check_feed_isolation"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_check_feed_isolation_wrapper';
COMMENT ON TABLE _event_store.es_feed_published IS 'The feed horizon last published for hot standbys: written by es_publish_feed_horizon().';
CREATE OR REPLACE VIEW @extschema@.es_feed_published WITH (security_invoker = true) AS SELECT * FROM _event_store.es_feed_published;
CREATE OR REPLACE FUNCTION _event_store._es_publish_feed_horizon() RETURNS bigint
LANGUAGE sql
VOLATILE
BEGIN ATOMIC
    UPDATE _event_store.es_feed_published p SET horizon = h.horizon, published_at = pg_catalog.now()
      FROM (SELECT _event_store._es_feed_horizon() AS horizon) h
     WHERE p.horizon OPERATOR(pg_catalog.<) h.horizon;
    SELECT p.horizon FROM _event_store.es_feed_published p;
END;
CREATE OR REPLACE FUNCTION @extschema@.es_publish_feed_horizon() RETURNS bigint
LANGUAGE sql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN _event_store._es_publish_feed_horizon();
COMMENT ON FUNCTION @extschema@.es_publish_feed_horizon() IS
    'Publishes the feed horizon for reads on hot standbys (the worker does it on every pass); returns it.';
CREATE OR REPLACE FUNCTION _event_store._es_read_feed(after_position bigint, max_count integer, event_types text[], category text,
                                           member integer, group_size integer, upcast boolean)
RETURNS SETOF @extschema@.event_store
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Computed before the query below takes its snapshot: everything up to it has settled.
    horizon bigint := _event_store._es_feed_horizon();
BEGIN
    PERFORM _event_store._es_check_feed_isolation();
    PERFORM _event_store._es_check_feed_read(max_count, member, group_size);
    IF upcast THEN
        RETURN QUERY
            SELECT (u.e).* FROM _event_store._es_read_feed(after_position, max_count, event_types, category,
                                                            member, group_size, false) e,
                   LATERAL (SELECT _event_store._es_upcast(e) AS e OFFSET 0) u
             ORDER BY (u.e).global_position;
        RETURN;
    END IF;
    RETURN QUERY
        SELECT (r.e).*
          FROM _event_store.log l,
               LATERAL (SELECT _event_store._es_reveal(_event_store._es_event(l)) AS e OFFSET 0) r
         WHERE l.global_position > coalesce(after_position, 0) AND l.global_position <= horizon
           AND (event_types IS NULL OR l.event_type = ANY (event_types))
           AND (category IS NULL OR _event_store._es_category(l.stream_id) = category)
           AND (group_size IS NULL OR _event_store._es_consumer_group_member(l.stream_id, group_size) = member)
         ORDER BY l.global_position
         LIMIT max_count;
END
$$;
CREATE OR REPLACE FUNCTION @extschema@.es_read_all(after_position bigint DEFAULT 0, max_count integer DEFAULT 1000, event_types text[] DEFAULT NULL,
                                        upcast boolean DEFAULT false)
RETURNS SETOF @extschema@.event_store
LANGUAGE sql
VOLATILE
BEGIN ATOMIC
    SELECT * FROM _event_store._es_read_feed(es_read_all.after_position, es_read_all.max_count, es_read_all.event_types,
                                             NULL::text, NULL::integer, NULL::integer, COALESCE(es_read_all.upcast, false));
END;
COMMENT ON FUNCTION @extschema@.es_read_all(bigint, integer, text[], boolean) IS
    'Committed events after a position, in position order; called again with the last position received, it returns every committed event exactly once.';
CREATE OR REPLACE FUNCTION @extschema@.es_read_category(category text, after_position bigint DEFAULT 0, max_count integer DEFAULT 1000,
                                             consumer_group_member integer DEFAULT NULL, consumer_group_size integer DEFAULT NULL,
                                             upcast boolean DEFAULT false)
RETURNS SETOF @extschema@.event_store
LANGUAGE sql
VOLATILE
BEGIN ATOMIC
    SELECT * FROM _event_store._es_read_feed(es_read_category.after_position, es_read_category.max_count, NULL::text[],
                                             COALESCE(es_read_category.category, ''::text), es_read_category.consumer_group_member,
                                             es_read_category.consumer_group_size, COALESCE(es_read_category.upcast, false));
END;
COMMENT ON FUNCTION @extschema@.es_read_category(text, bigint, integer, integer, integer, boolean) IS
    'es_read_all for the streams of one category (stream id up to its first "-"), optionally split between consumer group members by stream.';
CREATE OR REPLACE VIEW @extschema@.es_feed_in_flight AS
SELECT * FROM _event_store._es_feed_holders();
COMMENT ON VIEW @extschema@.es_feed_in_flight IS 'Appends in flight that hold the feed horizon back: pid, registered_at, lowest_position.';
COMMENT ON TABLE _event_store.es_checkpoints IS 'Positions of feed consumers: change with es_save_checkpoint.';
CREATE OR REPLACE VIEW @extschema@.es_checkpoints WITH (security_invoker = true) AS SELECT * FROM _event_store.es_checkpoints;
CREATE OR REPLACE FUNCTION @extschema@.es_feed_horizon() RETURNS bigint
    LANGUAGE sql VOLATILE
    RETURN _event_store._es_feed_horizon();
COMMENT ON FUNCTION @extschema@.es_feed_horizon() IS
    'The highest position below which every event has committed or never will.';
CREATE OR REPLACE FUNCTION @extschema@.es_save_checkpoint(consumer text, "position" bigint)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    -- By oid: a role's name read back as text and cast to regrole may name another role.
    caller pg_catalog.regrole := _event_store._es_calling_role_id()::pg_catalog.regrole;
    saved _event_store.es_checkpoints;
BEGIN
    PERFORM _event_store._es_check_append($1, NULL::bigint, 'array'::text, 1);  -- same rules as a stream id
    IF $2 IS NULL THEN
        RAISE EXCEPTION 'event_store: position must not be NULL' USING ERRCODE = '22004';
    ELSIF $2 < 0 THEN
        RAISE EXCEPTION 'event_store: position must be 0 or more, got %', $2 USING ERRCODE = '22023';
    END IF;
    -- Two transactions saving one consumer queue on its row; the second sees the first's
    -- position (ON CONFLICT locks the row before its WHERE is checked).
    INSERT INTO _event_store.es_checkpoints AS c (consumer, position, owner)
    VALUES ($1, $2, caller)
    ON CONFLICT (consumer) DO UPDATE SET position = EXCLUDED.position, saved_at = now()
     WHERE pg_catalog.pg_has_role(caller::pg_catalog.oid, c.owner::pg_catalog.oid, 'MEMBER'::pg_catalog.text) AND c.position < EXCLUDED.position;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO saved FROM _event_store.es_checkpoints c WHERE c.consumer = $1;
    IF NOT pg_catalog.pg_has_role(caller::pg_catalog.oid, saved.owner::pg_catalog.oid, 'MEMBER'::pg_catalog.text) THEN
        RAISE EXCEPTION 'event_store: consumer "%" belongs to %', $1, saved.owner USING ERRCODE = '42501';
    END IF;
    RAISE EXCEPTION 'event_store: checkpoint of consumer "%" is at %; a new one must be later, got %', $1, saved.position, $2
        USING ERRCODE = 'ES007',
              HINT = 'A consumer that saves a position at or below its last one has handled events twice or read out of order.';
END
$$;
COMMENT ON FUNCTION @extschema@.es_save_checkpoint(text, bigint) IS
    'Saves a consumer''s position in the caller''s transaction; it must be later than the saved one.';
CREATE OR REPLACE FUNCTION @extschema@.es_checkpoint(consumer text)
RETURNS bigint
LANGUAGE sql
STABLE STRICT
RETURN (SELECT c.position FROM _event_store.es_checkpoints c WHERE c.consumer OPERATOR(pg_catalog.=) es_checkpoint.consumer);
COMMENT ON FUNCTION @extschema@.es_checkpoint(text) IS
    'A consumer''s saved position; NULL when it has none (es_read_all reads NULL as 0).';
CREATE OR REPLACE FUNCTION @extschema@.es_dcb_append(events jsonb, condition jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- The planner settings its statements need are set around them (src/pg/plans.rs,
-- for_few_rows), not here: a SET clause costs every call, most of which run no statement.
AS 'MODULE_PATHNAME', 'es_dcb_append';
COMMENT ON FUNCTION @extschema@.es_dcb_append(jsonb, jsonb) IS
    'Appends a JSON array of {"type","data","tags"?,"id"?,"metadata"?,"version"?,"stream_id"?} at consecutive positions in array order, unless an event matching condition''s fail_if_events_match was stored after its "after" (SQLSTATE ES001); returns the last position.';
CREATE OR REPLACE FUNCTION @extschema@.es_dcb_read(query jsonb DEFAULT NULL, after bigint DEFAULT NULL, "limit" integer DEFAULT NULL)
RETURNS TABLE (global_position bigint, event_type text, event_data jsonb, tags text[], metadata jsonb, created_at timestamptz)
LANGUAGE c VOLATILE CALLED ON NULL INPUT
SET search_path = pg_catalog, pg_temp
-- Planner settings as for es_dcb_append.
AS 'MODULE_PATHNAME', 'es_dcb_read';
COMMENT ON FUNCTION @extschema@.es_dcb_read(jsonb, bigint, integer) IS
    'Committed events matching a DCB query ({"items": [{"types": [...], "tags": [...]}]}; NULL or no items: all) after a position, in position order, at most limit (NULL: all), never past es_feed_horizon().';
CREATE OR REPLACE FUNCTION _event_store."_es_run_as"(
	"func" oid, /* pg_sys :: Oid */
	"owner" oid, /* pg_sys :: Oid */
	"event" @extschema@.event_store /* Option < :: pgrx :: heap_tuple :: PgHeapTuple < '_, :: pgrx :: pgbox ::
AllocatedByRust > > */
) RETURNS bool /* bool */
VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_run_as_wrapper';
CREATE OR REPLACE VIEW @extschema@.es_projection_state WITH (security_invoker = true) AS SELECT * FROM _event_store.es_projection_state;
CREATE OR REPLACE FUNCTION _event_store._es_projection_for_update(p_name text) RETURNS _event_store.es_projection_state
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p _event_store.es_projection_state;
BEGIN
    SELECT * INTO p FROM _event_store.es_projection_state WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event_store: projection "%" does not exist', p_name USING ERRCODE = '42704';
    END IF;
    IF NOT pg_catalog.pg_has_role(_event_store._es_calling_role_id(), p.owner::pg_catalog.oid, 'MEMBER'::pg_catalog.text) THEN
        RAISE EXCEPTION 'event_store: only members of % may manage projection "%"', p.owner, p_name
            USING ERRCODE = '42501';
    END IF;
    RETURN p;
END
$$;
CREATE OR REPLACE FUNCTION @extschema@.es_create_projection(name text, handler regprocedure, event_types text[] DEFAULT NULL,
                                     categories text[] DEFAULT NULL, reset_handler regprocedure DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- By oid: a role's name read back as text and cast to regrole may name another role.
    caller pg_catalog.regrole := _event_store._es_calling_role_id()::pg_catalog.regrole;
    f regprocedure;
BEGIN
    PERFORM _event_store._es_check_append(name, NULL::bigint, 'array'::text, 1);  -- same rules as a stream id
    IF handler IS NULL THEN
        RAISE EXCEPTION 'event_store: handler must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) caller::pg_catalog.oid) THEN
        RAISE EXCEPTION 'event_store: projection handlers never run as a superuser'
            USING ERRCODE = '42501',
                  HINT = 'Create the projection as the role that owns its tables: SET ROLE that_role; SELECT es_create_projection(...).';
    END IF;
    FOREACH f IN ARRAY array_remove(ARRAY[handler, reset_handler], NULL) LOOP
        IF NOT pg_catalog.has_function_privilege(caller::pg_catalog.oid, f::pg_catalog.oid, 'EXECUTE'::pg_catalog.text) THEN
            RAISE EXCEPTION 'event_store: % may not execute %', caller, f USING ERRCODE = '42501';
        END IF;
    END LOOP;
    IF (SELECT pronargs <> 1 OR proargtypes[0] <> (SELECT c.reltype FROM pg_catalog.pg_class c WHERE c.oid = _event_store.event_table()) OR prorettype <> 'void'::regtype OR proretset
          FROM pg_catalog.pg_proc WHERE oid = handler) THEN
        RAISE EXCEPTION 'event_store: handler % must take (event event_store) and return void', handler
            USING ERRCODE = '42P13';
    END IF;
    IF reset_handler IS NOT NULL AND (SELECT pronargs <> 0 OR prorettype <> 'void'::regtype FROM pg_catalog.pg_proc WHERE oid = reset_handler) THEN
        RAISE EXCEPTION 'event_store: reset_handler % must take no arguments and return void', reset_handler
            USING ERRCODE = '42P13';
    END IF;
    INSERT INTO _event_store.es_projection_state (name, handler, reset_handler, event_types, categories, owner)
    VALUES (es_create_projection.name, handler, reset_handler, event_types, categories, caller);
    PERFORM _event_store._es_wake_projections(true);
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'event_store: projection "%" already exists', es_create_projection.name USING ERRCODE = '42710';
END
$$;
CREATE OR REPLACE FUNCTION @extschema@.es_pause_projection(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM _event_store._es_projection_for_update(name);
    UPDATE _event_store.es_projection_state p SET status = 'paused', updated_at = now() WHERE p.name = es_pause_projection.name;
END
$$;
CREATE OR REPLACE FUNCTION @extschema@.es_resume_projection(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM _event_store._es_projection_for_update(name);
    UPDATE _event_store.es_projection_state p SET status = 'running', attempts = 0, retry_at = NULL, updated_at = now()
     WHERE p.name = es_resume_projection.name;
    PERFORM _event_store._es_wake_projections(true);
END
$$;
CREATE OR REPLACE FUNCTION @extschema@.es_rebuild_projection(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p _event_store.es_projection_state := _event_store._es_projection_for_update(name);
BEGIN
    IF p.reset_handler IS NOT NULL THEN
        PERFORM _event_store._es_run_as(p.reset_handler, p.owner, NULL);
    END IF;
    UPDATE _event_store.es_projection_state s SET status = 'rebuilding', position = 0, attempts = 0, retry_at = NULL,
           last_error = NULL, last_error_position = NULL, updated_at = now()
     WHERE s.name = p.name;
    PERFORM _event_store._es_wake_projections(true);
END
$$;
CREATE OR REPLACE FUNCTION @extschema@.es_drop_projection(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM _event_store._es_projection_for_update(name);
    DELETE FROM _event_store.es_projection_state p WHERE p.name = es_drop_projection.name;
END
$$;
CREATE OR REPLACE FUNCTION _event_store._es_project_batch(p_name text, p_batch_size integer, p_horizon bigint) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p       _event_store.es_projection_state;
    r       record;
    applied integer := 0;
    at_pos  bigint;
    msg     text;
    state   text;
    timed_out boolean;
    -- A batch takes new events for one time slice at most, then commits what it applied and
    -- yields to the other projections: a slow handler delays only its own projection.
    cut_at  timestamptz := pg_catalog.clock_timestamp()
                           OPERATOR(pg_catalog.+) _event_store._es_setting_int('event_store.projection_time_slice') * interval '1 millisecond';
    cut     boolean := false;
BEGIN
    -- SKIP LOCKED: a worker and a manual es_run_projections() never apply one batch twice.
    SELECT * INTO p FROM _event_store.es_projection_state WHERE name = p_name FOR UPDATE SKIP LOCKED;
    IF NOT FOUND OR p.status IN ('paused', 'failed') OR p.retry_at > now() THEN
        RETURN 0;
    END IF;
    at_pos := p.position;
    BEGIN
        -- A handler that runs past event_store.projection_timeout is cancelled: it holds up
        -- only its own projection, which records the timeout as a failure.
        PERFORM _event_store._es_projection_timer(true);
        -- Handlers see events as their types' latest versions. Planned afresh for every batch
        -- (EXECUTE): a plan this long-lived backend kept could miss a TimescaleDB chunk another
        -- session created since, and the batch would move past its events.
        FOR r IN EXECUTE
            'SELECT l.global_position, _event_store._es_upcast(_event_store._es_event(l)) AS event
               FROM _event_store.log l
              WHERE l.global_position > $1 AND l.global_position <= $2
                AND ($3 IS NULL OR l.event_type = ANY ($3))
                AND ($4 IS NULL OR _event_store._es_category(l.stream_id) = ANY ($4))
              ORDER BY l.global_position
              LIMIT $5'
            USING p.position, p_horizon, p.event_types, p.categories, p_batch_size
        LOOP
            at_pos := r.global_position;
            PERFORM _event_store._es_run_as(p.handler, p.owner, r.event);
            applied := applied + 1;
            IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>=) cut_at THEN
                cut := true;
                EXIT;
            END IF;
        END LOOP;
        PERFORM _event_store._es_projection_timer(false);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
        timed_out := _event_store._es_projection_timer(false);
        IF state = '57014' THEN
            -- A cancel that is not the timer's (pg_cancel_backend, statement_timeout) cancels
            -- the whole pass, as it would any statement.
            IF NOT timed_out THEN
                RAISE;
            END IF;
            msg := format('the handler ran longer than event_store.projection_timeout (%s ms)',
                          _event_store._es_setting_int('event_store.projection_timeout'));
        END IF;
        UPDATE _event_store.es_projection_state s
           SET attempts = s.attempts + 1,
               status = CASE WHEN s.attempts + 1 >= _event_store._es_setting_int('event_store.projection_max_attempts') THEN 'failed' ELSE s.status END,
               retry_at = now() + least(interval '5 minutes',
                   _event_store._es_setting_int('event_store.projection_retry_delay') * interval '1 millisecond' * 2 ^ s.attempts),
               last_error = msg, last_error_position = at_pos, updated_at = now()
         WHERE s.name = p.name;
        RETURN 0;
    END;
    -- A short batch that ran out of events read everything matching up to the horizon.
    UPDATE _event_store.es_projection_state s
       SET position = CASE WHEN applied < p_batch_size AND NOT cut THEN greatest(p_horizon, p.position) ELSE at_pos END,
           status = CASE WHEN s.status = 'rebuilding' AND applied < p_batch_size AND NOT cut THEN 'running' ELSE s.status END,
           attempts = 0, retry_at = NULL, updated_at = now()
     WHERE s.name = p.name AND (applied > 0 OR s.position < p_horizon OR s.status = 'rebuilding');
    RETURN applied;
END
$$;
CREATE OR REPLACE FUNCTION @extschema@.es_run_projections(batch_size integer DEFAULT NULL) RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    -- One horizon (one pg_locks scan) for every projection of the pass.
    WITH horizon AS MATERIALIZED (SELECT _event_store._es_feed_horizon() AS h),
         caller AS MATERIALIZED (SELECT _event_store._es_calling_role_id() AS id)
    SELECT coalesce(sum(_event_store._es_project_batch(name, coalesce(batch_size, _event_store._es_setting_int('event_store.projection_batch_size')), h)), 0)::integer
      FROM (SELECT s.name FROM _event_store.es_projection_state s, caller
             WHERE (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) caller.id)
                OR pg_catalog.pg_has_role(caller.id, s.owner::pg_catalog.oid, 'MEMBER'::pg_catalog.text)
             ORDER BY s.name) p, horizon
$$;
CREATE OR REPLACE VIEW @extschema@.es_projections AS
WITH horizon AS MATERIALIZED (SELECT _event_store._es_feed_horizon() AS h)
SELECT p.name,
       CASE WHEN p.status = 'running' AND lag.events = 0 THEN 'caught up' ELSE p.status END AS status,
       p.position,
       lag.events AS lag_events,
       coalesce(extract(epoch FROM now() - lag.oldest), 0)::double precision AS lag_seconds,
       p.last_error,
       p.last_error_position,
       p.attempts,
       p.retry_at,
       p.owner,
       p.updated_at,
       w.state AS worker,
       w.since AS worker_since
  FROM _event_store.es_projection_state p,
       horizon,
       _event_store._es_worker_state() w,
       LATERAL (SELECT count(*) AS events, min(e.created_at) AS oldest
                  FROM @extschema@.event_store e
                 WHERE e.global_position > p.position AND e.global_position <= horizon.h
                   AND (p.event_types IS NULL OR e.event_type = ANY (p.event_types))
                   AND (p.categories IS NULL OR _event_store._es_category(e.stream_id) = ANY (p.categories))) lag;
COMMENT ON TABLE _event_store.es_verifications IS 'Every es_verify run by a role that sees all events: when, over what, and how many problems.';
CREATE OR REPLACE VIEW @extschema@.es_verifications WITH (security_invoker = true) AS SELECT * FROM _event_store.es_verifications;
CREATE OR REPLACE VIEW @extschema@.es_metrics AS
WITH categories AS (
    SELECT s.category, count(*) FILTER (WHERE s.version > 0) AS streams, sum(s.version) AS events,
           -- Removed by retention (es_anchors): appended, no longer held.
           coalesce(sum(a.first_version - 1), 0) AS removed
      FROM _event_store.es_streams s LEFT JOIN _event_store.es_anchors a ON a.stream_id = s.stream_id
     GROUP BY s.category
),
feed AS (
    SELECT _event_store._es_feed_horizon() AS horizon,
           coalesce(pg_catalog.pg_sequence_last_value('_event_store.es_global_position_seq'::pg_catalog.regclass), 0) AS handed_out
),
projections AS (
    SELECT p.name, p.status, p.position, p.attempts, f.horizon,
           (SELECT e.created_at FROM @extschema@.event_store e
             WHERE e.global_position > p.position AND e.global_position <= f.horizon
             ORDER BY e.global_position LIMIT 1) AS oldest_pending_at
      FROM _event_store.es_projection_state p, feed f
)
SELECT 'event_store_writes_total' AS name, pg_catalog.jsonb_build_object('category', c.category) AS labels,
       c.events::float8 AS value, 'counter' AS type,
       'Events appended to the streams of a category' AS help
  FROM categories c
UNION ALL
SELECT 'event_store_events', '{}', coalesce(sum(c.events - c.removed), 0)::float8, 'gauge',
       'Events in the store (appended, less those retention removed)'
  FROM categories c
UNION ALL
SELECT 'event_store_streams', '{}', coalesce(sum(c.streams), 0)::float8, 'gauge', 'Streams with at least one event'
  FROM categories c
UNION ALL
SELECT 'projection_lag_events', pg_catalog.jsonb_build_object('projection', p.name),
       greatest(p.horizon - p.position, 0)::float8, 'gauge',
       'Feed positions between a projection and the horizon (an upper bound of its pending events)'
  FROM projections p
UNION ALL
SELECT 'projection_lag_seconds', pg_catalog.jsonb_build_object('projection', p.name),
       coalesce(extract(epoch FROM pg_catalog.now() - p.oldest_pending_at), 0)::float8, 'gauge',
       'Age of the oldest committed event a projection has not applied (0 when caught up)'
  FROM projections p
UNION ALL
SELECT 'event_store_projection_failed_attempts', pg_catalog.jsonb_build_object('projection', p.name),
       p.attempts::float8, 'gauge', 'Failed attempts of a projection''s current batch'
  FROM projections p
UNION ALL
SELECT 'event_store_projection_status', pg_catalog.jsonb_build_object('projection', p.name, 'status', s.status),
       (p.status = s.status)::int::float8, 'gauge', 'A projection''s status: 1 for the current one'
  FROM projections p, (VALUES ('running'), ('paused'), ('failed'), ('rebuilding')) AS s(status)
UNION ALL
SELECT 'event_store_feed_in_flight_positions', '{}', greatest(f.handed_out - f.horizon, 0)::float8, 'gauge',
       'Positions handed out to appends above the horizon: appends in flight, or rolled back'
  FROM feed f
UNION ALL
SELECT 'event_store_feed_oldest_in_flight_seconds', '{}',
       coalesce(extract(epoch FROM pg_catalog.now() - min(h.registered_at)), 0)::float8, 'gauge',
       'Age of the oldest append in flight, which holds the feed back (0 when none)'
  FROM _event_store._es_feed_holders() h
UNION ALL
-- Whether this database is served: 1 while a worker is connected or no work waits for one, 0
-- while work waits for a pool slot, max_worker_processes is used up, or nothing preloads the
-- library (_es_worker_state says which).
SELECT 'event_store_worker_up', pg_catalog.jsonb_build_object('database', pg_catalog.current_database(), 'state', w.state),
       (w.state IN ('serving', 'idle'))::int::float8, 'gauge',
       'Whether a projection worker serves this database (0: its projections and notifications wait)'
  FROM _event_store._es_worker_state() w
 WHERE w.state OPERATOR(pg_catalog.<>) 'standby'
UNION ALL
SELECT 'event_store_worker_last_pass_timestamp_seconds', pg_catalog.jsonb_build_object('database', pg_catalog.current_database()),
       extract(epoch FROM w.last_pass)::float8, 'gauge',
       'When a projection worker last finished a pass in this database (Unix time)'
  FROM _event_store._es_worker_state() w
 WHERE w.last_pass IS NOT NULL
UNION ALL
SELECT 'event_store_last_clean_verify_timestamp_seconds', '{}', extract(epoch FROM max(v.verified_at))::float8, 'gauge',
       'When es_verify last checked the whole store and found nothing wrong (Unix time)'
  FROM _event_store.es_verifications v
 WHERE v.stream_id IS NULL AND v.problems = 0
HAVING count(*) > 0
UNION ALL
SELECT 'event_store_retention_last_cut_timestamp_seconds', '{}', extract(epoch FROM max(a.cut_at))::float8, 'gauge',
       'When es_apply_retention last removed events (Unix time)'
  FROM _event_store.es_anchors a
HAVING count(*) > 0;
COMMENT ON VIEW @extschema@.es_metrics IS 'event_store''s metrics: name, labels, value, type, help (es_metrics_prometheus() formats them).';
CREATE OR REPLACE FUNCTION @extschema@.es_metrics_prometheus() RETURNS text
LANGUAGE sql
STABLE
BEGIN ATOMIC
    SELECT coalesce(string_agg(block, '' ORDER BY name), '')
      FROM (SELECT m.name,
                   format(E'# HELP %s %s\n# TYPE %s %s\n', m.name, m.help, m.name, m.type)
                   || string_agg(m.name || m.label_text || ' ' || m.value::text || E'\n', '' ORDER BY m.label_text) AS block
              FROM (SELECT x.*,
                           coalesce('{' || (SELECT string_agg(format('%s="%s"', l.key,
                                                  replace(replace(replace(l.value, '\', '\\'), '"', '\"'), E'\n', '\n')), ',' ORDER BY l.key)
                                              FROM jsonb_each_text(x.labels) l) || '}', '') AS label_text
                      FROM @extschema@.es_metrics x) m
             GROUP BY m.name, m.help, m.type) b;
END;
COMMENT ON FUNCTION @extschema@.es_metrics_prometheus() IS 'es_metrics in the Prometheus text exposition format.';
DO $$
DECLARE
    ext oid := (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'event_store'::name);
    obj text;
BEGIN
    FOR obj IN
        SELECT pg_catalog.format('FUNCTION %s', d.objid::pg_catalog.regprocedure)
          FROM pg_catalog.pg_depend d
         WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass::pg_catalog.oid
           AND d.refobjid OPERATOR(pg_catalog.=) ext
           AND d.deptype OPERATOR(pg_catalog.=) 'e'::"char"
           AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass::pg_catalog.oid
        UNION ALL
        SELECT pg_catalog.format(CASE c.relkind WHEN 'S' THEN 'SEQUENCE %s' ELSE 'TABLE %s' END, d.objid::pg_catalog.regclass)
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.objid
         WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass::pg_catalog.oid
           AND d.refobjid OPERATOR(pg_catalog.=) ext
           AND d.deptype OPERATOR(pg_catalog.=) 'e'::"char"
           AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM PUBLIC', obj);
    END LOOP;
END
$$;
GRANT USAGE ON SCHEMA @extschema@, _event_store TO event_store_reader;
GRANT SELECT ON @extschema@.event_store, _event_store.log,
                _event_store.es_streams, @extschema@.es_streams,
                _event_store.es_reducers, @extschema@.es_reducers,
                _event_store.es_snapshots, @extschema@.es_snapshots,
                _event_store.es_projection_state, @extschema@.es_projection_state,
                @extschema@.es_projections, @extschema@.es_feed_in_flight,
                _event_store.es_catalog_types, @extschema@.es_catalog_types,
                _event_store.es_upcasts, @extschema@.es_upcasts,
                _event_store.es_catalog_modes, @extschema@.es_catalog_modes,
                @extschema@.es_event_types,
                _event_store.es_checkpoints, @extschema@.es_checkpoints,
                @extschema@.es_metrics,
                _event_store.es_verifications, @extschema@.es_verifications,
                _event_store.es_feed_published, @extschema@.es_feed_published,
                _event_store.es_digests, @extschema@.es_digests,
                _event_store.es_digest_heads, @extschema@.es_digest_heads,
                _event_store.es_anchors, @extschema@.es_anchors,
                _event_store.es_retention, @extschema@.es_retention
   TO event_store_reader;
GRANT SELECT ON SEQUENCE _event_store.es_global_position_seq TO event_store_reader;
GRANT EXECUTE ON FUNCTION
    @extschema@.es_uuidv7(),
    _event_store._es_category(text),
    @extschema@.es_stream(text, bigint, bigint, boolean),
    _event_store._es_event(_event_store.log),
    @extschema@.es_upcast(@extschema@.event_store),
    _event_store._es_upcast(@extschema@.event_store),
    -- The reads reveal personal data as the reader may see it.
    _event_store._es_reveal(@extschema@.event_store),
    @extschema@.es_catalog(),
    @extschema@.es_stream_version(text),
    @extschema@.es_state(text),
    @extschema@.es_state_at(text, timestamptz),
    @extschema@.es_state_at_version(text, bigint),
    @extschema@.es_verify(text, boolean),
    -- An auditor takes digests and checks them against the store.
    @extschema@.es_digest(),
    @extschema@.es_verify_digest(jsonb),
    -- The feed reads run as the reader (row level security applies) and call these.
    _event_store._es_feed_horizon(),
    -- es_projections and es_metrics say whether a worker serves the database.
    _event_store._es_worker_state(),
    @extschema@.es_feed_horizon(),
    -- A consumer saves its position with its effects; it may only move its own.
    @extschema@.es_save_checkpoint(text, bigint),
    @extschema@.es_checkpoint(text),
    @extschema@.es_metrics_prometheus(),
    _event_store._es_feed_holders(),
    _event_store._es_check_feed_isolation(),
    _event_store._es_check_feed_read(integer, integer, integer),
    _event_store._es_consumer_group_member(text, integer),
    _event_store._es_read_feed(bigint, integer, text[], text, integer, integer, boolean),
    @extschema@.es_read_all(bigint, integer, text[], boolean),
    @extschema@.es_read_category(text, bigint, integer, integer, integer, boolean),
    @extschema@.es_dcb_read(jsonb, bigint, integer),
    @extschema@.es_create_projection(text, regprocedure, text[], text[], regprocedure),
    @extschema@.es_pause_projection(text),
    @extschema@.es_resume_projection(text),
    @extschema@.es_rebuild_projection(text),
    @extschema@.es_drop_projection(text),
    @extschema@.es_run_projections(integer),
    -- es_fold and the state functions run as the caller and use these aggregates.
    _event_store._es_fold_step(internal, @extschema@.event_store),
    _event_store._es_fold_final(internal),
    _event_store._es_fold_events_step(internal, text, integer, jsonb, jsonb, text),
    _event_store._es_fold_events(text, integer, jsonb, jsonb, text),
    _event_store._es_fold_with(jsonb, @extschema@.event_store, regprocedure),
    @extschema@.es_fold(@extschema@.event_store),
    @extschema@.es_fold(@extschema@.event_store, regprocedure),
    _event_store._es_state_with(text, timestamptz, bigint, regprocedure),
    @extschema@.es_state(text, regprocedure),
    @extschema@.es_state_at(text, timestamptz, regprocedure),
    @extschema@.es_state_at_version(text, bigint, regprocedure),
    _event_store._es_check_uncut(text),
    _event_store._es_fold_rows(text, bigint, bigint, timestamptz, timestamptz),
    _event_store._es_diff_rows(text, timestamptz, timestamptz, bigint),
    @extschema@.es_diff(text, timestamptz, timestamptz)
TO event_store_reader;
GRANT EXECUTE ON FUNCTION
    @extschema@.es_append(text, text, jsonb, jsonb, bigint, uuid, integer, text[]),
    @extschema@.es_append_batch(text, jsonb, bigint),
    @extschema@.es_append_multi(jsonb),
    @extschema@.es_dcb_append(jsonb, jsonb),
    @extschema@.es_snapshot(text)
TO event_store_writer;
