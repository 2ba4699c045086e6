-- event_store 0.6.0 -> 0.7.0: es_dcb_append and es_dcb_read lose their planner SET clauses
-- (jit, plan_cache_mode, timescaledb.enable_chunk_append), now set around their statements
-- (src/pg/plans.rs, for_few_rows). Only definitions change: scripts/update-script.py appends
-- them from the install script, and CREATE OR REPLACE FUNCTION replaces a function's SET
-- clauses with the new definition's.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
