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
