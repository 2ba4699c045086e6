-- Digests an auditor keeps outside the database (src/integrity/digest.rs). The store keeps its own
-- record of each too, written only by es_digest as these tables' owner: not as proof (the
-- auditor's copy is that) but so that es_verify_digest can name the streams that changed.

CREATE TABLE _event_store.es_digests (
    position  bigint      PRIMARY KEY,   -- the feed horizon it was taken at
    events    bigint      NOT NULL,
    streams   bigint      NOT NULL,
    root      bytea       NOT NULL,      -- Merkle root over the stream heads at the position
    taken_at  timestamptz NOT NULL DEFAULT now(),
    taken_by  text        NOT NULL
);
COMMENT ON TABLE _event_store.es_digests IS 'Every digest es_digest took: position, counts, root hash, when and by whom.';

-- A stream's head as each digest saw it, written only when it changed since the previous
-- digest: the heads at a digest's position are each stream's latest row at or below it.
CREATE TABLE _event_store.es_digest_heads (
    stream_id text   NOT NULL,
    position  bigint NOT NULL,
    version   bigint NOT NULL,
    hash      bytea  NOT NULL,
    PRIMARY KEY (stream_id, position)
);
COMMENT ON TABLE _event_store.es_digest_heads IS 'Stream heads recorded by es_digest (only those changed since the previous digest).';

SELECT pg_catalog.pg_extension_config_dump('_event_store.es_digests', '');
CREATE VIEW @extschema@.es_digests WITH (security_invoker = true) AS SELECT * FROM _event_store.es_digests;
SELECT pg_catalog.pg_extension_config_dump('_event_store.es_digest_heads', '');
CREATE VIEW @extschema@.es_digest_heads WITH (security_invoker = true) AS SELECT * FROM _event_store.es_digest_heads;

CREATE FUNCTION @extschema@.es_digest() RETURNS jsonb
    LANGUAGE c STRICT VOLATILE SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_digest_wrapper';
CREATE FUNCTION @extschema@.es_verify_digest(digest jsonb)
RETURNS TABLE (stream_id text, stream_version bigint, problem text, detail text)
    LANGUAGE c VOLATILE SET search_path TO pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_verify_digest_wrapper';

COMMENT ON FUNCTION @extschema@.es_digest() IS
    'Takes a digest at the feed horizon (position, events, streams, Merkle root over stream heads) to keep outside the database.';
COMMENT ON FUNCTION @extschema@.es_verify_digest(jsonb) IS
    'One row per way the store fails to extend a digest es_digest returned; none when it does.';
