-- benches/run.sh section 13, pgbench's half: a decision's append, a refused one (ES001) counted
-- rather than ending the client (pgbench ends a client at any other error than a serialization
-- failure or a deadlock). The savepoint is a cost only event_store's side pays.
CREATE FUNCTION bench_dcb_append(t integer, head bigint) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RETURN es_dcb_append(
        jsonb_build_array(jsonb_build_object('type', 'StudentJoined', 'data', '{"c": 10}'::jsonb,
                                             'tags', jsonb_build_array('tag-' || t))),
        jsonb_build_object('fail_if_events_match',
                           jsonb_build_object('items', jsonb_build_array(jsonb_build_object('tags', jsonb_build_array('tag-' || t)))),
                           'after', head));
EXCEPTION WHEN SQLSTATE 'ES001' THEN
    RETURN NULL;
END
$$;
