//! No role can stall the feed, and appends take no lock per event or per append that others wait on.
use super::*;

#[test]
fn no_role_can_stall_the_feed_and_open_appends_are_visible() {
    let db = TestDb::new("sec_feed");
    let mut c = db.connect();
    let nobody = role(&db, &mut c, "nobody", "LOGIN");
    c.batch_execute(&format!(
        "GRANT CONNECT ON DATABASE {} TO {nobody}",
        db.name
    ))
    .unwrap();
    let mut attacker = db.connect_as(&nobody);
    // The lock key an append in flight at position 0 registered under before this fix.
    attacker
        .batch_execute("SELECT pg_advisory_lock_shared(1163085380, -2147483648)")
        .unwrap();
    let pid: i32 = attacker
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    c.batch_execute("SELECT es_append('s-1', 'T', '{}')")
        .unwrap();
    let seen = count(&mut c, "SELECT count(*) FROM es_read_all(0, 10)");
    let holders = count(
        &mut c,
        &format!("SELECT count(*) FROM es_feed_in_flight WHERE pid = {pid}"),
    );
    if worker() {
        // Preloaded: appends register in shared memory, which only es_append writes.
        assert_eq!((seen, holders), (1, 0));
    } else {
        // Without preloading the registration is an advisory lock: the documented limit.
        // The view names the holder, so an operator can end it.
        assert_eq!((seen, holders), (0, 1));
        c.batch_execute(&format!("SELECT pg_terminate_backend({pid})"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(count(&mut c, "SELECT count(*) FROM es_read_all(0, 10)"), 1);
    }
    // An append left open shows, with its lowest position, and holds the feed.
    let mut open = db.connect();
    open.batch_execute("BEGIN; SELECT es_append('s-2', 'T', '{}')")
        .unwrap();
    let open_pid: i32 = open
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let row = c
        .query_one("SELECT lowest_position, registered_at IS NOT NULL FROM es_feed_in_flight WHERE pid = $1", &[&open_pid])
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, bool>(1)), (1, true));
    c.batch_execute("SELECT es_append('s-3', 'T', '{}')")
        .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_read_all(0, 10)"), 1);
    open.batch_execute("COMMIT").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_read_all(0, 10)"), 3);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_feed_in_flight"), 0);
}

#[test]
fn appends_take_no_lock_per_event_or_per_append() {
    let db = TestDb::new("sec_locks");
    let mut c = db.connect();
    c.batch_execute(
        "SELECT count(*) FROM es_append_batch('bulk-1',
            (SELECT jsonb_agg(jsonb_build_object('type', 'T', 'data', '{}'::jsonb, 'id', gen_random_uuid()))
               FROM generate_series(1, 40000)))",
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT es_stream_version('bulk-1')"), 40000);
    c.batch_execute("BEGIN").unwrap();
    for i in 0..2000 {
        c.query(
            "SELECT * FROM es_append($1, 'T', '{}', id => gen_random_uuid())",
            &[&format!("many-{}", i % 50)],
        )
        .unwrap();
    }
    let locks = count(
        &mut c,
        "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'",
    );
    assert!(locks <= 1, "{locks} advisory locks");
    c.batch_execute("COMMIT").unwrap();
    // Retries of ids are still stored once, and reuse elsewhere still refused.
    let id = "0191c3a0-0000-7000-8000-00000000abcd";
    for _ in 0..2 {
        c.query(
            "SELECT * FROM es_append('r-1', 'T', '{}', id => $1::text::uuid)",
            &[&id],
        )
        .unwrap();
    }
    assert_eq!(count(&mut c, "SELECT es_stream_version('r-1')"), 1);
    assert_eq!(
        sqlstate(c.query(
            "SELECT * FROM es_append('r-2', 'T', '{}', id => $1::text::uuid)",
            &[&id]
        )),
        "ES002"
    );
}
