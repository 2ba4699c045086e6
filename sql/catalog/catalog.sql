-- The event catalog (src/catalog/mod.rs, core/src/catalog/mod.rs): event types with a JSON Schema per
-- version, their personal data and subject, upcasts between versions, and per category how
-- appends use the catalog. Changed only through the functions below; dumped by pg_dump.

CREATE TABLE _event_store.es_catalog_types (
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
COMMENT ON TABLE _event_store.es_catalog_types IS 'Event types and their schemas per version: change with es_define_event_type and es_drop_event_type.';

-- The rule taking an event of event_type from from_version to from_version + 1.
CREATE TABLE _event_store.es_upcasts (
    event_type   text        NOT NULL,
    from_version integer     NOT NULL CHECK (from_version > 0),
    rule         jsonb       NOT NULL,
    defined_at   timestamptz NOT NULL DEFAULT now(),
    defined_by   text        NOT NULL,
    PRIMARY KEY (event_type, from_version)
);
COMMENT ON TABLE _event_store.es_upcasts IS 'Upcasts from one version of an event type to the next: change with es_define_upcast and es_drop_upcast.';

CREATE TABLE _event_store.es_catalog_modes (
    category text        PRIMARY KEY,
    mode     text        NOT NULL CHECK (mode IN ('open', 'strict', 'off')),
    set_at   timestamptz NOT NULL DEFAULT now(),
    set_by   text        NOT NULL
);
COMMENT ON TABLE _event_store.es_catalog_modes IS 'How appends to a category use the catalog (''*'': every category without its own): change with es_set_catalog_mode.';

SELECT pg_catalog.pg_extension_config_dump('_event_store.es_catalog_types', '');
CREATE VIEW @extschema@.es_catalog_types WITH (security_invoker = true) AS SELECT * FROM _event_store.es_catalog_types;
SELECT pg_catalog.pg_extension_config_dump('_event_store.es_upcasts', '');
CREATE VIEW @extschema@.es_upcasts WITH (security_invoker = true) AS SELECT * FROM _event_store.es_upcasts;
SELECT pg_catalog.pg_extension_config_dump('_event_store.es_catalog_modes', '');
CREATE VIEW @extschema@.es_catalog_modes WITH (security_invoker = true) AS SELECT * FROM _event_store.es_catalog_modes;

-- Every backend keeps a compiled copy of the catalog; a change tells them all to drop it.
CREATE FUNCTION _event_store._es_catalog_changed() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', '_es_catalog_changed';
CREATE TRIGGER es_catalog_types_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON _event_store.es_catalog_types
    FOR EACH STATEMENT EXECUTE FUNCTION _event_store._es_catalog_changed();
CREATE TRIGGER es_upcasts_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON _event_store.es_upcasts
    FOR EACH STATEMENT EXECUTE FUNCTION _event_store._es_catalog_changed();
CREATE TRIGGER es_catalog_modes_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON _event_store.es_catalog_modes
    FOR EACH STATEMENT EXECUTE FUNCTION _event_store._es_catalog_changed();

CREATE VIEW @extschema@.es_event_types AS
SELECT t.event_type, t.version, t.schema, t.description, t.personal_data, t.subject,
       u.rule AS upcast_to_next, t.defined_at, t.defined_by
  FROM _event_store.es_catalog_types t
  LEFT JOIN _event_store.es_upcasts u ON u.event_type = t.event_type AND u.from_version = t.version;
COMMENT ON VIEW @extschema@.es_event_types IS 'The event catalog: every event type and version with its schema, personal data paths, subject and the upcast to the next version.';

CREATE FUNCTION @extschema@.es_define_event_type(event_type text, schema jsonb DEFAULT NULL, version integer DEFAULT 1,
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

CREATE FUNCTION @extschema@.es_drop_event_type(event_type text, version integer DEFAULT NULL)
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

CREATE FUNCTION @extschema@.es_define_upcast(event_type text, from_version integer, rule jsonb)
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

CREATE FUNCTION @extschema@.es_drop_upcast(event_type text, from_version integer)
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

CREATE FUNCTION @extschema@.es_set_catalog_mode(category text, mode text)
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

-- An event as its type's latest version: event_data upcast, event_version raised.
CREATE FUNCTION @extschema@.es_upcast(event @extschema@.event_store) RETURNS @extschema@.event_store
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'es_upcast';
COMMENT ON FUNCTION @extschema@.es_upcast(@extschema@.event_store) IS
    'The event upcast to its type''s latest version (the event itself when no upcast applies).';
-- The same, for the store's own code: a name in _event_store, which no one else can shadow.
CREATE FUNCTION _event_store._es_upcast(event @extschema@.event_store) RETURNS @extschema@.event_store
    LANGUAGE c STABLE STRICT PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'es_upcast';

-- The catalog as a document: every defined type, and every type the store holds.
CREATE FUNCTION @extschema@.es_catalog()
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
