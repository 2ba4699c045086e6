-- event_store 0.5.0 -> 0.6.0: es_dcb_read becomes a function of the extension's library
-- (src/dcb/read.rs) instead of PL/pgSQL, which leaves the two helpers it called unused.
-- Its new definition is appended from the install script by scripts/update-script.py. The
-- helpers came with 0.5.0: absent on the way from older versions.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
DROP FUNCTION IF EXISTS _event_store._es_dcb_items(jsonb);
DROP FUNCTION IF EXISTS _event_store._es_dcb_check_limit(integer);
