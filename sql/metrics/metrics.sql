-- Metrics for Prometheus: es_metrics as rows, es_metrics_prometheus() in the text exposition
-- format. Built from the registry (one row per stream), the projections' rows, the feed's
-- shared state and the verification log: no scan of event_store beyond one index probe per
-- projection, so a scrape costs the same on 10M events as on 10 (benches/run.sh measures it).

-- Every es_verify run (src/integrity/verify.rs writes it as the extension owner, on a primary, when
-- the caller sees every event): the time of the last clean one is evidence and a metric.
CREATE TABLE _event_store.es_verifications (
    verified_at timestamptz NOT NULL DEFAULT now(),
    stream_id   text,                     -- NULL: the whole store
    snapshots   boolean     NOT NULL,
    problems    bigint      NOT NULL,
    verified_by text        NOT NULL
);
COMMENT ON TABLE _event_store.es_verifications IS 'Every es_verify run by a role that sees all events: when, over what, and how many problems.';
SELECT pg_catalog.pg_extension_config_dump('_event_store.es_verifications', '');
CREATE VIEW @extschema@.es_verifications WITH (security_invoker = true) AS SELECT * FROM _event_store.es_verifications;

CREATE VIEW @extschema@.es_metrics AS
WITH categories AS (
    SELECT s.category, count(*) FILTER (WHERE s.version > 0) AS streams, sum(s.version) AS events,
           -- Removed by retention (es_anchors): appended, no longer held.
           coalesce(sum(a.first_version - 1), 0) AS removed
      FROM _event_store.es_streams s LEFT JOIN _event_store.es_anchors a ON a.stream_id = s.stream_id
     GROUP BY s.category
),
feed AS (
    SELECT _event_store._es_feed_horizon() AS horizon,
           coalesce(pg_catalog.pg_sequence_last_value('_event_store.es_global_position_seq'::pg_catalog.regclass), 0) AS handed_out
),
projections AS (
    SELECT p.name, p.status, p.position, p.attempts, f.horizon,
           (SELECT e.created_at FROM @extschema@.event_store e
             WHERE e.global_position > p.position AND e.global_position <= f.horizon
             ORDER BY e.global_position LIMIT 1) AS oldest_pending_at
      FROM _event_store.es_projection_state p, feed f
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
  FROM _event_store._es_feed_holders() h
UNION ALL
-- Whether this database is served: 1 while a worker is connected or no work waits for one, 0
-- while work waits for a pool slot, max_worker_processes is used up, or nothing preloads the
-- library (_es_worker_state says which).
SELECT 'event_store_worker_up', pg_catalog.jsonb_build_object('database', pg_catalog.current_database(), 'state', w.state),
       (w.state IN ('serving', 'idle'))::int::float8, 'gauge',
       'Whether a projection worker serves this database (0: its projections and notifications wait)'
  FROM _event_store._es_worker_state() w
 WHERE w.state OPERATOR(pg_catalog.<>) 'standby'
UNION ALL
SELECT 'event_store_worker_last_pass_timestamp_seconds', pg_catalog.jsonb_build_object('database', pg_catalog.current_database()),
       extract(epoch FROM w.last_pass)::float8, 'gauge',
       'When a projection worker last finished a pass in this database (Unix time)'
  FROM _event_store._es_worker_state() w
 WHERE w.last_pass IS NOT NULL
UNION ALL
SELECT 'event_store_last_clean_verify_timestamp_seconds', '{}', extract(epoch FROM max(v.verified_at))::float8, 'gauge',
       'When es_verify last checked the whole store and found nothing wrong (Unix time)'
  FROM _event_store.es_verifications v
 WHERE v.stream_id IS NULL AND v.problems = 0
HAVING count(*) > 0
UNION ALL
SELECT 'event_store_retention_last_cut_timestamp_seconds', '{}', extract(epoch FROM max(a.cut_at))::float8, 'gauge',
       'When es_apply_retention last removed events (Unix time)'
  FROM _event_store.es_anchors a
HAVING count(*) > 0;
COMMENT ON VIEW @extschema@.es_metrics IS 'event_store''s metrics: name, labels, value, type, help (es_metrics_prometheus() formats them).';

CREATE FUNCTION @extschema@.es_metrics_prometheus() RETURNS text
LANGUAGE sql
STABLE
BEGIN ATOMIC
    SELECT coalesce(string_agg(block, '' ORDER BY name), '')
      FROM (SELECT m.name,
                   format(E'# HELP %s %s\n# TYPE %s %s\n', m.name, m.help, m.name, m.type)
                   || string_agg(m.name || m.label_text || ' ' || m.value::text || E'\n', '' ORDER BY m.label_text) AS block
              FROM (SELECT x.*,
                           coalesce('{' || (SELECT string_agg(format('%s="%s"', l.key,
                                                  replace(replace(replace(l.value, '\', '\\'), '"', '\"'), E'\n', '\n')), ',' ORDER BY l.key)
                                              FROM jsonb_each_text(x.labels) l) || '}', '') AS label_text
                      FROM @extschema@.es_metrics x) m
             GROUP BY m.name, m.help, m.type) b;
END;
COMMENT ON FUNCTION @extschema@.es_metrics_prometheus() IS 'es_metrics in the Prometheus text exposition format.';
