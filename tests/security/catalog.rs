//! An append that waited for a catalog change is checked, and sealed, by that change.
use super::*;

// ---- Issue 22, item 4: an append that waited for a catalog change is checked against it.

/// Runs `sql` as `role` on a thread; returns once the statement waits for a lock.
fn queued(
    db: &std::sync::Arc<TestDb>,
    role: &str,
    sql: &'static str,
) -> std::thread::JoinHandle<String> {
    let mut w = db.connect_as(role);
    let pid: i32 = w.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let h = std::thread::spawn(move || outcome(w.batch_execute(sql)));
    let mut c = db.connect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(
        &mut c,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event_type = 'Lock'"
        ),
    ) == 0
    {
        assert!(Instant::now() < deadline, "the append never waited");
        std::thread::sleep(Duration::from_millis(20));
    }
    h
}

#[test]
fn an_append_queued_behind_a_catalog_change_is_sealed_and_validated_by_it() {
    let db = std::sync::Arc::new(TestDb::new("sec_catalog_queue"));
    let mut c = db.connect();
    let writer = role(&db, &mut c, "writer", "IN ROLE event_store_writer");
    // The writer's backend has read the catalog before (and would keep it).
    let mut w = db.connect_as(&writer);
    w.batch_execute("SELECT es_append('warm-1', 'Warm', '{}')")
        .unwrap();
    drop(w);
    for isolation in ["READ COMMITTED", "REPEATABLE READ"] {
        let mut admin = db.connect();
        admin
            .batch_execute(&format!(
                "BEGIN; SELECT es_define_event_type('Signup{}', personal_data => '{{/email}}', subject => '/user')",
                isolation.len()
            ))
            .unwrap();
        let sql: &'static str = if isolation == "READ COMMITTED" {
            "SELECT es_append('signup-1', 'Signup14', '{\"user\": \"u1\", \"email\": \"u1@plain.example\"}')"
        } else {
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM event_store;
             SELECT es_append('signup-2', 'Signup15', '{\"user\": \"u2\", \"email\": \"u2@plain.example\"}');
             COMMIT;"
        };
        let h = queued(&db, &writer, sql);
        admin.batch_execute("COMMIT").unwrap();
        assert_eq!(h.join().unwrap(), "ok", "{isolation}");
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE event_data::text LIKE '%plain.example%'"
        ),
        0,
        "an event was stored with its personal data in the clear"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE stream_id LIKE 'signup-%'"
        ),
        2
    );
    // A new schema: the queued append is validated by it.
    let mut admin = db.connect();
    admin
        .batch_execute(
            "BEGIN; SELECT es_define_event_type('Order', '{\"type\": \"object\", \"required\": [\"total\"]}')",
        )
        .unwrap();
    let h = queued(&db, &writer, "SELECT es_append('order-1', 'Order', '{}')");
    admin.batch_execute("COMMIT").unwrap();
    assert_eq!(h.join().unwrap(), "ES004");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE stream_id = 'order-1'"
        ),
        0
    );
}
