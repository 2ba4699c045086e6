-- The global feed. Positions are taken when an append runs, but transactions commit in
-- another order: a reader that moved past a position whose transaction commits later would
-- lose that event for good. So every appending transaction first registers a lower bound of
-- the positions it may commit (src/feed.rs); readers stop below the lowest registered bound.
-- Transactions that append nothing never register, so they never hold the feed back.

-- A snapshot older than the horizon could miss events that committed in between, so feed
-- reads run in READ COMMITTED, where each statement takes a fresh snapshot.
-- Called only from _es_read_feed, whose search_path is pinned: a SET here would cost every
-- feed read a GUC nest level for nothing.
CREATE FUNCTION _es_check_feed_isolation() RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'event_store: feed reads need READ COMMITTED, not %', pg_catalog.current_setting('transaction_isolation')
            USING ERRCODE = '0A000',
                  HINT = 'Read the feed outside REPEATABLE READ and SERIALIZABLE transactions.';
    END IF;
END
$$;

-- A hot standby cannot see the primary's appends in flight, only their commits: feed reads
-- there stop at the horizon the primary last published here (src/feed.rs). The worker
-- publishes it on every pass; without it, a scheduler calls es_publish_feed_horizon().
-- Not dumped: CREATE EXTENSION makes the row, and a restored store starts from 0.
CREATE TABLE es_feed_published (
    singleton    boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    horizon      bigint      NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO es_feed_published (horizon) VALUES (0);
COMMENT ON TABLE es_feed_published IS 'The feed horizon last published for hot standbys: written by es_publish_feed_horizon().';

CREATE FUNCTION es_publish_feed_horizon() RETURNS bigint
LANGUAGE sql
VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE @extschema@.es_feed_published p SET horizon = h.horizon, published_at = now()
      FROM (SELECT @extschema@._es_feed_horizon() AS horizon) h
     WHERE p.horizon < h.horizon;
    SELECT horizon FROM @extschema@.es_feed_published;
$$;
COMMENT ON FUNCTION es_publish_feed_horizon() IS
    'Publishes the feed horizon for reads on hot standbys (the worker does it on every pass); returns it.';

-- Both feed functions: events after a position up to the horizon, filtered, in order.
CREATE FUNCTION _es_read_feed(after_position bigint, max_count integer, event_types text[], category text,
                              member integer, group_size integer, upcast boolean)
RETURNS SETOF event_store
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Computed before the query below takes its snapshot: everything up to it has settled.
    horizon bigint := @extschema@._es_feed_horizon();
BEGIN
    PERFORM @extschema@._es_check_feed_isolation();
    PERFORM @extschema@._es_check_feed_read(max_count, member, group_size);
    IF upcast THEN
        RETURN QUERY
            SELECT u.* FROM @extschema@._es_read_feed(after_position, max_count, event_types, category,
                                                      member, group_size, false) e,
                   LATERAL @extschema@.es_upcast(e) u
             ORDER BY u.global_position;
        RETURN;
    END IF;
    -- Personal data revealed as the reader may see it (sql/personal.sql).
    RETURN QUERY
        SELECT r.* FROM @extschema@.event_store e, LATERAL @extschema@._es_reveal(e) r
         WHERE e.global_position > coalesce(after_position, 0) AND e.global_position <= horizon
           AND (event_types IS NULL OR e.event_type = ANY (event_types))
           AND (category IS NULL OR @extschema@._es_category(e.stream_id) = category)
           AND (group_size IS NULL OR @extschema@._es_consumer_group_member(e.stream_id, group_size) = member)
         ORDER BY e.global_position
         LIMIT max_count;
END
$$;

CREATE FUNCTION es_read_all(after_position bigint DEFAULT 0, max_count integer DEFAULT 1000, event_types text[] DEFAULT NULL,
                            upcast boolean DEFAULT false)
RETURNS SETOF event_store
LANGUAGE sql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM @extschema@._es_read_feed(after_position, max_count, event_types, NULL, NULL, NULL, coalesce(upcast, false))
$$;
COMMENT ON FUNCTION es_read_all(bigint, integer, text[], boolean) IS
    'Committed events after a position, in position order; called again with the last position received, it returns every committed event exactly once.';

CREATE FUNCTION es_read_category(category text, after_position bigint DEFAULT 0, max_count integer DEFAULT 1000,
                                 consumer_group_member integer DEFAULT NULL, consumer_group_size integer DEFAULT NULL,
                                 upcast boolean DEFAULT false)
RETURNS SETOF event_store
LANGUAGE sql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM @extschema@._es_read_feed(after_position, max_count, NULL, coalesce(category, ''), consumer_group_member, consumer_group_size, coalesce(upcast, false))
$$;
COMMENT ON FUNCTION es_read_category(text, bigint, integer, integer, integer, boolean) IS
    'es_read_all for the streams of one category (stream id up to its first "-"), optionally split between consumer group members by stream.';

-- What holds the feed back: every append in flight (its backend, since when, the lowest
-- position it may still commit). An open transaction that appended stays here until it ends.
CREATE VIEW es_feed_in_flight AS
SELECT * FROM @extschema@._es_feed_holders();
COMMENT ON VIEW es_feed_in_flight IS 'Appends in flight that hold the feed horizon back: pid, registered_at, lowest_position.';
