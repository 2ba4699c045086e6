-- Checkpoints of consumers outside the worker: the last feed position a consumer has handled,
-- saved in the consumer's own transaction so that its effects and its position commit (or
-- roll back) together. A consumer belongs to the role that first saved it.

CREATE TABLE _event_store.es_checkpoints (
    consumer text        PRIMARY KEY,
    position bigint      NOT NULL CHECK (position >= 0),
    owner    regrole     NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE _event_store.es_checkpoints IS 'Positions of feed consumers: change with es_save_checkpoint.';
SELECT pg_catalog.pg_extension_config_dump('_event_store.es_checkpoints', '');
CREATE VIEW @extschema@.es_checkpoints WITH (security_invoker = true) AS SELECT * FROM _event_store.es_checkpoints;

-- The feed's horizon: every event at or below it has committed or never will; a consumer may
-- read up to it without missing a late commit (es_read_all stops there by itself).
CREATE FUNCTION @extschema@.es_feed_horizon() RETURNS bigint
    LANGUAGE sql VOLATILE
    RETURN _event_store._es_feed_horizon();
COMMENT ON FUNCTION @extschema@.es_feed_horizon() IS
    'The highest position below which every event has committed or never will.';

CREATE FUNCTION @extschema@.es_save_checkpoint(consumer text, "position" bigint)
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

CREATE FUNCTION @extschema@.es_checkpoint(consumer text)
RETURNS bigint
LANGUAGE sql
STABLE STRICT
RETURN (SELECT c.position FROM _event_store.es_checkpoints c WHERE c.consumer OPERATOR(pg_catalog.=) es_checkpoint.consumer);
COMMENT ON FUNCTION @extschema@.es_checkpoint(text) IS
    'A consumer''s saved position; NULL when it has none (es_read_all reads NULL as 0).';
