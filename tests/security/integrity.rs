//! es_verify finds what a superuser's edit left behind, and every event id is held by one event.
use super::*;

#[test]
fn es_verify_checks_the_registry_positions_and_snapshots() {
    let db = TestDb::new("sec_verify");
    let mut c = db.connect();
    c.batch_execute(
        "SELECT es_append('a-1', 'T', jsonb_build_object('n', g)) FROM generate_series(1, 3) g;
         SELECT es_append('b-1', 'T', '{\"n\": 1}');
         SELECT es_snapshot('a-1');",
    )
    .unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_verify(NULL, snapshots => true)"
        ),
        0
    );
    let problems = |c: &mut postgres::Client, sql: &str| -> Vec<(String, String)> {
        c.query(sql, &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(2)))
            .collect()
    };
    // A registry edited so that es_stream stops before the last event.
    c.batch_execute(
        "SET session_replication_role = replica;
         UPDATE es_streams SET last_at = last_at - interval '1 hour' WHERE stream_id = 'b-1';
         RESET session_replication_role;",
    )
    .unwrap();
    assert_eq!(
        problems(&mut c, "SELECT * FROM es_verify()"),
        vec![("b-1".to_string(), "registry".to_string())]
    );
    // A snapshot edited so that es_state lies; found only when asked for.
    c.batch_execute("UPDATE es_snapshots SET state = '{\"n\": 42}' WHERE stream_id = 'a-1'")
        .unwrap();
    assert_eq!(problems(&mut c, "SELECT * FROM es_verify('a-1')"), vec![]);
    assert_eq!(
        problems(&mut c, "SELECT * FROM es_verify('a-1', snapshots => true)"),
        vec![("a-1".to_string(), "snapshot".to_string())]
    );
    // The sequence set back: positions handed out twice.
    c.batch_execute("SELECT setval('_event_store.es_global_position_seq', 2)")
        .unwrap();
    let found = problems(&mut c, "SELECT * FROM es_verify('a-1')");
    assert_eq!(found, vec![("a-1".to_string(), "position".to_string())]);
    c.batch_execute("SELECT es_append('c-1', 'T', '{}')")
        .unwrap();
    let found = problems(&mut c, "SELECT * FROM es_verify('c-1')");
    assert_eq!(
        found,
        vec![("c-1".to_string(), "duplicate position".to_string())]
    );
}

// ---- Issue 22, item 3: every event id is unique.

#[test]
fn a_store_generated_event_id_cannot_be_taken_by_another_append() {
    let db = TestDb::new("sec_generated_id");
    let mut c = db.connect();
    let a = role(&db, &mut c, "writer_a", "IN ROLE event_store_writer");
    let b = role(&db, &mut c, "writer_b", "IN ROLE event_store_writer");
    let mut wa = db.connect_as(&a);
    let id: uuid::Uuid = wa
        .query_one(
            "SELECT event_id FROM es_append('order-1', 'Placed', '{\"n\": 1}')",
            &[],
        )
        .unwrap()
        .get(0);
    let mut wb = db.connect_as(&b);
    let r = wb.execute(
        "SELECT es_append('order-2', 'Placed', '{\"n\": 2}', id => $1)",
        &[&id],
    );
    assert_eq!(sqlstate(r), "ES002");
    let r = wb.execute(
        "SELECT es_append_batch('order-3', jsonb_build_array(jsonb_build_object('type', 'Placed', 'data', '{}'::jsonb, 'id', $1::text)))",
        &[&id.to_string()],
    );
    assert_eq!(sqlstate(r), "ES002");
    assert_eq!(
        count(
            &mut c,
            &format!("SELECT count(*) FROM event_store WHERE event_id = '{id}'")
        ),
        1
    );
    // A batch's generated ids are claimed too.
    let ids: Vec<uuid::Uuid> = wa
        .query(
            "SELECT event_id FROM es_append_batch('order-4', '[{\"type\": \"Placed\", \"data\": {}}, {\"type\": \"Placed\", \"data\": {}}]')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let r = wb.execute(
        "SELECT es_append('order-5', 'Placed', '{}', id => $1)",
        &[&ids[1]],
    );
    assert_eq!(sqlstate(r), "ES002");
}

#[test]
fn es_verify_reports_event_ids_held_twice() {
    let db = TestDb::new("sec_verify_ids");
    let mut c = db.connect();
    let auditor = role(&db, &mut c, "auditor", "IN ROLE event_store_reader");
    c.batch_execute(
        "SELECT es_append('a-1', 'T', '{}');
         SELECT es_append('b-1', 'T', '{}');
         SELECT es_append('c-1', 'T', '{}');
         -- Two events given one id behind the store's back.
         SET session_replication_role = replica;
         UPDATE event_store SET event_id = (SELECT event_id FROM event_store WHERE stream_id = 'a-1')
          WHERE stream_id = 'b-1';
         RESET session_replication_role;",
    )
    .unwrap();
    let mut r = db.connect_as(&auditor);
    let problems = |r: &mut postgres::Client, sql: &str| -> Vec<(String, String)> {
        r.query(sql, &[])
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(2)))
            .filter(|(_, p): &(String, String)| p == "duplicate id")
            .collect()
    };
    assert_eq!(
        problems(&mut r, "SELECT * FROM es_verify()"),
        vec![
            ("a-1".to_string(), "duplicate id".to_string()),
            ("b-1".to_string(), "duplicate id".to_string())
        ]
    );
    assert_eq!(
        problems(&mut r, "SELECT * FROM es_verify('b-1')"),
        vec![("b-1".to_string(), "duplicate id".to_string())]
    );
    assert_eq!(problems(&mut r, "SELECT * FROM es_verify('c-1')"), vec![]);
}
