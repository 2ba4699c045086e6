-- event_store 0.1.0 -> 0.2.0 (ALTER EXTENSION event_store UPDATE).
-- 0.1.0 is what main shipped up to commit 7b97d24. This version adds the event catalog, consumer
-- checkpoints, metrics, the published feed horizon for hot standbys, digests, subject export
-- and erasure (personal data sealed per subject), and gives the reads an `upcast` argument and
-- their reveal of personal data. Tested by tests/upgrade.rs, which installs
-- 0.1.0 built from that commit, fills it, updates, and compares the result with a fresh
-- install of this version. Each statement below is this version's own (sql/*.sql, src/*.rs),
-- in the order a fresh install runs them.

-- Changed signatures: dropped here, created again below.
DROP FUNCTION es_stream(text, bigint, bigint);
DROP FUNCTION es_read_all(bigint, integer, text[]);
DROP FUNCTION es_read_category(text, bigint, integer, integer, integer);
DROP FUNCTION _es_read_feed(bigint, integer, text[], text, integer, integer);
DROP AGGREGATE _es_fold_events(text, jsonb, jsonb, text);
DROP FUNCTION _es_fold_events_step(internal, text, jsonb, jsonb, text);

-- Reading streams. Queries go through the stream's time bounds in es_streams so that a
-- hypertable with years of chunks only scans the chunks the stream lives in.

-- Personal data sealed per subject (src/personal.rs, core/src/personal.rs): the subjects' keys,
-- the role that sees personal data, and the reads' last step that reveals it.

-- Members see personal data in plaintext; every other reader sees it withheld. Cluster-wide,
-- like the reader and writer roles.
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

CREATE TABLE es_subject_keys (
    key_id       uuid        PRIMARY KEY,
    subject_hash bytea       NOT NULL,           -- _es_subject_hash(subject)
    wrapped      bytea,                          -- the key, wrapped by event_store.master_key when set
    created_at   timestamptz NOT NULL DEFAULT now(),
    destroyed_at timestamptz,
    destroyed_by text,
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
);

CREATE UNIQUE INDEX es_subject_keys_live ON es_subject_keys (subject_hash) WHERE wrapped IS NOT NULL;

COMMENT ON TABLE es_subject_keys IS 'Keys that seal each subject''s personal data: destroyed by es_forget_subject. Owner only.';

SELECT pg_catalog.pg_extension_config_dump('es_subject_keys', '');

CREATE FUNCTION _es_reveal(event event_store) RETURNS event_store
    LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', '_es_reveal';

COMMENT ON FUNCTION _es_reveal(event_store) IS
    'The event with its personal data revealed as the current user may see it: plaintext, withheld, or erased.';


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

CREATE  FUNCTION "_es_check_catalog_mode"(
	"category" TEXT, /* Option < & str > */
	"mode" TEXT /* Option < & str > */
) RETURNS void
IMMUTABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_check_catalog_mode_wrapper';

CREATE  FUNCTION "_es_check_event_type"(
	"event_type" TEXT, /* Option < & str > */
	"version" INT, /* Option < i32 > */
	"schema" jsonb, /* Option < pgrx :: JsonB > */
	"personal_data" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"subject" TEXT /* Option < & str > */
) RETURNS void
STABLE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_check_event_type_wrapper';

CREATE  FUNCTION "_es_check_upcast"(
	"event_type" TEXT, /* Option < & str > */
	"from_version" INT, /* Option < i32 > */
	"rule" jsonb /* Option < pgrx :: JsonB > */
) RETURNS void
IMMUTABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_check_upcast_wrapper';

CREATE TABLE es_feed_published (
    singleton    boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    horizon      bigint      NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO es_feed_published (horizon) VALUES (0);

COMMENT ON TABLE es_feed_published IS 'The feed horizon last published for hot standbys: written by es_publish_feed_horizon().';

CREATE FUNCTION es_publish_feed_horizon() RETURNS bigint
LANGUAGE sql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.es_feed_published p SET horizon = h.horizon, published_at = now()
      FROM (SELECT @extschema@._es_feed_horizon() AS horizon) h
     WHERE p.horizon < h.horizon;
    SELECT horizon FROM @extschema@.es_feed_published;
$$;

COMMENT ON FUNCTION es_publish_feed_horizon() IS
    'Publishes the feed horizon for reads on hot standbys (the worker does it on every pass); returns it.';

CREATE FUNCTION _es_read_feed(after_position bigint, max_count integer, event_types text[], category text,
                              member integer, group_size integer, upcast boolean)
RETURNS SETOF event_store
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Computed before the query below takes its snapshot: everything up to it has settled.
    horizon bigint := @extschema@._es_feed_horizon();
BEGIN
    PERFORM @extschema@._es_check_feed_isolation();
    PERFORM @extschema@._es_check_feed_read(max_count, member, group_size);
    IF upcast THEN
        RETURN QUERY
            SELECT u.* FROM @extschema@._es_read_feed(after_position, max_count, event_types, category,
                                                      member, group_size, false) e,
                   LATERAL @extschema@.es_upcast(e) u
             ORDER BY u.global_position;
        RETURN;
    END IF;
    -- Personal data revealed as the reader may see it (sql/personal.sql).
    RETURN QUERY
        SELECT r.* FROM @extschema@.event_store e, LATERAL @extschema@._es_reveal(e) r
         WHERE e.global_position > coalesce(after_position, 0) AND e.global_position <= horizon
           AND (event_types IS NULL OR e.event_type = ANY (event_types))
           AND (category IS NULL OR @extschema@._es_category(e.stream_id) = category)
           AND (group_size IS NULL OR @extschema@._es_consumer_group_member(e.stream_id, group_size) = member)
         ORDER BY e.global_position
         LIMIT max_count;
END
$$;

CREATE FUNCTION es_read_all(after_position bigint DEFAULT 0, max_count integer DEFAULT 1000, event_types text[] DEFAULT NULL,
                            upcast boolean DEFAULT false)
RETURNS SETOF event_store
LANGUAGE sql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM @extschema@._es_read_feed(after_position, max_count, event_types, NULL, NULL, NULL, coalesce(upcast, false))
$$;

COMMENT ON FUNCTION es_read_all(bigint, integer, text[], boolean) IS
    'Committed events after a position, in position order; called again with the last position received, it returns every committed event exactly once.';

CREATE FUNCTION es_read_category(category text, after_position bigint DEFAULT 0, max_count integer DEFAULT 1000,
                                 consumer_group_member integer DEFAULT NULL, consumer_group_size integer DEFAULT NULL,
                                 upcast boolean DEFAULT false)
RETURNS SETOF event_store
LANGUAGE sql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM @extschema@._es_read_feed(after_position, max_count, NULL, coalesce(category, ''), consumer_group_member, consumer_group_size, coalesce(upcast, false))
$$;

COMMENT ON FUNCTION es_read_category(text, bigint, integer, integer, integer, boolean) IS
    'es_read_all for the streams of one category (stream id up to its first "-"), optionally split between consumer group members by stream.';


-- Checkpoints of consumers outside the worker: the last feed position a consumer has handled,
-- saved in the consumer's own transaction so that its effects and its position commit (or
-- roll back) together. A consumer belongs to the role that first saved it.

CREATE TABLE es_checkpoints (
    consumer text        PRIMARY KEY,
    position bigint      NOT NULL CHECK (position >= 0),
    owner    regrole     NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE es_checkpoints IS 'Positions of feed consumers: change with es_save_checkpoint.';

SELECT pg_catalog.pg_extension_config_dump('es_checkpoints', '');

CREATE FUNCTION es_feed_horizon() RETURNS bigint
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pg_temp
    RETURN @extschema@._es_feed_horizon();

COMMENT ON FUNCTION es_feed_horizon() IS
    'The highest position below which every event has committed or never will.';

CREATE FUNCTION es_save_checkpoint(consumer text, "position" bigint)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    caller name := @extschema@._es_calling_role();
    saved @extschema@.es_checkpoints;
BEGIN
    PERFORM @extschema@._es_check_append($1, NULL, 'array', 1);  -- same rules as a stream id
    IF $2 IS NULL THEN
        RAISE EXCEPTION 'event_store: position must not be NULL' USING ERRCODE = '22004';
    ELSIF $2 < 0 THEN
        RAISE EXCEPTION 'event_store: position must be 0 or more, got %', $2 USING ERRCODE = '22023';
    END IF;
    -- Two transactions saving one consumer queue on its row; the second sees the first's
    -- position (ON CONFLICT locks the row before its WHERE is checked).
    INSERT INTO @extschema@.es_checkpoints AS c (consumer, position, owner)
    VALUES ($1, $2, caller::regrole)
    ON CONFLICT (consumer) DO UPDATE SET position = EXCLUDED.position, saved_at = now()
     WHERE pg_catalog.pg_has_role(caller, c.owner, 'MEMBER') AND c.position < EXCLUDED.position;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO saved FROM @extschema@.es_checkpoints c WHERE c.consumer = $1;
    IF NOT pg_catalog.pg_has_role(caller, saved.owner, 'MEMBER') THEN
        RAISE EXCEPTION 'event_store: consumer "%" belongs to %', $1, saved.owner USING ERRCODE = '42501';
    END IF;
    RAISE EXCEPTION 'event_store: checkpoint of consumer "%" is at %; a new one must be later, got %', $1, saved.position, $2
        USING ERRCODE = 'ES007',
              HINT = 'A consumer that saves a position at or below its last one has handled events twice or read out of order.';
END
$$;

COMMENT ON FUNCTION es_save_checkpoint(text, bigint) IS
    'Saves a consumer''s position in the caller''s transaction; it must be later than the saved one.';

CREATE FUNCTION es_checkpoint(consumer text)
RETURNS bigint
LANGUAGE sql
STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.position FROM @extschema@.es_checkpoints c WHERE c.consumer = $1
$$;

COMMENT ON FUNCTION es_checkpoint(text) IS
    'A consumer''s saved position; NULL when it has none (es_read_all reads NULL as 0).';

CREATE  FUNCTION "_es_record"(
	"kind" TEXT, /* & str */
	"event_type" TEXT, /* & str */
	"event_data" jsonb /* pgrx :: JsonB */
) RETURNS bigint /* i64 */
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_record_wrapper';

CREATE  FUNCTION "_es_reveal_data"(
	"doc" jsonb /* pgrx :: JsonB */
) RETURNS jsonb /* pgrx :: JsonB */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_reveal_data_wrapper';

CREATE  FUNCTION "_es_subject_hash"(
	"subject" TEXT /* & str */
) RETURNS bytea /* Vec < u8 > */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_subject_hash_wrapper';

CREATE  FUNCTION "_es_subject_of"(
	"subject" TEXT, /* & str */
	"stream_id" TEXT, /* & str */
	"event_data" jsonb, /* pgrx :: JsonB */
	"metadata" jsonb /* pgrx :: JsonB */
) RETURNS TEXT /* Option < String > */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_subject_of_wrapper';

CREATE FUNCTION _es_fold_events_step(internal, text, integer, jsonb, jsonb, text) RETURNS internal
    LANGUAGE c STABLE CALLED ON NULL INPUT AS 'MODULE_PATHNAME', '_es_fold_events_step';

CREATE AGGREGATE _es_fold_events(event_type text, event_version integer, event_data jsonb, start jsonb, stream_id text) (
    SFUNC = _es_fold_events_step,
    STYPE = internal,
    FINALFUNC = _es_fold_final,
    FINALFUNC_MODIFY = READ_ONLY
);


-- The event catalog (src/catalog.rs, core/src/catalog.rs): event types with a JSON Schema per
-- version, their personal data and subject, upcasts between versions, and per category how
-- appends use the catalog. Changed only through the functions below; dumped by pg_dump.

CREATE TABLE es_catalog_types (
    event_type    text        NOT NULL,
    version       integer     NOT NULL CHECK (version > 0),
    schema        jsonb,
    description   text,
    -- JSON Pointers into event_data that hold personal data, and whose data it is.
    personal_data text[]      NOT NULL DEFAULT '{}',
    subject       text,
    defined_at    timestamptz NOT NULL DEFAULT now(),
    defined_by    text        NOT NULL,
    PRIMARY KEY (event_type, version)
);

COMMENT ON TABLE es_catalog_types IS 'Event types and their schemas per version: change with es_define_event_type and es_drop_event_type.';

CREATE TABLE es_upcasts (
    event_type   text        NOT NULL,
    from_version integer     NOT NULL CHECK (from_version > 0),
    rule         jsonb       NOT NULL,
    defined_at   timestamptz NOT NULL DEFAULT now(),
    defined_by   text        NOT NULL,
    PRIMARY KEY (event_type, from_version)
);

COMMENT ON TABLE es_upcasts IS 'Upcasts from one version of an event type to the next: change with es_define_upcast and es_drop_upcast.';

CREATE TABLE es_catalog_modes (
    category text        PRIMARY KEY,
    mode     text        NOT NULL CHECK (mode IN ('open', 'strict', 'off')),
    set_at   timestamptz NOT NULL DEFAULT now(),
    set_by   text        NOT NULL
);

COMMENT ON TABLE es_catalog_modes IS 'How appends to a category use the catalog (''*'': every category without its own): change with es_set_catalog_mode.';

SELECT pg_catalog.pg_extension_config_dump('es_catalog_types', '');

SELECT pg_catalog.pg_extension_config_dump('es_upcasts', '');

SELECT pg_catalog.pg_extension_config_dump('es_catalog_modes', '');

CREATE FUNCTION _es_catalog_changed() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', '_es_catalog_changed';

CREATE TRIGGER es_catalog_types_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON es_catalog_types
    FOR EACH STATEMENT EXECUTE FUNCTION _es_catalog_changed();

CREATE TRIGGER es_upcasts_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON es_upcasts
    FOR EACH STATEMENT EXECUTE FUNCTION _es_catalog_changed();

CREATE TRIGGER es_catalog_modes_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON es_catalog_modes
    FOR EACH STATEMENT EXECUTE FUNCTION _es_catalog_changed();

CREATE VIEW es_event_types AS
SELECT t.event_type, t.version, t.schema, t.description, t.personal_data, t.subject,
       u.rule AS upcast_to_next, t.defined_at, t.defined_by
  FROM @extschema@.es_catalog_types t
  LEFT JOIN @extschema@.es_upcasts u ON u.event_type = t.event_type AND u.from_version = t.version;

COMMENT ON VIEW es_event_types IS 'The event catalog: every event type and version with its schema, personal data paths, subject and the upcast to the next version.';

CREATE FUNCTION es_define_event_type(event_type text, schema jsonb DEFAULT NULL, version integer DEFAULT 1,
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
    LOCK TABLE @extschema@.event_store IN SHARE MODE;
    PERFORM @extschema@._es_check_event_type($1, $3, $2, $5, $6);
    INSERT INTO @extschema@.es_catalog_types (event_type, version, schema, description, personal_data, subject, defined_by)
    VALUES ($1, $3, $2, $4, coalesce($5, '{}'), $6, @extschema@._es_calling_role())
    ON CONFLICT (event_type, version) DO UPDATE
        SET schema = EXCLUDED.schema, description = EXCLUDED.description,
            personal_data = EXCLUDED.personal_data, subject = EXCLUDED.subject,
            defined_at = now(), defined_by = EXCLUDED.defined_by;
END
$$;

COMMENT ON FUNCTION es_define_event_type(text, jsonb, integer, text, text[], text) IS
    'Defines or redefines an event type at a version: its JSON Schema (draft 2020-12), description, personal data paths and subject.';

CREATE FUNCTION es_drop_event_type(event_type text, version integer DEFAULT NULL)
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
    DELETE FROM @extschema@.es_catalog_types t WHERE t.event_type = $1 AND ($2 IS NULL OR t.version = $2);
    RETURN FOUND;
END
$$;

COMMENT ON FUNCTION es_drop_event_type(text, integer) IS
    'Removes an event type from the catalog, at one version or all (NULL); stored events and upcasts stay.';

CREATE FUNCTION es_define_upcast(event_type text, from_version integer, rule jsonb)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM @extschema@._es_check_upcast($1, $2, $3);
    INSERT INTO @extschema@.es_upcasts (event_type, from_version, rule, defined_by)
    VALUES ($1, $2, $3, @extschema@._es_calling_role())
    ON CONFLICT (event_type, from_version) DO UPDATE
        SET rule = EXCLUDED.rule, defined_at = now(), defined_by = EXCLUDED.defined_by;
    -- Snapshots are keyed by the upcasts they were folded with: the old ones can never be used.
    DELETE FROM @extschema@.es_snapshots;
END
$$;

COMMENT ON FUNCTION es_define_upcast(text, integer, jsonb) IS
    'Defines or replaces how an event of a type at from_version becomes one at from_version + 1 (reducer operations plus rename).';

CREATE FUNCTION es_drop_upcast(event_type text, from_version integer)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    DELETE FROM @extschema@.es_upcasts u WHERE u.event_type = $1 AND u.from_version = $2;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM @extschema@.es_snapshots;
    RETURN true;
END
$$;

CREATE FUNCTION es_set_catalog_mode(category text, mode text)
RETURNS void
LANGUAGE plpgsql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM @extschema@._es_check_catalog_mode($1, $2);
    LOCK TABLE @extschema@.event_store IN SHARE MODE;
    INSERT INTO @extschema@.es_catalog_modes (category, mode, set_by)
    VALUES ($1, $2, @extschema@._es_calling_role())
    ON CONFLICT (category) DO UPDATE SET mode = EXCLUDED.mode, set_at = now(), set_by = EXCLUDED.set_by;
END
$$;

COMMENT ON FUNCTION es_set_catalog_mode(text, text) IS
    'How appends to a category (''*'': every category without its own) use the catalog: open (default), strict or off.';

CREATE FUNCTION es_upcast(event event_store) RETURNS event_store
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'es_upcast';

COMMENT ON FUNCTION es_upcast(event_store) IS
    'The event upcast to its type''s latest version (the event itself when no upcast applies).';

CREATE FUNCTION es_catalog()
RETURNS TABLE (event_type text, in_catalog boolean, description text, versions jsonb,
               personal_data text[], subject text, events_by_version jsonb,
               first_seen timestamptz, last_seen timestamptz, categories text[])
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH stored AS (
        SELECT e.event_type, e.event_version, count(*) AS n, min(e.created_at) AS first_seen,
               max(e.created_at) AS last_seen,
               array_agg(DISTINCT @extschema@._es_category(e.stream_id)) AS categories
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
          FROM @extschema@.es_catalog_types t
          LEFT JOIN @extschema@.es_upcasts u ON u.event_type = t.event_type AND u.from_version = t.version
          -- The description, personal data and subject of the latest version.
          CROSS JOIN LATERAL (SELECT l.description, l.personal_data, l.subject
                                FROM @extschema@.es_catalog_types l
                               WHERE l.event_type = t.event_type
                               ORDER BY l.version DESC LIMIT 1) latest
         GROUP BY t.event_type, latest.description, latest.personal_data, latest.subject
    )
    SELECT coalesce(d.event_type, s.event_type), d.event_type IS NOT NULL, d.description,
           coalesce(d.versions, '[]'), coalesce(d.personal_data, '{}'), d.subject,
           coalesce(s.events_by_version, '{}'), s.first_seen, s.last_seen, coalesce(s.categories, '{}')
      FROM defined d
      FULL JOIN stored_types s ON s.event_type = d.event_type
     ORDER BY 1
$$;

COMMENT ON FUNCTION es_catalog() IS
    'The event catalog as a document: one row per event type defined or stored, with its versions, schemas, personal data, counts per version, first and last seen, and categories.';

CREATE OR REPLACE FUNCTION _es_project_batch(p_name text, p_batch_size integer, p_horizon bigint) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p       @extschema@.es_projection_state;
    e       @extschema@.event_store;
    applied integer := 0;
    at_pos  bigint;
    msg     text;
    state   text;
    timed_out boolean;
BEGIN
    -- SKIP LOCKED: a worker and a manual es_run_projections() never apply one batch twice.
    SELECT * INTO p FROM @extschema@.es_projection_state WHERE name = p_name FOR UPDATE SKIP LOCKED;
    IF NOT FOUND OR p.status IN ('paused', 'failed') OR p.retry_at > now() THEN
        RETURN 0;
    END IF;
    at_pos := p.position;
    BEGIN
        -- A handler that runs past event_store.projection_timeout is cancelled: it holds up
        -- only its own projection, which records the timeout as a failure.
        PERFORM @extschema@._es_projection_timer(true);
        FOR e IN
            SELECT * FROM @extschema@.event_store ev
             WHERE ev.global_position > p.position AND ev.global_position <= p_horizon
               AND (p.event_types IS NULL OR ev.event_type = ANY (p.event_types))
               AND (p.categories IS NULL OR @extschema@._es_category(ev.stream_id) = ANY (p.categories))
             ORDER BY ev.global_position
             LIMIT p_batch_size
        LOOP
            at_pos := e.global_position;
            -- Handlers see events as their types' latest versions.
            PERFORM @extschema@._es_run_as(p.handler, p.owner, @extschema@.es_upcast(e));
            applied := applied + 1;
        END LOOP;
        PERFORM @extschema@._es_projection_timer(false);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, state = RETURNED_SQLSTATE;
        timed_out := @extschema@._es_projection_timer(false);
        IF state = '57014' THEN
            -- A cancel that is not the timer's (pg_cancel_backend, statement_timeout) cancels
            -- the whole pass, as it would any statement.
            IF NOT timed_out THEN
                RAISE;
            END IF;
            msg := format('the handler ran longer than event_store.projection_timeout (%s ms)',
                          @extschema@._es_setting_int('event_store.projection_timeout'));
        END IF;
        UPDATE @extschema@.es_projection_state s
           SET attempts = s.attempts + 1,
               status = CASE WHEN s.attempts + 1 >= @extschema@._es_setting_int('event_store.projection_max_attempts') THEN 'failed' ELSE s.status END,
               retry_at = now() + least(interval '5 minutes',
                   @extschema@._es_setting_int('event_store.projection_retry_delay') * interval '1 millisecond' * 2 ^ s.attempts),
               last_error = msg, last_error_position = at_pos, updated_at = now()
         WHERE s.name = p.name;
        RETURN 0;
    END;
    -- A short batch read everything matching up to the horizon.
    UPDATE @extschema@.es_projection_state s
       SET position = CASE WHEN applied < p_batch_size THEN greatest(p_horizon, p.position) ELSE at_pos END,
           status = CASE WHEN s.status = 'rebuilding' AND applied < p_batch_size THEN 'running' ELSE s.status END,
           attempts = 0, retry_at = NULL, updated_at = now()
     WHERE s.name = p.name AND (applied > 0 OR s.position < p_horizon OR s.status = 'rebuilding');
    RETURN applied;
END
$$;


-- Metrics for Prometheus: es_metrics as rows, es_metrics_prometheus() in the text exposition
-- format. Built from the registry (one row per stream), the projections' rows, the feed's
-- shared state and the verification log: no scan of event_store beyond one index probe per
-- projection, so a scrape costs the same on 10M events as on 10 (benches/run.sh measures it).

-- Every es_verify run (src/integrity.rs writes it as the extension owner, on a primary, when
-- the caller sees every event): the time of the last clean one is evidence and a metric.
CREATE TABLE es_verifications (
    verified_at timestamptz NOT NULL DEFAULT now(),
    stream_id   text,                     -- NULL: the whole store
    snapshots   boolean     NOT NULL,
    problems    bigint      NOT NULL,
    verified_by text        NOT NULL
);

COMMENT ON TABLE es_verifications IS 'Every es_verify run by a role that sees all events: when, over what, and how many problems.';

SELECT pg_catalog.pg_extension_config_dump('es_verifications', '');


CREATE  FUNCTION "es_digest"() RETURNS jsonb /* pgrx :: JsonB */
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'es_digest_wrapper';


-- Data subjects' rights (GDPR): what the store holds about a subject, found through the
-- catalog's subject pointers (sql/catalog.sql). Each use is recorded in the store's own stream
-- event_store-privacy (_es_record, src/append.rs), which the feed delivers to projections.

CREATE FUNCTION es_subject_export(subject text) RETURNS jsonb
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
        SELECT r.*
          FROM @extschema@.es_catalog_types t
          JOIN @extschema@.event_store e ON e.event_type = t.event_type AND e.event_version = t.version,
               LATERAL @extschema@._es_reveal(e) r
         WHERE t.subject IS NOT NULL
           AND @extschema@._es_subject_of(t.subject, r.stream_id, r.event_data, r.metadata) = es_subject_export.subject
    )
    SELECT jsonb_build_object(
               'subject', es_subject_export.subject,
               'exported_at', now(),
               'exported_by', @extschema@._es_calling_role(),
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
                              'version', @extschema@.es_stream_version(s.stream_id),
                              'state', @extschema@.es_state(s.stream_id)))
                     FROM (SELECT DISTINCT a.stream_id FROM about a) s), '{}'))
      INTO doc;
    -- The record holds no personal data: the subject only as a hash.
    PERFORM @extschema@._es_record('privacy', 'SubjectExported', jsonb_build_object(
        'subject_sha256', encode(@extschema@._es_subject_hash(es_subject_export.subject), 'hex'),
        'events', jsonb_array_length(doc -> 'events'),
        'streams', (SELECT count(*) FROM jsonb_object_keys(doc -> 'streams'))));
    RETURN doc;
END
$$;

COMMENT ON FUNCTION es_subject_export(text) IS
    'GDPR Art. 15: every event about a subject (by the catalog''s subject pointers) with provenance, and the state of each stream involved; recorded in event_store-privacy.';

CREATE FUNCTION es_forget_subject(subject text, reason text) RETURNS bigint
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
    UPDATE @extschema@.es_subject_keys k
       SET wrapped = NULL, destroyed_at = now(), destroyed_by = @extschema@._es_calling_role()
     WHERE k.subject_hash = @extschema@._es_subject_hash(es_forget_subject.subject) AND k.wrapped IS NOT NULL;
    GET DIAGNOSTICS destroyed = ROW_COUNT;
    PERFORM @extschema@._es_record('privacy', 'SubjectForgotten', jsonb_build_object(
        'subject_sha256', encode(@extschema@._es_subject_hash(es_forget_subject.subject), 'hex'),
        'keys_destroyed', destroyed,
        'reason', es_forget_subject.reason));
    RETURN destroyed;
END
$$;

COMMENT ON FUNCTION es_forget_subject(text, text) IS
    'GDPR Art. 17: destroys the subject''s key (every value sealed with it reads as [erased]); recorded in event_store-privacy.';

CREATE OR REPLACE FUNCTION "es_verify"(
	"stream_id" TEXT DEFAULT NULL, /* Option < & str > */
	"snapshots" bool DEFAULT false /* Option < bool > */
) RETURNS TABLE (
	"stream_id" TEXT,  /* String */
	"stream_version" bigint,  /* Option < i64 > */
	"problem" TEXT,  /* String */
	"detail" TEXT  /* String */
)
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'es_verify_wrapper';

CREATE  FUNCTION "es_verify_digest"(
	"digest" jsonb /* Option < pgrx :: JsonB > */
) RETURNS TABLE (
	"stream_id" TEXT,  /* Option < String > */
	"stream_version" bigint,  /* Option < i64 > */
	"problem" TEXT,  /* String */
	"detail" TEXT  /* String */
)
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'es_verify_digest_wrapper';


-- Digests an auditor keeps outside the database (src/digest.rs). The store keeps its own
-- record of each too, written only by es_digest as these tables' owner: not as proof (the
-- auditor's copy is that) but so that es_verify_digest can name the streams that changed.

CREATE TABLE es_digests (
    position  bigint      PRIMARY KEY,   -- the feed horizon it was taken at
    events    bigint      NOT NULL,
    streams   bigint      NOT NULL,
    root      bytea       NOT NULL,      -- Merkle root over the stream heads at the position
    taken_at  timestamptz NOT NULL DEFAULT now(),
    taken_by  text        NOT NULL
);

COMMENT ON TABLE es_digests IS 'Every digest es_digest took: position, counts, root hash, when and by whom.';

CREATE TABLE es_digest_heads (
    stream_id text   NOT NULL,
    position  bigint NOT NULL,
    version   bigint NOT NULL,
    hash      bytea  NOT NULL,
    PRIMARY KEY (stream_id, position)
);

COMMENT ON TABLE es_digest_heads IS 'Stream heads recorded by es_digest (only those changed since the previous digest).';

SELECT pg_catalog.pg_extension_config_dump('es_digests', '');

SELECT pg_catalog.pg_extension_config_dump('es_digest_heads', '');

COMMENT ON FUNCTION es_digest() IS
    'Takes a digest at the feed horizon (position, events, streams, Merkle root over stream heads) to keep outside the database.';

COMMENT ON FUNCTION es_verify_digest(jsonb) IS
    'One row per way the store fails to extend a digest es_digest returned; none when it does.';
CREATE  FUNCTION "_es_snapshot_at"(
	"stream_id" TEXT, /* & str */
	"version" bigint, /* i64 */
	"last_at" timestamp with time zone /* TimestampWithTimeZone */
) RETURNS bigint /* Option < i64 > */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_es_snapshot_at_wrapper';

-- Retention: es_apply_retention removes the events older than an interval, the only way any
-- role removes events. Each stream it cuts keeps an anchor, so that es_verify and
-- es_verify_digest check its chain from the first kept event, and a snapshot of its state at
-- the cut, so that its state functions still fold. Recorded in event_store-retention.

-- Where retention cut each stream: the first kept version, and the hash, position and time
-- of the last removed event, which the first kept one chains to.
CREATE TABLE es_anchors (
    stream_id     text        PRIMARY KEY,
    first_version bigint      NOT NULL CHECK (first_version > 1),
    prev_hash     bytea       NOT NULL,
    prev_position bigint      NOT NULL,
    prev_at       timestamptz NOT NULL,
    cut_at        timestamptz NOT NULL
);
COMMENT ON TABLE es_anchors IS 'Where es_apply_retention cut each stream: es_verify checks its chain from here.';
SELECT pg_catalog.pg_extension_config_dump('es_anchors', '');

-- For folds that read a stream from its first event (custom reducers, which have no
-- snapshots): refuses a stream retention cut, whose first events are gone.
CREATE FUNCTION _es_check_uncut(stream_id text) RETURNS boolean
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    first_kept bigint;
BEGIN
    SELECT a.first_version INTO first_kept FROM @extschema@.es_anchors a
     WHERE a.stream_id = _es_check_uncut.stream_id;
    IF FOUND THEN
        RAISE EXCEPTION 'event_store: the state of % needs events that retention removed', _es_check_uncut.stream_id
            USING ERRCODE = 'ES008',
                  DETAIL = pg_catalog.format('Retention removed versions 1 to %s of the stream; a custom reducer has no snapshot that stands for them.', first_kept - 1);
    END IF;
    RETURN true;
END
$$;

-- The policy the projection worker applies (es_set_retention); one row at most.
CREATE TABLE es_retention (
    one         boolean     PRIMARY KEY DEFAULT true CHECK (one),
    older_than  interval    NOT NULL,
    set_at      timestamptz NOT NULL DEFAULT now(),
    set_by      text        NOT NULL,
    next_run_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE es_retention IS 'The retention policy set by es_set_retention, applied by the projection worker.';
SELECT pg_catalog.pg_extension_config_dump('es_retention', '');

-- The last event before `cut_before` of every stream that has one: where retention cuts it.
CREATE FUNCTION _es_retention_cut(cut_before timestamptz)
RETURNS TABLE (stream_id text, stream_version bigint, hash bytea, global_position bigint, created_at timestamptz)
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT DISTINCT ON (e.stream_id) e.stream_id, e.stream_version, e.hash, e.global_position, e.created_at
      FROM @extschema@.event_store e WHERE e.created_at < cut_before
     ORDER BY e.stream_id, e.stream_version DESC
$$;

CREATE FUNCTION es_apply_retention(older_than interval, batch_size integer DEFAULT 100000)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz;
    cut_before timestamptz;
    ts_schema name;
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
    LOCK TABLE @extschema@.es_anchors IN SHARE ROW EXCLUSIVE MODE;
    cutoff := now() - older_than;
    SELECT n.nspname INTO ts_schema
      FROM pg_catalog.pg_extension x JOIN pg_catalog.pg_namespace n ON n.oid = x.extnamespace
     WHERE x.extname = 'timescaledb';
    IF ts_schema IS NOT NULL THEN
        hypertable := EXISTS (SELECT FROM timescaledb_information.hypertables h
                               WHERE h.hypertable_schema = '@extschema@' AND h.hypertable_name = 'event_store');
    END IF;
    IF hypertable THEN
        -- Whole chunks: those that end by the cutoff. Chunks do not overlap, so the events
        -- before the latest such end are exactly theirs.
        SELECT max(c.range_end) INTO cut_before FROM timescaledb_information.chunks c
         WHERE c.hypertable_schema = '@extschema@' AND c.hypertable_name = 'event_store'
           AND c.range_end <= cutoff;
    ELSE
        -- In batches: the oldest batch_size events (more where they share an instant).
        SELECT e.created_at INTO cut_before FROM @extschema@.event_store e
         WHERE e.created_at < cutoff ORDER BY e.created_at OFFSET batch_size LIMIT 1;
        IF cut_before IS NULL THEN
            cut_before := cutoff;
        ELSIF NOT EXISTS (SELECT FROM @extschema@.event_store e WHERE e.created_at < cut_before) THEN
            cut_before := cut_before + interval '1 microsecond';
        END IF;
    END IF;
    IF cut_before IS NOT NULL THEN
        -- Each cut stream: a snapshot of its state at the cut, taken while every fold can still
        -- read the events (before any anchor), then the anchor; snapshots of removed versions
        -- go with them. One statement each: a loop would plan the folds' anchor probe once.
        PERFORM count(@extschema@._es_snapshot_at(c.stream_id, c.stream_version, c.created_at))
           FROM @extschema@._es_retention_cut(cut_before) c;
        DELETE FROM @extschema@.es_snapshots s USING @extschema@._es_retention_cut(cut_before) c
         WHERE s.stream_id = c.stream_id AND s.stream_version < c.stream_version;
        INSERT INTO @extschema@.es_anchors AS a
               (stream_id, first_version, prev_hash, prev_position, prev_at, cut_at)
        SELECT c.stream_id, c.stream_version + 1, c.hash, c.global_position, c.created_at, now()
          FROM @extschema@._es_retention_cut(cut_before) c
        ON CONFLICT (stream_id) DO UPDATE
           SET first_version = EXCLUDED.first_version, prev_hash = EXCLUDED.prev_hash,
               prev_position = EXCLUDED.prev_position, prev_at = EXCLUDED.prev_at,
               cut_at = EXCLUDED.cut_at;
        GET DIAGNOSTICS streams = ROW_COUNT;
        IF hypertable THEN
            SELECT count(*) INTO removed FROM @extschema@.event_store e WHERE e.created_at < cut_before;
            EXECUTE pg_catalog.format('SELECT %I.drop_chunks($1, older_than => $2)', ts_schema)
                USING '@extschema@.event_store'::pg_catalog.regclass, cut_before;
        END IF;
        -- The append-only trigger refuses every DELETE; replica mode skips it for this one
        -- statement of this transaction (the function's own GUC level undoes it on error).
        PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
        DELETE FROM @extschema@.event_store e WHERE e.created_at < cut_before;
        GET DIAGNOSTICS deleted = ROW_COUNT;
        PERFORM pg_catalog.set_config('session_replication_role', 'origin', true);
        removed := removed + deleted;
    END IF;
    IF NOT hypertable THEN
        complete := NOT EXISTS (SELECT FROM @extschema@.event_store e WHERE e.created_at < cutoff);
    END IF;
    doc := pg_catalog.jsonb_build_object(
        'older_than', older_than::text,
        'cut_before', cut_before,
        'events_removed', removed,
        'streams_cut', streams,
        'whole_chunks', hypertable,
        'complete', complete);
    IF removed > 0 THEN
        PERFORM @extschema@._es_record('retention', 'RetentionApplied', doc);
    END IF;
    RETURN doc;
END
$$;
COMMENT ON FUNCTION es_apply_retention(interval, integer) IS
    'Removes the events older than older_than (whole chunks on a hypertable, at most batch_size per call otherwise), anchoring each cut stream; recorded in event_store-retention.';

CREATE FUNCTION es_set_retention(older_than interval) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF es_set_retention.older_than IS NULL THEN
        DELETE FROM @extschema@.es_retention;
        RETURN;
    END IF;
    IF es_set_retention.older_than < interval '0' THEN
        RAISE EXCEPTION 'event_store: older_than must not be negative' USING ERRCODE = '22023';
    END IF;
    INSERT INTO @extschema@.es_retention (older_than, set_by)
    VALUES (es_set_retention.older_than, @extschema@._es_calling_role())
    ON CONFLICT (one) DO UPDATE
        SET older_than = EXCLUDED.older_than, set_at = now(), set_by = EXCLUDED.set_by, next_run_at = now();
    PERFORM @extschema@._es_wake_projections(true);
END
$$;
COMMENT ON FUNCTION es_set_retention(interval) IS
    'Sets the retention policy the projection worker applies hourly (NULL: none).';

-- For the projection worker: applies the policy when due; true when more is due at once (a
-- batch left events older than the policy).
CREATE FUNCTION _es_apply_retention_policy() RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    policy @extschema@.es_retention;
    complete boolean;
BEGIN
    SELECT * INTO policy FROM @extschema@.es_retention WHERE next_run_at <= now() FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    complete := (@extschema@.es_apply_retention(policy.older_than) ->> 'complete')::boolean;
    UPDATE @extschema@.es_retention
       SET next_run_at = CASE WHEN complete THEN now() + interval '1 hour' ELSE now() END;
    RETURN NOT complete;
END
$$;

-- The state functions with a custom reducer: the events up to `version` and up to `at`.
-- Bounded by the stream's first and last times, so a hypertable skips chunks the stream has
-- no events in. Names are qualified rather than the search_path pinned: the reducer runs
-- under its caller's search_path. A custom reducer has no snapshots: a stream retention cut
-- cannot be folded with one (ES008).
CREATE OR REPLACE FUNCTION _es_state_with(stream_id text, at timestamptz, version bigint, reducer regprocedure)
RETURNS jsonb
LANGUAGE sql STABLE STRICT
AS $$
    SELECT @extschema@.es_fold(e, $4 ORDER BY e.stream_version)
      FROM @extschema@.event_store e
     WHERE @extschema@._es_check_uncut($1) AND e.stream_id = $1 AND e.stream_version <= $3
       AND e.created_at BETWEEN (SELECT s.first_at FROM @extschema@.es_streams s WHERE s.stream_id = $1)
                            AND least($2, (SELECT s.last_at FROM @extschema@.es_streams s WHERE s.stream_id = $1))
$$;

CREATE VIEW es_metrics AS
WITH categories AS (
    SELECT s.category, count(*) FILTER (WHERE s.version > 0) AS streams, sum(s.version) AS events,
           -- Removed by retention (es_anchors): appended, no longer held.
           coalesce(sum(a.first_version - 1), 0) AS removed
      FROM @extschema@.es_streams s LEFT JOIN @extschema@.es_anchors a ON a.stream_id = s.stream_id
     GROUP BY s.category
),
feed AS (
    SELECT @extschema@._es_feed_horizon() AS horizon,
           coalesce(pg_catalog.pg_sequence_last_value('@extschema@.es_global_position_seq'::pg_catalog.regclass), 0) AS handed_out
),
projections AS (
    SELECT p.name, p.status, p.position, p.attempts, f.horizon,
           (SELECT e.created_at FROM @extschema@.event_store e
             WHERE e.global_position > p.position AND e.global_position <= f.horizon
             ORDER BY e.global_position LIMIT 1) AS oldest_pending_at
      FROM @extschema@.es_projection_state p, feed f
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
  FROM @extschema@._es_feed_holders() h
UNION ALL
SELECT 'event_store_last_clean_verify_timestamp_seconds', '{}', extract(epoch FROM max(v.verified_at))::float8, 'gauge',
       'When es_verify last checked the whole store and found nothing wrong (Unix time)'
  FROM @extschema@.es_verifications v
 WHERE v.stream_id IS NULL AND v.problems = 0
HAVING count(*) > 0
UNION ALL
SELECT 'event_store_retention_last_cut_timestamp_seconds', '{}', extract(epoch FROM max(a.cut_at))::float8, 'gauge',
       'When es_apply_retention last removed events (Unix time)'
  FROM @extschema@.es_anchors a
HAVING count(*) > 0;
COMMENT ON VIEW es_metrics IS 'event_store''s metrics: name, labels, value, type, help (es_metrics_prometheus() formats them).';

CREATE FUNCTION es_metrics_prometheus() RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(string_agg(block, '' ORDER BY name), '')
      FROM (SELECT m.name,
                   format(E'# HELP %s %s\n# TYPE %s %s\n', m.name, m.help, m.name, m.type)
                   || string_agg(m.name || m.label_text || ' ' || m.value::text || E'\n', '' ORDER BY m.label_text) AS block
              FROM (SELECT x.*,
                           coalesce('{' || (SELECT string_agg(format('%s="%s"', l.key,
                                                  replace(replace(replace(l.value, '\', '\\'), '"', '\"'), E'\n', '\n')), ',' ORDER BY l.key)
                                              FROM jsonb_each_text(x.labels) l) || '}', '') AS label_text
                      FROM @extschema@.es_metrics x) m
             GROUP BY m.name, m.help, m.type) b
$$;
COMMENT ON FUNCTION es_metrics_prometheus() IS 'es_metrics in the Prometheus text exposition format.';

-- Privileges, as a fresh install sets them (sql/grants.sql): new members lose PUBLIC's rights.
-- Least privilege: PUBLIC gets nothing of the extension, readers read, writers append, and
-- nobody but the owner writes tables directly. Every function and relation that belongs to the
-- extension (pg_depend) loses PUBLIC's rights here, so a new one cannot slip through; each
-- grant below is on purpose. tests/security.rs checks the result from pg_depend too.
DO $$
DECLARE
    ext oid := (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'event_store');
    obj text;
BEGIN
    FOR obj IN
        SELECT pg_catalog.format('FUNCTION %s', d.objid::pg_catalog.regprocedure)
          FROM pg_catalog.pg_depend d
         WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.refobjid = ext
           AND d.deptype = 'e' AND d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
        UNION ALL
        SELECT pg_catalog.format(CASE c.relkind WHEN 'S' THEN 'SEQUENCE %s' ELSE 'TABLE %s' END, d.objid::pg_catalog.regclass)
          FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid = d.objid
         WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.refobjid = ext
           AND d.deptype = 'e' AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM PUBLIC', obj);
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA @extschema@ TO event_store_reader;
-- Snapshots hold nothing a reader cannot fold from event_store; under row level security
-- their policy hides them (sql/fold.sql).
GRANT SELECT ON event_store, es_streams, es_reducers, es_snapshots, es_projection_state, es_projections,
                es_feed_in_flight, es_catalog_types, es_upcasts, es_catalog_modes, es_event_types,
                es_checkpoints, es_metrics, es_verifications, es_feed_published, es_digests,
                es_digest_heads, es_anchors, es_retention
   TO event_store_reader;
-- The feed's horizon reads how far positions have been handed out.
GRANT SELECT ON SEQUENCE es_global_position_seq TO event_store_reader;

GRANT EXECUTE ON FUNCTION
    es_uuidv7(),
    _es_category(text),
    es_stream(text, bigint, bigint, boolean),
    es_upcast(event_store),
    -- The reads reveal personal data as the reader may see it.
    _es_reveal(event_store),
    es_catalog(),
    es_stream_version(text),
    es_state(text),
    es_state_at(text, timestamptz),
    es_state_at_version(text, bigint),
    es_verify(text, boolean),
    -- An auditor takes digests and checks them against the store.
    es_digest(),
    es_verify_digest(jsonb),
    -- The feed reads run as the reader (row level security applies) and call these.
    _es_feed_horizon(),
    es_feed_horizon(),
    -- A consumer saves its position with its effects; it may only move its own.
    es_save_checkpoint(text, bigint),
    es_checkpoint(text),
    es_metrics_prometheus(),
    _es_feed_holders(),
    _es_check_feed_isolation(),
    _es_check_feed_read(integer, integer, integer),
    _es_consumer_group_member(text, integer),
    _es_read_feed(bigint, integer, text[], text, integer, integer, boolean),
    es_read_all(bigint, integer, text[], boolean),
    es_read_category(text, bigint, integer, integer, integer, boolean),
    es_create_projection(text, regprocedure, text[], text[], regprocedure),
    es_pause_projection(text),
    es_resume_projection(text),
    es_rebuild_projection(text),
    es_drop_projection(text),
    es_run_projections(integer),
    -- es_fold and the state functions run as the caller and use these aggregates.
    _es_fold_step(internal, event_store),
    _es_fold_final(internal),
    _es_fold_events_step(internal, text, integer, jsonb, jsonb, text),
    _es_fold_events(text, integer, jsonb, jsonb, text),
    _es_fold_with(jsonb, event_store, regprocedure),
    es_fold(event_store),
    es_fold(event_store, regprocedure),
    _es_state_with(text, timestamptz, bigint, regprocedure),
    es_state(text, regprocedure),
    es_state_at(text, timestamptz, regprocedure),
    es_state_at_version(text, bigint, regprocedure),
    _es_check_uncut(text),
    es_diff(text, timestamptz, timestamptz)
TO event_store_reader;

GRANT EXECUTE ON FUNCTION
    es_append(text, text, jsonb, jsonb, bigint, uuid, integer),
    es_append_batch(text, jsonb, bigint),
    es_append_multi(jsonb),
    es_snapshot(text)
TO event_store_writer;
