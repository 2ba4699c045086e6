//! Batches and multi-stream appends: consecutive positions under concurrent writers, all or
//! nothing, no deadlock whatever the order streams are named in.
use event_store_testing::*;
use serde_json::{json, Value};
use std::sync::Arc;

/// The positions a call returned must be consecutive, in the order of its rows.
fn assert_consecutive(positions: &[i64]) {
    for w in positions.windows(2) {
        assert_eq!(w[1], w[0] + 1, "positions of one call: {positions:?}");
    }
}

fn batch(n: usize, tag: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"type": "Step", "data": {"w": tag, "i": i}}))
            .collect(),
    )
}

#[test]
fn batches_from_concurrent_writers_take_consecutive_positions() {
    let db = Arc::new(TestDb::new("batch_positions"));
    // Large batches: the longer a block takes to allocate, the likelier another writer
    // would take positions in the middle of it without the allocation lock.
    let calls = race(&db, 8, |w, c| {
        (0..8)
            .map(|k| {
                let rows = c
                    .query(
                        "SELECT global_position FROM es_append_batch($1, $2)",
                        &[
                            &format!("w{w}-{}", k % 3),
                            &batch(300 + 37 * ((w + k) % 5), w),
                        ],
                    )
                    .unwrap();
                rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    });
    let mut c = db.connect();
    let mut total = 0;
    for positions in calls.iter().flatten() {
        assert_consecutive(positions);
        total += positions.len() as i64;
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), total);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
}

fn multi(streams: &[&str], per_stream: usize) -> Value {
    Value::Array(
        streams
            .iter()
            .map(|s| json!({"stream_id": s, "events": batch(per_stream, 0)}))
            .collect(),
    )
}

#[test]
fn multi_stream_appends_return_rows_in_input_order_at_consecutive_positions() {
    let db = TestDb::new("multi_order");
    let mut c = db.connect();
    c.query("SELECT es_append('b-1', 'Seed', '{}')", &[])
        .unwrap();
    let rows = c
        .query(
            "SELECT stream_id, stream_version, global_position FROM es_append_multi($1)",
            &[&json!([
                {"stream_id": "c-1", "expected_version": 0, "events": [{"type": "A", "data": {}}]},
                {"stream_id": "b-1", "expected_version": 1, "events": [{"type": "B", "data": {"n": 1}}, {"type": "B", "data": {"n": 2}}]},
                {"stream_id": "a-1", "events": [{"type": "C", "data": {}, "metadata": {"k": "v"}}]}
            ])],
        )
        .unwrap();
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            ("c-1".into(), 1),
            ("b-1".into(), 2),
            ("b-1".into(), 3),
            ("a-1".into(), 1)
        ]
    );
    let positions: Vec<i64> = rows.iter().map(|r| r.get(2)).collect();
    assert_consecutive(&positions);
    // Stored as if appended one stream at a time: chains verify, heads advanced.
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
    assert_eq!(count(&mut c, "SELECT es_stream_version('b-1')"), 3);
    let meta: Value = c
        .query_one(
            "SELECT metadata FROM event_store WHERE stream_id = 'a-1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(meta["k"], "v");
    assert_eq!(meta["appendedBy"], "postgres");
}

#[test]
fn a_multi_stream_append_with_one_wrong_expected_version_writes_nothing() {
    let db = TestDb::new("multi_atomic");
    let mut c = db.connect();
    c.query("SELECT es_append('a-1', 'Seed', '{}')", &[])
        .unwrap();
    let before = count(
        &mut c,
        "SELECT last_value FROM _event_store.es_global_position_seq",
    );
    let r = c.query(
        "SELECT * FROM es_append_multi($1)",
        &[&json!([
            {"stream_id": "n-1", "expected_version": 0, "events": [{"type": "A", "data": {}}]},
            {"stream_id": "a-1", "expected_version": 5, "events": [{"type": "B", "data": {}}]}
        ])],
    );
    let e = r.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "ES001");
    let m = e.as_db_error().unwrap().message().to_string();
    assert!(m.contains("stream a-1: expected 5, actual 1"), "{m}");
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 1);
    assert_eq!(count(&mut c, "SELECT es_stream_version('a-1')"), 1);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM es_streams WHERE version > 0"),
        1
    );
    // Refused before any position was taken.
    assert_eq!(
        count(
            &mut c,
            "SELECT last_value FROM _event_store.es_global_position_seq"
        ),
        before
    );
    // A bad event in the second entry: nothing of the first is written either.
    let r = c.query(
        "SELECT * FROM es_append_multi($1)",
        &[&json!([
            {"stream_id": "n-1", "events": [{"type": "A", "data": {}}]},
            {"stream_id": "a-1", "events": [{"type": "B", "data": []}]}
        ])],
    );
    let e = r.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "22023");
    let m = e.as_db_error().unwrap().message().to_string();
    assert!(
        m.starts_with("event_store: append 2: event 1: event_data must be a JSON object"),
        "{m}"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 1);
}

#[test]
fn multi_stream_input_errors() {
    let db = TestDb::new("multi_input");
    let mut c = db.connect();
    let cases: &[(Value, &str, &str)] = &[
        (json!(null), "22004", "appends must not be NULL"),
        (json!([]), "22023", "appends must not be an empty array"),
        (
            json!({}),
            "22023",
            "appends must be a JSON array, not object",
        ),
        (
            json!([1]),
            "22023",
            "append 1: must be a JSON object, not number",
        ),
        (
            json!([{"events": [{"type": "A", "data": {}}]}]),
            "22004",
            "append 1: stream_id must not be NULL",
        ),
        (
            json!([{"stream_id": "a-1"}]),
            "22004",
            "append 1: events must not be NULL",
        ),
        (
            json!([{"stream_id": "a-1", "expected_version": "x", "events": [{"type": "A", "data": {}}]}]),
            "22023",
            "append 1: expected_version must be an integer or null",
        ),
        (
            json!([{"stream_id": "a-1", "events": [{"type": "A", "data": {}}]},
                   {"stream_id": "a-1", "events": [{"type": "A", "data": {}}]}]),
            "22023",
            "stream a-1 is named twice",
        ),
    ];
    for (input, code, msg) in cases {
        let arg: Option<&Value> = if input.is_null() { None } else { Some(input) };
        let r = c.query("SELECT * FROM es_append_multi($1)", &[&arg]);
        let e = r.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some(*code), "{input}: {e}");
        let m = e.as_db_error().unwrap().message().to_string();
        assert!(m.contains(msg), "{input}: {m}");
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_streams"), 0);
}

#[test]
fn a_retried_multi_stream_append_returns_what_was_stored() {
    let db = TestDb::new("multi_retry");
    let mut c = db.connect();
    let appends = json!([
        {"stream_id": "a-1", "expected_version": 0, "events": [{"id": "0190a7b0-0000-7000-8000-000000000001", "type": "A", "data": {"n": 1}}]},
        {"stream_id": "b-1", "expected_version": 0, "events": [{"id": "0190a7b0-0000-7000-8000-000000000002", "type": "B", "data": {"n": 2}}]}
    ]);
    let sql = "SELECT stream_id, event_id::text, stream_version, global_position FROM es_append_multi($1)";
    let first: Vec<(String, String, i64, i64)> = c
        .query(sql, &[&appends])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    // The expected versions are stale now, but a retry of the same append is recognised.
    let again: Vec<(String, String, i64, i64)> = c
        .query(sql, &[&appends])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(first, again);
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 2);
    // The same id with other content is refused.
    let mut changed = appends.clone();
    changed[1]["events"][0]["data"]["n"] = json!(3);
    assert_eq!(sqlstate(c.query(sql, &[&changed])), "ES002");
    // One id used twice across streams.
    let twice = json!([
        {"stream_id": "c-1", "events": [{"id": "0190a7b0-0000-7000-8000-000000000009", "type": "A", "data": {}}]},
        {"stream_id": "d-1", "events": [{"id": "0190a7b0-0000-7000-8000-000000000009", "type": "A", "data": {}}]}
    ]);
    assert_eq!(sqlstate(c.query(sql, &[&twice])), "ES002");
}

#[test]
fn multi_stream_appends_in_opposite_orders_never_deadlock() {
    let db = Arc::new(TestDb::new("multi_deadlock"));
    let streams = ["x-1", "x-2", "x-3", "x-4"];
    let outcomes = race(&db, 4, move |w, c| {
        let mut order: Vec<&str> = streams.to_vec();
        if w % 2 == 1 {
            order.reverse();
        }
        let mut results = vec![];
        for _ in 0..40 {
            let mut tx = c.transaction().unwrap();
            let r = tx.query(
                "SELECT global_position FROM es_append_multi($1)",
                &[&multi(&order, 2)],
            );
            let ok = outcome(r.map(|rows| {
                let p: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                assert_consecutive(&p);
            }));
            // Hold the locks a moment so that the others queue behind them.
            std::thread::sleep(std::time::Duration::from_millis(1));
            tx.commit().unwrap();
            results.push(ok);
        }
        results
    });
    for o in outcomes.iter().flatten() {
        assert_eq!(o, "ok");
    }
    let mut c = db.connect();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM event_store"),
        4 * 40 * 4 * 2
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
}

#[test]
fn multi_stream_appends_from_concurrent_writers_take_consecutive_positions() {
    let db = Arc::new(TestDb::new("multi_positions"));
    // As for batches: many calls of many events, so that writers allocate at the same time.
    let calls = race(&db, 8, |w, c| {
        (0..40)
            .map(|k| {
                let names: Vec<String> = (0..10)
                    .map(|s| format!("m{}-{}", (w + s + k) % 7, s))
                    .collect();
                let streams: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
                let rows = c
                    .query(
                        "SELECT global_position FROM es_append_multi($1)",
                        &[&multi(&streams, 30)],
                    )
                    .unwrap();
                rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    });
    for positions in calls.iter().flatten() {
        assert_eq!(positions.len(), 300);
        assert_consecutive(positions);
    }
    let mut c = db.connect();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM event_store"),
        8 * 40 * 300
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
}
