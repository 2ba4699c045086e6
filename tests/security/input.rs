//! Hostile input (events and digests nested too deep, versions out of range) fails with a
//! documented SQLSTATE, never a crash.
use super::*;

#[test]
fn deep_events_are_refused_and_old_ones_fail_cleanly() {
    let cluster = Cluster::start("deep");
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE EXTENSION event_store; CREATE ROLE deep_writer IN ROLE event_store_writer",
    )
    .unwrap();
    let deep = |n: usize| format!("{{\"a\": {}1{}}}", "[".repeat(n), "]".repeat(n));
    let mut w = cluster.connect();
    w.batch_execute("SET ROLE deep_writer").unwrap();
    let append = "SELECT * FROM es_append('deep-1', 'T', $1::text::jsonb)";
    assert_eq!(sqlstate(w.query(append, &[&deep(14_400)])), "54000");
    assert_eq!(sqlstate(w.query(append, &[&deep(64)])), "54000"); // 65 levels with the object
    w.query(append, &[&deep(63)]).unwrap();
    let batch = format!(
        "[{{\"type\": \"T\", \"data\": {{}}}}, {{\"type\": \"T\", \"data\": {}}}]",
        deep(100)
    );
    assert!(message(w.query(
        "SELECT * FROM es_append_batch('deep-1', $1::text::jsonb)",
        &[&batch]
    ))
    .contains("event 2: event_data nests"));
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 1);
    // An event stored before the limit existed (here: by a superuser around es_append).
    c.query(
        "WITH s AS (INSERT INTO es_streams (stream_id, version, first_at, last_at, last_position, head_hash)
                    VALUES ('old-1', 1, now(), now(), 99, '\\x00') RETURNING 1)
         INSERT INTO event_store (global_position, event_id, stream_id, stream_version, event_type,
                                  event_data, created_at, hash)
         SELECT 99, gen_random_uuid(), 'old-1', 1, 'T', $1::text::jsonb, now(), '\\x00' FROM s",
        &[&deep(14_400)],
    )
    .unwrap();
    let mut r = cluster.connect();
    for sql in [
        "SELECT es_state('old-1')",
        "SELECT es_fold(e ORDER BY stream_version) FROM event_store e WHERE stream_id = 'old-1'",
        "SELECT count(*) FROM es_diff('old-1', '-infinity', 'infinity')",
    ] {
        assert_eq!(sqlstate(r.query(sql, &[])), "54001", "{sql}");
        assert!(cluster.alive(&mut c), "the server crashed on {sql}");
    }
}

// ---- Issue 22, item 7: every error a documented SQLSTATE.

#[test]
fn deep_digests_and_huge_versions_fail_with_documented_sqlstates() {
    let db = TestDb::new("sec_sqlstates");
    let mut c = db.connect();
    let auditor = role(&db, &mut c, "auditor", "IN ROLE event_store_reader");
    let writer = role(&db, &mut c, "writer", "IN ROLE event_store_writer");
    let mut a = db.connect_as(&auditor);
    let deep = format!("{}1{}", "{\"a\": ".repeat(200), "}".repeat(200));
    for doc in [deep.as_str(), "[]", "{\"position\": 1e400}", "\"x\""] {
        assert_eq!(
            sqlstate(a.query(
                &format!("SELECT * FROM es_verify_digest('{doc}'::jsonb)"),
                &[]
            )),
            "22023",
            "{}",
            &doc[..doc.len().min(40)]
        );
    }
    let mut w = db.connect_as(&writer);
    for v in ["2147483648", "-2147483649", "99999999999999999999999"] {
        let r = w.query(
            &format!("SELECT * FROM es_append_batch('s-1', '[{{\"type\": \"T\", \"data\": {{}}, \"version\": {v}}}]')"),
            &[],
        );
        assert_eq!(sqlstate(r), "22023", "version {v}");
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 0);
}
