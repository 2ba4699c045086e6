//! Appends insert their rows without an SQL statement (src/append/direct.rs), and take the
//! statement wherever a table asks for more: the statements a call runs are watched with
//! auto_explain's nested statements, sent to the client.
use event_store_testing::*;
use postgres::{Client, NoTls};
use std::sync::{Arc, Mutex};

/// A superuser connection whose server messages are collected.
fn watched(db: &TestDb) -> (Client, Arc<Mutex<Vec<String>>>) {
    let messages = Arc::new(Mutex::new(vec![]));
    let sink = messages.clone();
    let mut c = db
        .config()
        .notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()))
        .connect(NoTls)
        .unwrap();
    c.batch_execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; \
         SET auto_explain.log_nested_statements = on; SET client_min_messages = debug1",
    )
    .unwrap();
    (c, messages)
}

/// Whether the calls since the last look ran the INSERT statement into event_store, or the one
/// registering a new stream.
fn inserted_with_a_statement(messages: &Mutex<Vec<String>>) -> bool {
    let mut m = messages.lock().unwrap();
    let found = m.iter().any(|m| {
        m.contains("INSERT INTO _event_store.log")
            || m.contains("INSERT INTO _event_store.es_streams")
    });
    m.clear();
    found
}

#[test]
fn appends_run_no_insert_statement() {
    let db = TestDb::new("direct");
    let (mut c, messages) = watched(&db);
    // On a hypertable the first event of a time range makes TimescaleDB create its chunk.
    c.batch_execute("SELECT es_append('warm-1', 'Made', '{}')")
        .unwrap();
    inserted_with_a_statement(&messages);
    c.batch_execute(
        "SELECT es_append('order-1', 'Placed', '{\"n\": 1}'); \
         SELECT es_append_batch('order-1', '[{\"type\": \"Paid\", \"data\": {}}, {\"type\": \"Shipped\", \"data\": {}, \"id\": \"01a24c7d-e088-716e-af3d-64190f4be83f\"}]'); \
         SELECT es_append_multi('[{\"stream_id\": \"order-2\", \"events\": [{\"type\": \"Placed\", \"data\": {}}]}, \
                                  {\"stream_id\": \"order-3\", \"events\": [{\"type\": \"Placed\", \"data\": {}}, {\"type\": \"Paid\", \"data\": {}}]}]')",
    )
    .unwrap();
    assert!(
        !inserted_with_a_statement(&messages),
        "appends ran an INSERT statement"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 7);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM _event_store.es_event_ids"),
        7,
        "every id claimed"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE transaction_id IS NULL OR event_version <> 1"
        ),
        0
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM es_read_category('order', 0)"),
        6,
        "the category index has their entries"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
    c.batch_execute("SET enable_seqscan = off").unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM _event_store.es_streams WHERE category = 'order'"
        ),
        3,
        "new streams' rows have their category, in its index"
    );
    c.batch_execute("RESET enable_seqscan").unwrap();
    // A generated id is claimed: handing it back as the caller's own is a conflict.
    let generated: uuid::Uuid = c
        .query_one("SELECT event_id FROM es_stream('order-2')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        sqlstate(c.execute(
            "SELECT es_append('order-9', 'Placed', '{}', '{}', NULL, $1)",
            &[&generated]
        )),
        "ES002"
    );
}

#[test]
fn an_insert_trigger_on_event_store_fires_for_appends() {
    let db = TestDb::new("direct_trigger");
    let (mut c, messages) = watched(&db);
    c.batch_execute(
        "SELECT es_append('warm-1', 'Made', '{}');
         CREATE TABLE seen (event_id uuid);
         CREATE FUNCTION see() RETURNS trigger LANGUAGE plpgsql AS
             $$BEGIN INSERT INTO public.seen VALUES (NEW.event_id); RETURN NEW; END$$;
         CREATE TRIGGER see AFTER INSERT ON event_store FOR EACH ROW EXECUTE FUNCTION see();",
    )
    .unwrap();
    inserted_with_a_statement(&messages);
    c.batch_execute(
        "SELECT es_append('order-1', 'Placed', '{}', tags => '{order:1,\"a b\"}'); \
         SELECT es_append_batch('order-1', '[{\"type\": \"Paid\", \"data\": {}, \"tags\": [\"order:1\"]}, {\"type\": \"Shipped\", \"data\": {}}]')",
    )
    .unwrap();
    assert!(inserted_with_a_statement(&messages));
    // The statement stores the tags as the direct path does, and their hashes verify.
    let tags: Vec<String> = c
        .query("SELECT array_to_string(tags, '|') FROM event_store WHERE stream_id = 'order-1' ORDER BY stream_version", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tags, ["order:1|a b", "order:1", ""]);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM es_verify('order-1')"),
        0
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM seen JOIN event_store USING (event_id) WHERE stream_id = 'order-1'"
        ),
        3,
        "the trigger saw every event"
    );
    c.batch_execute("DROP TRIGGER see ON event_store").unwrap();
    c.batch_execute("SELECT es_append('order-1', 'Closed', '{}')")
        .unwrap();
    assert!(
        !inserted_with_a_statement(&messages),
        "without the trigger, appends insert directly again"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM seen"), 3);
}

#[test]
fn a_chunk_dropped_and_made_again_is_found() {
    if !timescaledb() {
        return;
    }
    let db = TestDb::new("direct_chunk");
    let (mut c, messages) = watched(&db);
    c.batch_execute("SELECT es_append('a-1', 'Made', '{}'); SELECT es_append('a-1', 'Made', '{}')")
        .unwrap();
    let mut other = db.connect();
    // Another session drops the chunk this one inserted into, and makes a new one for the
    // same time range.
    other
        .batch_execute(
            "SELECT count(*) FROM drop_chunks('event_store', older_than => now() + interval '1 year');
             SELECT es_append('b-1', 'Made', '{}')",
        )
        .unwrap();
    inserted_with_a_statement(&messages);
    c.batch_execute("SELECT es_append('a-1', 'Made', '{}')")
        .unwrap();
    assert!(
        !inserted_with_a_statement(&messages),
        "the new chunk was not found: appends took the INSERT statement"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 2);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE stream_id = 'a-1' AND stream_version = 3"
        ),
        1
    );
}

#[test]
fn constraints_and_indexes_added_later_hold_for_appends() {
    let db = TestDb::new("direct_constraints");
    let (mut c, messages) = watched(&db);
    c.batch_execute("SELECT es_append('a-1', 'Made', '{}'); SELECT es_append('a-1', 'Made', '{}')")
        .unwrap();
    // Another session changes event_store: this one's compiled constraints are out of date.
    db.connect()
        .batch_execute(
            "ALTER TABLE event_store ADD CONSTRAINT no_forbidden CHECK (event_type <> 'Forbidden');
             CREATE INDEX event_store_lower_type_idx ON event_store (lower(event_type))",
        )
        .unwrap();
    inserted_with_a_statement(&messages);
    assert_eq!(
        sqlstate(c.batch_execute("SELECT es_append('a-1', 'Forbidden', '{}')")),
        "23514"
    );
    c.batch_execute("SELECT es_append('a-1', 'Allowed', '{}'); SELECT es_append_batch('a-2', '[{\"type\": \"Allowed\", \"data\": {}}, {\"type\": \"Made\", \"data\": {}}]')")
        .unwrap();
    assert!(!inserted_with_a_statement(&messages));
    c.batch_execute("SET enable_seqscan = off").unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE lower(event_type) = 'allowed'"
        ),
        2,
        "the new index has the new events"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
}

#[test]
fn large_batches_are_stored_whole_in_many_row_inserts() {
    let db = TestDb::new("direct_bulk");
    let (mut c, messages) = watched(&db);
    c.batch_execute("SELECT es_append('warm-1', 'Made', '{}')")
        .unwrap();
    inserted_with_a_statement(&messages);
    // 250 events (the table AM takes 100 rows a call), one of them large enough to be
    // TOASTed; then 3 streams of 120 in one call.
    c.batch_execute(
        "SELECT count(*) FROM es_append_batch('bulk-1', (SELECT jsonb_agg(jsonb_build_object('type', 'Step', 'data',
             jsonb_build_object('i', i, 'pad', CASE WHEN i = 137 THEN repeat(md5(i::text), 300) ELSE '' END)) ORDER BY i)
           FROM generate_series(1, 250) i));
         SELECT count(*) FROM es_append_multi((SELECT jsonb_agg(jsonb_build_object('stream_id', 'bulk-' || s, 'events',
             (SELECT jsonb_agg(jsonb_build_object('type', 'Step', 'data', jsonb_build_object('i', i)) ORDER BY i)
                FROM generate_series(1, 120) i)) ORDER BY s)
           FROM generate_series(2, 4) s))",
    )
    .unwrap();
    assert!(!inserted_with_a_statement(&messages));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE stream_id LIKE 'bulk-%'"
        ),
        610
    );
    // Dense versions, one block of consecutive positions per call, data as given.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_stream('bulk-1') WHERE stream_version = (event_data ->> 'i')::bigint"
        ),
        250
    );
    assert_eq!(
        count(&mut c, "SELECT max(global_position) - min(global_position) + 1 FROM event_store WHERE stream_id = 'bulk-1'"),
        250
    );
    assert_eq!(
        count(&mut c, "SELECT max(global_position) - min(global_position) + 1 FROM event_store WHERE stream_id IN ('bulk-2', 'bulk-3', 'bulk-4')"),
        360
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT length(event_data ->> 'pad')::bigint FROM es_stream('bulk-1', 137, 1)"
        ),
        9600
    );
    // Every index has every row: read through each with sequential scans off.
    c.batch_execute("SET enable_seqscan = off").unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store e WHERE e.event_id IN (SELECT event_id FROM _event_store.es_event_ids) AND e.stream_id LIKE 'bulk-%'"
        ),
        610
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_read_category('bulk', 0, 1000)"
        ),
        610
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE event_type = 'Step'"
        ),
        610
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
}
