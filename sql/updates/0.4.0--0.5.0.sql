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
