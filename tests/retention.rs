//! Retention: es_apply_retention removes old events (whole chunks on TimescaleDB, batches on
//! plain PostgreSQL), and afterwards es_verify is clean, digests taken before still verify,
//! reads of the kept events are unchanged and state functions still fold; nothing else
//! removes events.
use event_store_testing::*;
use postgres::Client;
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// On TimescaleDB, one-second chunks, so that old events lie in chunks of their own.
fn small_chunks(c: &mut Client) {
    if timescaledb() {
        c.batch_execute("SELECT set_chunk_time_interval('event_store', interval '1 second')")
            .unwrap();
    }
}

/// Appends the events of `transactions`, waits until they lie in chunks that have ended, and
/// returns the instant after which events are kept.
fn old_events(c: &mut Client, transactions: &[&str]) -> SystemTime {
    small_chunks(c);
    for sql in transactions {
        c.batch_execute(sql).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1200));
    let mark: SystemTime = c.query_one("SELECT clock_timestamp()", &[]).unwrap().get(0);
    std::thread::sleep(Duration::from_millis(20));
    mark
}

/// es_apply_retention of everything before `mark`.
fn retain(c: &mut Client, mark: SystemTime, batch: i32) -> Value {
    c.query_one(
        "SELECT es_apply_retention(now() - $1::timestamptz, $2)",
        &[&mark, &batch],
    )
    .unwrap()
    .get(0)
}

fn problems(c: &mut Client, sql: &str) -> Vec<(String, Option<i64>, String)> {
    c.query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn state(c: &mut Client, sql: &str) -> Option<Value> {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// Every kept event as es_stream returns it.
fn kept(c: &mut Client) -> Vec<(String, i64, String, Value, Vec<u8>)> {
    c.query(
        "SELECT s.stream_id, e.stream_version, e.event_type, e.event_data, e.hash
           FROM es_streams s, es_stream(s.stream_id) e
          WHERE s.category <> 'event_store' ORDER BY 1, 2",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

#[test]
fn retention_keeps_every_check_clean_and_every_kept_read_unchanged() {
    let db = TestDb::new("ret_cut");
    let mut c = db.connect();
    small_chunks(&mut c);
    c.batch_execute(
        "SELECT es_append('order-1', 'Placed', '{\"total\": 120, \"status\": \"placed\"}');
         SELECT es_append('order-1', 'Paid', '{\"paid\": 120}');",
    )
    .unwrap();
    // A digest whose head of order-1 (version 2) retention will remove.
    let early: Value = c.query_one("SELECT es_digest()", &[]).unwrap().get(0);
    let mark = old_events(
        &mut c,
        &[
            "SELECT es_append('order-1', 'Packed', '{\"status\": \"packed\"}');
         SELECT es_append('order-2', 'Placed', '{\"total\": 80}');
         SELECT es_append('order-2', 'Paid', '{\"paid\": 80}');
         SELECT es_append('gone-1', 'Opened', '{\"open\": true}');
         SELECT es_append('gone-1', 'Closed', '{\"open\": false}');",
        ],
    );
    // A digest whose heads retention will keep as anchors.
    let before_cut: Value = c.query_one("SELECT es_digest()", &[]).unwrap().get(0);
    c.batch_execute(
        "SELECT es_append('order-1', 'Shipped', '{\"status\": \"shipped\"}');
         SELECT es_append('order-2', 'Cancelled', '{\"status\": \"cancelled\"}');",
    )
    .unwrap();
    let states = |c: &mut Client| {
        [
            "SELECT es_state('order-1')",
            "SELECT es_state('order-2')",
            "SELECT es_state('gone-1')",
            "SELECT es_state_at_version('order-1', 3)",
        ]
        .map(|q| state(c, q))
    };
    let states_before = states(&mut c);
    // What is kept: order-1 from version 4, order-2 from 3, nothing of gone-1.
    let first_kept = |stream: &str| match stream {
        "order-1" => 4,
        "order-2" => 3,
        _ => i64::MAX,
    };
    let kept_before: Vec<_> = kept(&mut c)
        .into_iter()
        .filter(|k| k.1 >= first_kept(&k.0))
        .collect();

    let done = retain(&mut c, mark, 100_000);
    assert_eq!(done["events_removed"], 7, "{done}");
    assert_eq!(done["streams_cut"], 3, "{done}");
    assert_eq!(done["complete"], true, "{done}");
    assert_eq!(done["whole_chunks"], timescaledb(), "{done}");

    assert_eq!(
        problems(&mut c, "SELECT * FROM es_verify(NULL, snapshots => true)"),
        vec![]
    );
    assert_eq!(kept(&mut c), kept_before);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_read_all(0) WHERE stream_id NOT LIKE 'event_store-%'"
        ),
        2
    );
    assert_eq!(states(&mut c), states_before);
    // The metrics count the kept events (and the record), and say when retention cut.
    let metric = |c: &mut Client, name: &str| -> Option<f64> {
        c.query_opt("SELECT value FROM es_metrics WHERE name = $1", &[&name])
            .unwrap()
            .map(|r| r.get(0))
    };
    let held = count(&mut c, "SELECT count(*) FROM event_store") as f64;
    assert_eq!(metric(&mut c, "event_store_events"), Some(held));
    assert!(metric(&mut c, "event_store_retention_last_cut_timestamp_seconds").is_some());
    // A state before the cut needs the removed events: refused, never a wrong answer.
    let e = c.query_one("SELECT es_state_at_version('order-1', 2)", &[]);
    assert_eq!(sqlstate(e), "ES008");
    // A custom reducer has no snapshots: it cannot fold a cut stream, only others.
    c.batch_execute(
        "CREATE FUNCTION public.merge(s jsonb, e event_store) RETURNS jsonb
             LANGUAGE sql AS $$ SELECT coalesce(s, '{}') || e.event_data $$;
         SELECT es_append('fresh-1', 'Opened', '{\"open\": true}');",
    )
    .unwrap();
    let e = c.query_one(
        "SELECT es_state('order-1', 'public.merge(jsonb, event_store)')",
        &[],
    );
    assert_eq!(sqlstate(e), "ES008");
    assert_eq!(
        state(
            &mut c,
            "SELECT es_state('fresh-1', 'public.merge(jsonb, event_store)')"
        ),
        Some(serde_json::json!({"open": true}))
    );
    // Digests taken before still verify: one whose heads are anchors, one whose heads are gone.
    for d in [&early, &before_cut] {
        assert_eq!(
            problems(&mut c, &format!("SELECT * FROM es_verify_digest('{d}')")),
            vec![],
            "{d}"
        );
    }
    // And so does one taken after.
    let after: Value = c.query_one("SELECT es_digest()", &[]).unwrap().get(0);
    assert_eq!(
        problems(
            &mut c,
            &format!("SELECT * FROM es_verify_digest('{after}')")
        ),
        vec![]
    );
    // The record says what was removed, and holds no event data.
    let (ty, data): (String, Value) = c
        .query_one(
            "SELECT event_type, event_data FROM es_stream('event_store-retention')",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(ty, "RetentionApplied");
    assert_eq!(data["events_removed"], 7);
    // A stream cut whole goes on from its head.
    c.batch_execute(
        "SELECT es_append('gone-1', 'Reopened', '{\"open\": true}', expected_version => 2)",
    )
    .unwrap();
    assert_eq!(problems(&mut c, "SELECT * FROM es_verify()"), vec![]);
    // A forged anchor is found: the first kept event no longer chains to it.
    c.batch_execute(
        "UPDATE es_anchors SET prev_hash = sha256('forged') WHERE stream_id = 'order-2'",
    )
    .unwrap();
    assert_eq!(
        problems(&mut c, "SELECT * FROM es_verify()"),
        vec![("order-2".to_string(), Some(3), "modified".to_string())]
    );
}

#[test]
fn only_es_apply_retention_removes_events_and_only_who_is_granted_it() {
    let db = TestDb::new("ret_guard");
    let mut c = db.connect();
    let mark = old_events(
        &mut c,
        &["SELECT es_append('a-1', 'T', '{}'); SELECT es_append('a-1', 'T', '{}');"],
    );
    let writer = format!("{}_writer", db.name);
    let ops = format!("{}_ops", db.name);
    c.batch_execute(&format!(
        "CREATE ROLE {writer} IN ROLE event_store_writer; CREATE ROLE {ops};
         GRANT USAGE ON SCHEMA public TO {ops};
         GRANT EXECUTE ON FUNCTION es_apply_retention(interval, integer) TO {ops};"
    ))
    .unwrap();
    let mut w = db.connect_as(&writer);
    let e = w.query_one("SELECT es_apply_retention(interval '0')", &[]);
    assert_eq!(sqlstate(e), "42501");
    assert_eq!(sqlstate(w.execute("DELETE FROM event_store", &[])), "42501");
    for bad in ["NULL", "interval '-1 day'"] {
        let e = c.query_one(&format!("SELECT es_apply_retention({bad})"), &[]);
        assert_eq!(sqlstate(e), if bad == "NULL" { "22004" } else { "22023" });
    }
    let e = c.query_one("SELECT es_apply_retention(interval '1 day', 0)", &[]);
    assert_eq!(sqlstate(e), "22023");
    // The granted role removes them; the guard is back for everyone in the same transaction.
    let mut o = db.connect_as(&ops);
    o.batch_execute("BEGIN").unwrap();
    let done: Value = o
        .query_one(
            "SELECT es_apply_retention(now() - $1::timestamptz)",
            &[&mark],
        )
        .unwrap()
        .get(0);
    assert_eq!(done["events_removed"], 2, "{done}");
    o.batch_execute("COMMIT").unwrap();
    c.batch_execute("SELECT es_append('a-1', 'T', '{}')")
        .unwrap();
    assert_eq!(sqlstate(c.execute("DELETE FROM event_store", &[])), "ES003");
    c.batch_execute("BEGIN").unwrap();
    c.query_one("SELECT es_apply_retention(interval '1 day')", &[])
        .unwrap();
    assert_eq!(sqlstate(c.execute("DELETE FROM event_store", &[])), "ES003");
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
}

#[test]
fn plain_postgresql_removes_old_events_in_batches() {
    if timescaledb() {
        return; // a hypertable drops whole chunks in one call (the test above)
    }
    let db = TestDb::new("ret_batch");
    let mut c = db.connect();
    // Three events of one append share an instant; four more follow, one by one.
    let mark = old_events(
        &mut c,
        &[
            "SELECT es_append_batch('s-1', '[{\"type\": \"T\", \"data\": {\"n\": 1}},
                 {\"type\": \"T\", \"data\": {\"n\": 2}}, {\"type\": \"T\", \"data\": {\"n\": 3}}]')",
            "SELECT es_append('s-' || (g % 3), 'T', jsonb_build_object('n', g)) FROM generate_series(4, 7) g",
        ],
    );
    c.batch_execute("SELECT es_append('s-1', 'T', '{\"n\": 8}')")
        .unwrap();
    let head_state = state(&mut c, "SELECT es_state('s-1')");
    // A batch never splits an instant: the first takes all three.
    let mut removed = vec![];
    loop {
        let done = retain(&mut c, mark, 2);
        removed.push(done["events_removed"].as_i64().unwrap());
        assert_eq!(
            count(&mut c, "SELECT count(*) FROM es_verify(NULL, true)"),
            0
        );
        if done["complete"] == true {
            break;
        }
    }
    assert_eq!(removed, vec![3, 2, 2]);
    assert_eq!(retain(&mut c, mark, 2)["events_removed"], 0);
    assert_eq!(state(&mut c, "SELECT es_state('s-1')"), head_state);
    // A record per run that removed events; none for the one that removed nothing.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_stream('event_store-retention')"
        ),
        3
    );
}

#[test]
fn a_retention_policy_is_applied_for_the_store() {
    let db = TestDb::new("ret_policy");
    let mut c = db.connect();
    let mark = old_events(
        &mut c,
        &["SELECT es_append('a-1', 'T', '{}'); SELECT es_append('b-1', 'T', '{}');"],
    );
    // The policy is an age, set below as the time since `mark`: an event appended this long
    // after `mark` stays unless the policy runs this long after it was set.
    std::thread::sleep(Duration::from_millis(1500));
    c.batch_execute("SELECT es_append('a-1', 'T', '{}')")
        .unwrap();
    let e = c.query_one("SELECT es_set_retention(interval '-1 day')", &[]);
    assert_eq!(sqlstate(e), "22023");
    c.execute("SELECT es_set_retention(now() - $1::timestamptz)", &[&mark])
        .unwrap();
    let removed =
        |c: &mut Client| count(c, "SELECT count(*) FROM es_stream('event_store-retention')");
    if std::env::var("ES_TEST_WORKER").as_deref() == Ok("1") {
        // The worker applies it.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while removed(&mut c) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the worker did not apply the policy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        // What the worker runs: due now, then not again for an hour.
        let more: bool = c
            .query_one("SELECT _event_store._es_apply_retention_policy()", &[])
            .unwrap()
            .get(0);
        assert!(!more);
        assert_eq!(removed(&mut c), 1);
        c.query_one("SELECT _event_store._es_apply_retention_policy()", &[])
            .unwrap();
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE stream_id NOT LIKE 'event_store-%'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_retention WHERE next_run_at > now() + interval '50 minutes'"
        ),
        1
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
    c.batch_execute("SELECT es_set_retention(NULL)").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_retention"), 0);
}
