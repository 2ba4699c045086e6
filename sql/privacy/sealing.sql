-- Personal data sealed per subject (src/privacy/sealing.rs, core/src/privacy/sealing.rs): the subjects' keys,
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

-- One key per subject while it lives; es_forget_subject destroys it (wrapped becomes NULL),
-- and a later event of the same subject gets a new one. Only the owner reads or writes it:
-- appends and reads reach it as the owner (src/privacy/sealing.rs). Subjects appear only hashed.
CREATE TABLE _event_store.es_subject_keys (
    key_id       uuid        PRIMARY KEY,
    subject_hash bytea       NOT NULL,           -- _es_subject_hash(subject)
    wrapped      bytea,                          -- the key, wrapped by event_store.master_key when set
    created_at   timestamptz NOT NULL DEFAULT now(),
    destroyed_at timestamptz,
    destroyed_by text,
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
);
CREATE UNIQUE INDEX es_subject_keys_live ON _event_store.es_subject_keys (subject_hash) WHERE wrapped IS NOT NULL;
COMMENT ON TABLE _event_store.es_subject_keys IS 'Keys that seal each subject''s personal data: destroyed by es_forget_subject. Owner only.';
-- Dumped: a restore without the keys would erase everyone.
SELECT pg_catalog.pg_extension_config_dump('_event_store.es_subject_keys', '');

CREATE FUNCTION _event_store._es_reveal(event @extschema@.event_store) RETURNS @extschema@.event_store
    LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', '_es_reveal';
COMMENT ON FUNCTION _event_store._es_reveal(@extschema@.event_store) IS
    'The event with its personal data revealed as the current user may see it: plaintext, withheld, or erased.';

-- es_subject_export's view of an event: only values sealed under that subject's own keys open.
CREATE FUNCTION _event_store._es_reveal_for_subject(event @extschema@.event_store, subject text) RETURNS @extschema@.event_store
    LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', '_es_reveal_for_subject';
COMMENT ON FUNCTION _event_store._es_reveal_for_subject(@extschema@.event_store, text) IS
    'The event as a subject''s export shows it: values sealed under that subject''s keys revealed, every other personal value withheld.';
