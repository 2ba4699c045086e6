-- The global feed. Positions are taken when an append runs, but transactions commit in
-- another order: a reader that moved past a position whose transaction commits later would
-- lose that event for good. So every appending transaction first registers a lower bound of
-- the positions it may commit (src/read/feed.rs); readers stop below the lowest registered bound.
-- Transactions that append nothing never register, so they never hold the feed back.

-- A hot standby cannot see the primary's appends in flight, only their commits: feed reads
-- there stop at the horizon the primary last published here (src/read/feed.rs). The worker
-- publishes it on every pass; without it, a scheduler calls es_publish_feed_horizon().
-- Not dumped: CREATE EXTENSION makes the row, and a restored store starts from 0.
CREATE TABLE _event_store.es_feed_published (
    singleton    boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    horizon      bigint      NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO _event_store.es_feed_published (horizon) VALUES (0);
COMMENT ON TABLE _event_store.es_feed_published IS 'The feed horizon last published for hot standbys: written by es_publish_feed_horizon().';
CREATE VIEW @extschema@.es_feed_published WITH (security_invoker = true) AS SELECT * FROM _event_store.es_feed_published;

CREATE FUNCTION _event_store._es_publish_feed_horizon() RETURNS bigint
LANGUAGE sql
VOLATILE
BEGIN ATOMIC
    UPDATE _event_store.es_feed_published p SET horizon = h.horizon, published_at = pg_catalog.now()
      FROM (SELECT _event_store._es_feed_horizon() AS horizon) h
     WHERE p.horizon OPERATOR(pg_catalog.<) h.horizon;
    SELECT p.horizon FROM _event_store.es_feed_published p;
END;
CREATE FUNCTION @extschema@.es_publish_feed_horizon() RETURNS bigint
LANGUAGE sql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN _event_store._es_publish_feed_horizon();
COMMENT ON FUNCTION @extschema@.es_publish_feed_horizon() IS
    'Publishes the feed horizon for reads on hot standbys (the worker does it on every pass); returns it.';

-- Both feed functions: events after a position up to the horizon, filtered, in order,
-- revealed as the reader may see them (sql/privacy/sealing.sql), read through _event_store.log.
CREATE FUNCTION _event_store._es_read_feed(after_position bigint, max_count integer, event_types text[], category text,
                                           member integer, group_size integer, upcast boolean)
RETURNS SETOF @extschema@.event_store
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Computed before the query below takes its snapshot: everything up to it has settled.
    horizon bigint := _event_store._es_feed_horizon();
BEGIN
    PERFORM _event_store._es_check_feed_isolation();
    PERFORM _event_store._es_check_feed_read(max_count, member, group_size);
    IF upcast THEN
        RETURN QUERY
            SELECT (u.e).* FROM _event_store._es_read_feed(after_position, max_count, event_types, category,
                                                            member, group_size, false) e,
                   LATERAL (SELECT _event_store._es_upcast(e) AS e OFFSET 0) u
             ORDER BY (u.e).global_position;
        RETURN;
    END IF;
    RETURN QUERY
        SELECT (r.e).*
          FROM _event_store.log l,
               LATERAL (SELECT _event_store._es_reveal(_event_store._es_event(l)) AS e OFFSET 0) r
         WHERE l.global_position > coalesce(after_position, 0) AND l.global_position <= horizon
           AND (event_types IS NULL OR l.event_type = ANY (event_types))
           AND (category IS NULL OR _event_store._es_category(l.stream_id) = category)
           AND (group_size IS NULL OR _event_store._es_consumer_group_member(l.stream_id, group_size) = member)
         ORDER BY l.global_position
         LIMIT max_count;
END
$$;

CREATE FUNCTION @extschema@.es_read_all(after_position bigint DEFAULT 0, max_count integer DEFAULT 1000, event_types text[] DEFAULT NULL,
                                        upcast boolean DEFAULT false)
RETURNS SETOF @extschema@.event_store
LANGUAGE sql
VOLATILE
BEGIN ATOMIC
    SELECT * FROM _event_store._es_read_feed(es_read_all.after_position, es_read_all.max_count, es_read_all.event_types,
                                             NULL::text, NULL::integer, NULL::integer, COALESCE(es_read_all.upcast, false));
END;
COMMENT ON FUNCTION @extschema@.es_read_all(bigint, integer, text[], boolean) IS
    'Committed events after a position, in position order; called again with the last position received, it returns every committed event exactly once.';

CREATE FUNCTION @extschema@.es_read_category(category text, after_position bigint DEFAULT 0, max_count integer DEFAULT 1000,
                                             consumer_group_member integer DEFAULT NULL, consumer_group_size integer DEFAULT NULL,
                                             upcast boolean DEFAULT false)
RETURNS SETOF @extschema@.event_store
LANGUAGE sql
VOLATILE
BEGIN ATOMIC
    SELECT * FROM _event_store._es_read_feed(es_read_category.after_position, es_read_category.max_count, NULL::text[],
                                             COALESCE(es_read_category.category, ''::text), es_read_category.consumer_group_member,
                                             es_read_category.consumer_group_size, COALESCE(es_read_category.upcast, false));
END;
COMMENT ON FUNCTION @extschema@.es_read_category(text, bigint, integer, integer, integer, boolean) IS
    'es_read_all for the streams of one category (stream id up to its first "-"), optionally split between consumer group members by stream.';

-- What holds the feed back: every append in flight (its backend, since when, the lowest
-- position it may still commit). An open transaction that appended stays here until it ends.
CREATE VIEW @extschema@.es_feed_in_flight AS
SELECT * FROM _event_store._es_feed_holders();
COMMENT ON VIEW @extschema@.es_feed_in_flight IS 'Appends in flight that hold the feed horizon back: pid, registered_at, lowest_position.';
