-- event_store 0.3.0 -> 0.4.0: projection workers become a cluster-wide pool (docs/operations.md).
-- Nothing of 0.3.0's tables, data or privileges changes: the new function (_es_worker_state),
-- the time slice in _es_project_batch, es_projections' worker columns and the workers'
-- metrics are all definitions, which scripts/update-script.py appends from the install script.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
