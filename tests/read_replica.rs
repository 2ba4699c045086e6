//! Reads on a real hot standby: a base backup of a primary, streaming from it. Every read
//! works there, and the feed never hands out an event past an append still in flight on the
//! primary, which the standby cannot see.
use event_store_testing::*;
use postgres::Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Waits until the standby has replayed everything the primary has written.
fn catch_up(primary: &mut Client, standby: &mut Client) {
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done: bool = standby
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .unwrap()
            .get(0);
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the standby did not replay up to {lsn}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Publishes the horizon as the worker does (which needs the library preloaded).
fn publish(primary: &mut Client) -> i64 {
    primary
        .query_one("SELECT es_publish_feed_horizon()", &[])
        .unwrap()
        .get(0)
}

fn positions(c: &mut Client, sql: &str) -> Vec<i64> {
    c.query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn every_read_works_on_a_hot_standby() {
    let preload = if timescaledb() {
        "shared_preload_libraries = 'timescaledb'"
    } else {
        ""
    };
    let primary = Cluster::start_with("replica-primary", preload);
    let mut p = primary.connect();
    if timescaledb() {
        p.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb")
            .unwrap();
    }
    p.batch_execute(
        "CREATE EXTENSION event_store;
         SET event_store.snapshot_every = 2;
         SELECT es_define_reducer('user', 'Paid', '{\"op\": \"increment\", \"path\": \"/paid\", \"from\": \"/amount\"}');
         SELECT es_define_event_type('Paid', '{\"required\": [\"amount\"]}');
         SELECT es_append('user-1', 'Registered', '{\"mail\": \"a@b\"}');
         SELECT es_define_upcast('Registered', 1, '{\"op\": \"rename\", \"from\": \"/mail\", \"path\": \"/email\"}');
         SELECT es_append('user-1', 'Paid', '{\"amount\": 5}');
         SELECT es_append('user-1', 'Paid', '{\"amount\": 7}');
         SELECT es_append('order-1', 'Placed', '{}');",
    )
    .unwrap();
    let standby = primary.standby("replica-standby");
    let mut s = standby.connect();
    assert!(s
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get::<_, bool>(0));
    p.batch_execute("SELECT es_append('user-1', 'Paid', '{\"amount\": 1}')")
        .unwrap();
    assert_eq!(publish(&mut p), 5);
    catch_up(&mut p, &mut s);

    let versions = positions(&mut s, "SELECT stream_version FROM es_stream('user-1')");
    assert_eq!(versions, vec![1, 2, 3, 4]);
    let upcast: Value = s
        .query_one(
            "SELECT event_data FROM es_stream('user-1', upcast => true) LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(upcast, json!({"email": "a@b"}));
    // The state functions read the primary's snapshots and never try to take one.
    assert!(count(&mut s, "SELECT count(*) FROM es_snapshots") > 0);
    let want = json!({"email": "a@b", "paid": 13});
    for sql in [
        "SELECT es_state('user-1')",
        "SELECT es_state_at('user-1', now())",
        "SELECT es_state_at_version('user-1', 4)",
        "SELECT es_fold(e ORDER BY e.stream_version) FROM event_store e WHERE e.stream_id = 'user-1'",
    ] {
        let got: Value = s.query_one(sql, &[]).unwrap().get(0);
        assert_eq!(got, want, "{sql}");
    }
    s.batch_execute("SELECT es_drop_snapshots('user-1')")
        .expect_err("a standby is read-only");
    assert_eq!(
        count(
            &mut s,
            "SELECT count(*) FROM es_diff('user-1', '-infinity', now())"
        ),
        4
    );
    assert_eq!(
        count(&mut s, "SELECT count(*) FROM es_verify(NULL, true)"),
        0
    );
    assert_eq!(count(&mut s, "SELECT count(*) FROM es_verifications"), 0);
    let text: String = s
        .query_one("SELECT es_metrics_prometheus()", &[])
        .unwrap()
        .get(0);
    assert!(text.contains("event_store_events 5\n"), "{text}");
    assert_eq!(count(&mut s, "SELECT count(*) FROM es_catalog()"), 3);
    assert_eq!(
        positions(&mut s, "SELECT global_position FROM es_read_all()"),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        positions(
            &mut s,
            "SELECT global_position FROM es_read_category('order')"
        ),
        vec![4]
    );

    // An append in flight on the primary holds the standby's feed back too, though a later
    // one has committed and replayed.
    let mut slow = primary.connect();
    let mut tx = slow.transaction().unwrap();
    tx.batch_execute("SELECT es_append('user-2', 'Registered', '{}')")
        .unwrap();
    p.batch_execute("SELECT es_append('user-3', 'Registered', '{}')")
        .unwrap();
    assert_eq!(publish(&mut p), 5);
    catch_up(&mut p, &mut s);
    assert_eq!(
        count(
            &mut s,
            "SELECT count(*) FROM event_store WHERE stream_id = 'user-3'"
        ),
        1
    );
    assert_eq!(count(&mut s, "SELECT es_feed_horizon()"), 5);
    assert_eq!(
        positions(&mut s, "SELECT global_position FROM es_read_all(4)"),
        vec![5]
    );
    tx.commit().unwrap();
    assert_eq!(publish(&mut p), 7);
    catch_up(&mut p, &mut s);
    assert_eq!(
        positions(&mut s, "SELECT global_position FROM es_read_all(5)"),
        vec![6, 7]
    );
}
