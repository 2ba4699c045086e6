-- Where things live. The public API (the es_* functions, the event_store table whose row
-- type handlers and reducers take, and views to read the rest) is in the extension's schema,
-- which on managed PostgreSQL is usually `public`, owned by the database owner. Everything
-- else is in _event_store: only the extension's owner creates objects there, and CREATE
-- SCHEMA fails (so does CREATE EXTENSION) when someone made a schema of that name first.
-- Code that runs with the owner's rights names only _event_store's objects, in full, and
-- reaches event_store through _event_store.log, a view bound to it by oid: renaming the
-- extension's schema, or creating objects, overloads or operators in it, changes nothing
-- that code does (docs/security.md).
CREATE SCHEMA _event_store;
COMMENT ON SCHEMA _event_store IS 'event_store''s internals: tables, functions and views only the extension uses directly.';

-- The rest of this script (and of every update script) resolves names in pg_catalog alone:
-- nothing anyone created in the extension's schema, in public or in pg_temp is picked up
-- while the superuser installs. So every object below is created and named in full.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

-- A stream's category: its id up to the first '-', the rule of event_store_core::stream.
-- A SQL-standard body, bound when created and inlined where queries use it, so they match the
-- category index below. The index and es_streams.category spell the expression out: a
-- function there would need EXECUTE from every role that writes those tables.
CREATE FUNCTION _event_store._es_category(stream_id text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN pg_catalog.split_part(stream_id, '-', 1);

-- Time-ordered event ids (src/append/ids.rs).
CREATE FUNCTION @extschema@.es_uuidv7() RETURNS uuid
    LANGUAGE c STRICT VOLATILE PARALLEL SAFE AS 'MODULE_PATHNAME', 'es_uuidv7_wrapper';

-- Positions in the global feed: unique and increasing; an append that rolls back leaves a gap.
CREATE SEQUENCE _event_store.es_global_position_seq AS bigint;

CREATE TABLE @extschema@.event_store (
    global_position bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    event_type      text        NOT NULL,
    event_data      jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    event_version   integer     NOT NULL DEFAULT 1 CHECK (event_version > 0),
    created_at      timestamptz NOT NULL,
    -- The appending transaction: groups events written together, for forensics and the feed.
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    -- SHA-256 chained to the previous event of the stream (see src/integrity/verify.rs).
    hash            bytea       NOT NULL,
    -- What conditional appends query (docs/dcb.md); in the hash when there are any.
    tags            text[]      NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE @extschema@.event_store IS 'Append-only event log: write with es_append, never UPDATE, DELETE or TRUNCATE.';

-- No unique indexes: a hypertable's would have to include created_at. The per-stream lock in
-- es_append keeps (stream_id, stream_version) unique and es_verify checks it.
-- created_at in the stream index lets a read of a stream up to an instant (a state in the
-- past; on a hypertable, every state query, whose time range excludes other chunks) check
-- the time in the index instead of in every event's row.
CREATE INDEX event_store_stream_idx   ON @extschema@.event_store (stream_id, stream_version, created_at);
CREATE INDEX event_store_position_idx ON @extschema@.event_store (global_position);
CREATE INDEX event_store_event_id_idx ON @extschema@.event_store (event_id);
CREATE INDEX event_store_type_idx     ON @extschema@.event_store (event_type, created_at);
CREATE INDEX event_store_time_idx     ON @extschema@.event_store (created_at);
-- es_read_category: a category's events in feed order.
CREATE INDEX event_store_category_idx ON @extschema@.event_store (pg_catalog.split_part(stream_id, '-', 1), global_position);
-- es_dcb_read and es_dcb_append's condition: events by tag. Untagged events, most of a
-- store's, cost it nothing; fastupdate off, so a condition never scans a pending list.
CREATE INDEX event_store_tags_idx ON @extschema@.event_store USING gin (tags) WITH (fastupdate = off)
    WHERE tags OPERATOR(pg_catalog.<>) '{}'::text[];

-- One row per stream: its head, and its time bounds so reads by stream exclude other chunks.
CREATE TABLE _event_store.es_streams (
    stream_id     text        PRIMARY KEY,
    category      text        GENERATED ALWAYS AS (pg_catalog.split_part(stream_id, '-', 1)) STORED,
    version       bigint      NOT NULL DEFAULT 0,
    first_at      timestamptz,
    last_at       timestamptz,
    last_position bigint,
    head_hash     bytea
);
CREATE INDEX es_streams_category_idx ON _event_store.es_streams (category);
COMMENT ON TABLE _event_store.es_streams IS 'Stream registry maintained by es_append: current version, time bounds and head hash of every stream.';

-- Every event id, chosen by the caller or generated by the store, claimed by its append:
-- concurrent appends of one id queue on its row here, and no id serves two events, since a
-- hypertable cannot carry a unique index on event_id alone.
CREATE TABLE _event_store.es_event_ids (
    event_id uuid PRIMARY KEY
);
COMMENT ON TABLE _event_store.es_event_ids IS 'Every event id, caller-chosen or generated, claimed by es_append so that no id is held by two events and concurrent retries of one id are stored once.';

-- pg_dump keeps the data of extension configuration tables.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.event_store', '');
SELECT pg_catalog.pg_extension_config_dump('_event_store.es_streams', '');
SELECT pg_catalog.pg_extension_config_dump('_event_store.es_event_ids', '');
SELECT pg_catalog.pg_extension_config_dump('_event_store.es_global_position_seq', '');

-- How owner-run code reaches event_store: a view stores the table's oid, not its name, so it
-- is the same table whatever the extension's schema is called later. Appends insert through
-- it; its rows are read as the caller (security_invoker: row level security applies).
CREATE VIEW _event_store.log WITH (security_invoker = true) AS SELECT * FROM @extschema@.event_store;
COMMENT ON VIEW _event_store.log IS 'event_store, bound by oid: what owner-run code reads and appends to.';

-- A row read through _event_store.log as an event_store row, for the functions that take one
-- (reveal, upcast, handlers). Bound when created: no type is looked up by name when it runs.
CREATE FUNCTION _event_store._es_event(l _event_store.log) RETURNS @extschema@.event_store
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN ROW(l.global_position, l.event_id, l.stream_id, l.stream_version, l.event_type, l.event_data,
               l.metadata, l.event_version, l.created_at, l.transaction_id, l.hash, l.tags)::@extschema@.event_store;

-- Reading the registry: the table is internal, the view is the extension's public face of it.
CREATE VIEW @extschema@.es_streams WITH (security_invoker = true) AS SELECT * FROM _event_store.es_streams;

-- Roles are cluster-wide: a second database installing the extension reuses them, and two
-- databases installing it at once must not fail on each other's CREATE ROLE.
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
