//! es_append / es_append_batch / es_stream / es_state*: behaviour and errors.
use event_store_testing::*;
use serde_json::{json, Value};
use uuid::Uuid;

fn append(c: &mut postgres::Client, stream: &str, ty: &str, data: Value) -> (Uuid, i64, i64) {
    let r = c
        .query_one(
            "SELECT event_id, stream_version, global_position FROM es_append($1, $2, $3)",
            &[&stream, &ty, &data],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[test]
fn appends_number_streams_densely_and_feed_increases() {
    let db = TestDb::new("dense");
    let mut c = db.connect();
    let mut last_pos = 0;
    for i in 1..=5 {
        for s in ["user-1", "user-2"] {
            let (id, v, pos) = append(&mut c, s, "Touched", json!({ "i": i }));
            assert_eq!(v, i);
            assert!(pos > last_pos);
            assert_eq!(id.get_version_num(), 7, "generated ids are UUIDv7");
            last_pos = pos;
        }
    }
    let versions: Vec<i64> = c
        .query("SELECT stream_version FROM es_stream('user-1')", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    let from3: Vec<i64> = c
        .query("SELECT stream_version FROM es_stream('user-1', 3, 2)", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(from3, vec![3, 4]);
    assert_eq!(count(&mut c, "SELECT es_stream_version('user-2')"), 5);
    assert_eq!(count(&mut c, "SELECT es_stream_version('nobody')"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_stream('nobody')"), 0);
    let r = c.query_one("SELECT version, first_at <= last_at, category FROM es_streams WHERE stream_id = 'user-1'", &[]).unwrap();
    assert_eq!(r.get::<_, i64>(0), 5);
    assert!(r.get::<_, bool>(1));
    assert_eq!(r.get::<_, String>(2), "user");
}

#[test]
fn expected_version_any_new_and_exact() {
    let db = TestDb::new("expected");
    let mut c = db.connect();
    let q = "SELECT stream_version FROM es_append('order-1', 'Placed', '{}', '{}', $1)";
    assert_eq!(c.query_one(q, &[&0i64]).unwrap().get::<_, i64>(0), 1);
    let e = c.query_one(q, &[&0i64]);
    assert_eq!(sqlstate(c.query_one(q, &[&0i64])), "ES001");
    assert!(message(e).contains("expected 0, actual 1"));
    assert_eq!(c.query_one(q, &[&1i64]).unwrap().get::<_, i64>(0), 2);
    let e = c.query_one(q, &[&5i64]);
    assert!(message(e).contains("expected 5, actual 2"));
    assert_eq!(c.query_one(q, &[&None::<i64>]).unwrap().get::<_, i64>(0), 3);
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 3);
    // A new stream at expected version 3 is a conflict too, and leaves nothing behind.
    assert_eq!(
        sqlstate(c.query_one(
            "SELECT * FROM es_append('order-2', 'Placed', '{}', '{}', 3)",
            &[]
        )),
        "ES001"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_streams WHERE stream_id = 'order-2'"
        ),
        0
    );
}

#[test]
fn retry_with_same_id_is_idempotent_and_other_content_is_refused() {
    let db = TestDb::new("idempotent");
    let mut c = db.connect();
    let id = Uuid::new_v4();
    let q = "SELECT event_id, stream_version, global_position, created_at::text FROM es_append($1, 'Paid', $2, '{}', $3, $4)";
    let first = c
        .query_one(q, &[&"pay-1", &json!({"amount": 10}), &0i64, &id])
        .unwrap();
    // The retry repeats expected_version 0, which no longer holds: the original is returned.
    let again = c
        .query_one(q, &[&"pay-1", &json!({"amount": 10}), &0i64, &id])
        .unwrap();
    assert_eq!(first.get::<_, Uuid>(0), again.get::<_, Uuid>(0));
    assert_eq!(first.get::<_, i64>(2), again.get::<_, i64>(2));
    assert_eq!(first.get::<_, String>(3), again.get::<_, String>(3));
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 1);
    assert_eq!(
        sqlstate(c.query_one(q, &[&"pay-1", &json!({"amount": 11}), &None::<i64>, &id])),
        "ES002"
    );
    assert_eq!(
        sqlstate(c.query_one(q, &[&"pay-2", &json!({"amount": 10}), &None::<i64>, &id])),
        "ES002"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 1);
}

#[test]
fn batch_is_all_or_nothing_and_idempotent() {
    let db = TestDb::new("batch");
    let mut c = db.connect();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let events = json!([
        {"type": "Opened", "data": {"balance": 0}, "id": a},
        {"type": "Deposited", "data": {"balance": 5}, "metadata": {"by": "atm"}, "id": b, "version": 2},
        {"type": "Noted", "data": {"note": "x"}}
    ]);
    let rows = c.query("SELECT event_id, stream_version, global_position FROM es_append_batch('acct-1', $1, 0)", &[&events]).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i64>(1)).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(rows[0].get::<_, Uuid>(0), a);
    let r = c.query_one("SELECT event_version, metadata->>'by', created_at = (SELECT created_at FROM event_store WHERE stream_version = 1) FROM event_store WHERE event_id = $1", &[&b]).unwrap();
    assert_eq!(r.get::<_, i32>(0), 2);
    assert_eq!(r.get::<_, String>(1), "atm");
    assert!(r.get::<_, bool>(2), "a batch shares one created_at");

    // A bad element anywhere means nothing is written.
    let bad = json!([{"type": "Ok", "data": {}}, {"type": "Bad"}]);
    let e = c.query("SELECT * FROM es_append_batch('acct-1', $1)", &[&bad]);
    assert!(message(e).contains("event 2: \"event_data\" is missing"));
    assert_eq!(count(&mut c, "SELECT es_stream_version('acct-1')"), 3);

    // Retrying an all-id batch returns the originals; half-known batches are refused.
    let retry = json!([{"type": "Opened", "data": {"balance": 0}, "id": a}, {"type": "Deposited", "data": {"balance": 5}, "id": b, "version": 2}]);
    let again = c
        .query(
            "SELECT event_id, stream_version FROM es_append_batch('acct-1', $1, 0)",
            &[&retry],
        )
        .unwrap();
    assert_eq!(
        again.iter().map(|r| r.get::<_, i64>(1)).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let mixed = json!([{"type": "Opened", "data": {"balance": 0}, "id": a}, {"type": "New", "data": {}, "id": Uuid::new_v4()}]);
    assert_eq!(
        sqlstate(c.query("SELECT * FROM es_append_batch('acct-1', $1)", &[&mixed])),
        "ES002"
    );
    let twice = json!([{"type": "X", "data": {}, "id": a}, {"type": "X", "data": {}, "id": a}]);
    assert_eq!(
        sqlstate(c.query("SELECT * FROM es_append_batch('acct-9', $1)", &[&twice])),
        "ES002"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 3);
}

#[test]
fn bad_input_is_refused_with_documented_sqlstates_and_writes_nothing() {
    let db = TestDb::new("badinput");
    let mut c = db.connect();
    c.batch_execute("SET event_store.max_event_bytes = 2000")
        .unwrap();
    let long = "x".repeat(256);
    let cases: Vec<(&str, String)> = vec![
        ("22004", "SELECT * FROM es_append(NULL, 'T', '{}')".into()),
        ("22023", "SELECT * FROM es_append('', 'T', '{}')".into()),
        ("22023", format!("SELECT * FROM es_append('{long}', 'T', '{{}}')")),
        ("22023", "SELECT * FROM es_append(E's\\n1', 'T', '{}')".into()),
        ("22004", "SELECT * FROM es_append('s', NULL, '{}')".into()),
        ("22023", "SELECT * FROM es_append('s', '', '{}')".into()),
        ("22023", "SELECT * FROM es_append('s', E'T\\t', '{}')".into()),
        ("22004", "SELECT * FROM es_append('s', 'T', NULL)".into()),
        ("22023", "SELECT * FROM es_append('s', 'T', '[1]')".into()),
        ("22023", "SELECT * FROM es_append('s', 'T', '\"text\"')".into()),
        ("22004", "SELECT * FROM es_append('s', 'T', '{}', NULL)".into()),
        ("22023", "SELECT * FROM es_append('s', 'T', '{}', '[]')".into()),
        ("22023", "SELECT * FROM es_append('s', 'T', '{}', '{}', -1)".into()),
        ("22023", "SELECT * FROM es_append('s', 'T', '{}', '{}', NULL, NULL, 0)".into()),
        ("54000", format!("SELECT * FROM es_append('s', 'T', '{{\"big\": \"{}\"}}')", "y".repeat(3000))),
        ("22004", "SELECT * FROM es_append_batch('s', NULL)".into()),
        ("22023", "SELECT * FROM es_append_batch('s', '[]')".into()),
        ("22023", "SELECT * FROM es_append_batch('s', '{\"type\": \"T\"}')".into()),
        ("22023", "SELECT * FROM es_append_batch('s', '[1]')".into()),
        ("22004", "SELECT * FROM es_append_batch('s', '[{\"data\": {}}]')".into()),
        ("22023", "SELECT * FROM es_append_batch('s', '[{\"type\": \"T\", \"data\": {}, \"metadata\": 3}]')".into()),
        ("22P02", "SELECT * FROM es_append_batch('s', '[{\"type\": \"T\", \"data\": {}, \"id\": \"nope\"}]')".into()),
        ("22023", "SELECT * FROM es_append_batch('s', '[{\"type\": \"T\", \"data\": {}}]', -2)".into()),
    ];
    for (want, sql) in &cases {
        let got = sqlstate(c.query(sql.as_str(), &[]));
        assert_eq!(&got, want, "{sql}");
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_streams"), 0);
    // The limit is a setting: the same event fits under a larger one.
    c.batch_execute("SET event_store.max_event_bytes = 10000")
        .unwrap();
    c.query(cases[14].1.as_str(), &[]).unwrap();
}

#[test]
fn metadata_records_role_and_session_context() {
    let db = TestDb::new("metadata");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE ROLE es_app_metadata LOGIN; GRANT event_store_writer TO es_app_metadata; \
         CREATE ROLE es_app_metadata_2; GRANT event_store_writer TO es_app_metadata_2; \
         GRANT es_app_metadata_2 TO es_app_metadata;",
    )
    .unwrap();
    let mut app = db.connect_as("es_app_metadata");
    app.batch_execute(
        "SET event_store.correlation_id = 'req-42'; SET event_store.causation_id = 'cmd-7'",
    )
    .unwrap();
    app.query("SELECT * FROM es_append('user-1', 'UserRegistered', '{\"email\": \"a@x\"}', '{\"userId\": \"u1\"}')", &[]).unwrap();
    app.query("SELECT * FROM es_append('user-1', 'UserEmailChanged', '{}', '{\"correlationId\": \"explicit\", \"appendedBy\": \"forged\"}')", &[]).unwrap();
    // What the session changes reaches its next append.
    app.batch_execute(
        "SET event_store.correlation_id = 'req-43'; RESET event_store.causation_id; \
         SELECT es_append('user-1', 'UserSeen', '{}'); \
         SET ROLE es_app_metadata_2; SELECT es_append('user-1', 'UserSeen', '{}')",
    )
    .unwrap();
    let metas: Vec<Value> = c
        .query(
            "SELECT metadata FROM event_store ORDER BY stream_version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        metas[0],
        json!({"userId": "u1", "correlationId": "req-42", "causationId": "cmd-7", "appendedBy": "es_app_metadata"})
    );
    assert_eq!(
        metas[1],
        json!({"correlationId": "explicit", "causationId": "cmd-7", "appendedBy": "es_app_metadata"})
    );
    assert_eq!(
        metas[2..],
        [
            json!({"correlationId": "req-43", "appendedBy": "es_app_metadata"}),
            json!({"correlationId": "req-43", "appendedBy": "es_app_metadata_2"})
        ]
    );
    drop(app);
    c.batch_execute(
        "DROP OWNED BY es_app_metadata, es_app_metadata_2; DROP ROLE es_app_metadata; DROP ROLE es_app_metadata_2",
    )
    .unwrap();
}

#[test]
fn state_folds_by_merge_patch_at_instants_and_versions() {
    let db = TestDb::new("state");
    let mut c = db.connect();
    c.query("SELECT * FROM es_append('user-123', 'UserRegistered', '{\"userId\": \"123\", \"email\": \"a@x\", \"role\": \"user\", \"score\": 1.50}')", &[]).unwrap();
    let t1: String = c
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    append(
        &mut c,
        "user-123",
        "UserEmailChanged",
        json!({"email": "b@x"}),
    );
    append(
        &mut c,
        "user-123",
        "UserRoleChanged",
        json!({"role": null, "tags": ["admin"]}),
    );
    let state = |c: &mut postgres::Client, sql: &str| -> Option<Value> {
        c.query_one(sql, &[]).unwrap().get(0)
    };
    assert_eq!(
        state(&mut c, &format!("SELECT es_state_at('user-123', '{t1}')")),
        Some(
            serde_json::from_str(
                r#"{"userId": "123", "email": "a@x", "role": "user", "score": 1.50}"#
            )
            .unwrap()
        )
    );
    assert_eq!(
        state(&mut c, "SELECT es_state('user-123')"),
        Some(
            serde_json::from_str(
                r#"{"userId": "123", "email": "b@x", "score": 1.50, "tags": ["admin"]}"#
            )
            .unwrap()
        )
    );
    assert_eq!(
        state(&mut c, "SELECT es_state_at_version('user-123', 2)").unwrap()["email"],
        json!("b@x")
    );
    assert_eq!(
        state(&mut c, "SELECT es_state_at('user-123', '2000-01-01')"),
        None
    );
    assert_eq!(
        state(&mut c, "SELECT es_state_at_version('user-123', 0)"),
        None
    );
    assert_eq!(state(&mut c, "SELECT es_state('nobody')"), None);
    assert_eq!(state(&mut c, "SELECT es_state(NULL)"), None);
    // Numbers keep their exact text.
    let text: String = c
        .query_one("SELECT es_state('user-123')->>'score'", &[])
        .unwrap()
        .get(0);
    assert_eq!(text, "1.50");
}
