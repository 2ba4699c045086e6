//! Event types and their schemas: failures name the path and rule and write nothing, category
//! modes, every session sees a change, redefinitions accept every stored event, and the
//! catalog as a document.
use super::*;

#[test]
fn schema_failures_of_every_kind_name_the_path_and_rule_and_write_nothing() {
    let db = TestDb::new("catalog_schema");
    let mut c = db.connect();
    define_user(&mut c);
    let good = json!({"userId": "u1", "email": "ann@example.com", "address": {"zip": "12345"}});
    c.execute("SELECT es_append('user-1', 'UserRegistered', $1)", &[&good])
        .unwrap();
    let before = written(&mut c);
    let with = |k: &str, v: Value| {
        let mut d = good.clone();
        d[k] = v;
        d
    };
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("address");
    let cases = [
        (with("age", json!("old")), "/age", "type"),
        (missing, "", "required"),
        (
            with("email", json!("secret-not-an-email")),
            "/email",
            "pattern",
        ),
        (with("role", json!("root")), "/role", "enum"),
        (
            with("address", json!({"zip": "1234x"})),
            "/address/zip",
            "pattern",
        ),
        (with("address", json!({})), "/address", "required"),
        (with("age", json!(-1)), "/age", "minimum"),
    ];
    for (data, path, rule) in &cases {
        // A single append.
        let (code, msg, detail) =
            refusal(c.execute("SELECT es_append('user-2', 'UserRegistered', $1)", &[data]));
        assert_eq!(code, "ES004", "{data}: {msg}");
        assert!(msg.contains(&format!("at \"{path}\"")), "{msg}");
        assert_eq!(detail, format!("rule \"{rule}\" at path \"{path}\""));
        // The value itself never appears: it may be personal data.
        assert!(!msg.contains("secret-not-an-email"), "{msg}");
        // The same event third in a batch: named, and nothing of the batch written.
        let batch = json!([
            {"type": "UserRegistered", "data": good},
            {"type": "Other", "data": {}},
            {"type": "UserRegistered", "data": data},
        ]);
        let (code, msg, _) = refusal(c.execute("SELECT es_append_batch('user-3', $1)", &[&batch]));
        assert_eq!(code, "ES004");
        assert!(msg.contains("event 3: "), "{msg}");
        // And in a multi-stream append.
        let multi = json!([
            {"stream_id": "user-4", "events": [{"type": "UserRegistered", "data": good}]},
            {"stream_id": "user-5", "events": [{"type": "UserRegistered", "data": data}]},
        ]);
        let (code, msg, _) = refusal(c.execute("SELECT es_append_multi($1)", &[&multi]));
        assert_eq!(code, "ES004");
        assert!(msg.contains("stream user-5, event 1: "), "{msg}");
        assert_eq!(written(&mut c), before);
    }
    // Another version of the type has no schema: accepted as it is.
    c.execute(
        "SELECT es_append('user-6', 'UserRegistered', '{}', event_version => 2)",
        &[],
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
}

#[test]
fn category_modes_strict_open_and_off() {
    let db = TestDb::new("catalog_modes");
    let mut c = db.connect();
    define_user(&mut c);
    c.batch_execute("SELECT es_define_event_type('OrderPlaced')")
        .unwrap();
    c.batch_execute("SELECT es_set_catalog_mode('order', 'strict')")
        .unwrap();
    let append = |c: &mut Client, stream: &str, ty: &str, data: &str, version: i32| {
        outcome(c.execute(
            "SELECT es_append($1, $2, $3::text::jsonb, event_version => $4)",
            &[&stream, &ty, &data, &version],
        ))
    };
    assert_eq!(append(&mut c, "order-1", "OrderPlaced", "{}", 1), "ok");
    assert_eq!(append(&mut c, "order-1", "Unknown", "{}", 1), "ES005");
    // Strict means the type at the event's version.
    assert_eq!(append(&mut c, "order-1", "OrderPlaced", "{}", 2), "ES005");
    let (_, msg, _) = refusal(c.execute("SELECT es_append('order-1', 'Unknown', '{}')", &[]));
    assert!(msg.contains("\"order\" is strict"), "{msg}");
    // Other categories stay open.
    assert_eq!(append(&mut c, "cart-1", "Unknown", "{}", 1), "ok");
    // '*' sets every category without its own mode.
    c.batch_execute("SELECT es_set_catalog_mode('*', 'strict')")
        .unwrap();
    assert_eq!(append(&mut c, "cart-1", "Unknown", "{}", 1), "ES005");
    // Off: nothing is checked, not even a schema.
    c.batch_execute("SELECT es_set_catalog_mode('user', 'off')")
        .unwrap();
    assert_eq!(append(&mut c, "user-1", "UserRegistered", "{}", 1), "ok");
    assert_eq!(append(&mut c, "user-1", "Anything", "{}", 1), "ok");
    c.batch_execute("SELECT es_set_catalog_mode('user', 'open')")
        .unwrap();
    assert_eq!(append(&mut c, "user-1", "UserRegistered", "{}", 1), "ES004");
    // Bad input.
    for (sql, state) in [
        ("SELECT es_set_catalog_mode('user', 'closed')", "22023"),
        ("SELECT es_set_catalog_mode('user', NULL)", "22004"),
        ("SELECT es_set_catalog_mode(NULL, 'open')", "22004"),
        ("SELECT es_define_event_type(NULL)", "22004"),
        ("SELECT es_define_event_type('T', version => 0)", "22023"),
        ("SELECT es_define_event_type('T', '3')", "22023"),
        (
            "SELECT es_define_event_type('T', '{\"type\": \"nothing\"}')",
            "22023",
        ),
        (
            "SELECT es_define_event_type('T', personal_data => ARRAY['/email'])",
            "22023",
        ),
        (
            "SELECT es_define_event_type('T', personal_data => ARRAY['email'], subject => '/id')",
            "22023",
        ),
        ("SELECT es_define_event_type('T', subject => 'id')", "22023"),
        (
            "SELECT es_define_upcast('T', 1, '{\"op\": \"nope\"}')",
            "22023",
        ),
        ("SELECT es_define_upcast('T', 1, NULL)", "22004"),
        ("SELECT es_drop_event_type(NULL)", "22004"),
    ] {
        assert_eq!(outcome(c.batch_execute(sql)), state, "{sql}");
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_event_types WHERE event_type = 'T'"
        ),
        0
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_upcasts"), 0);
}

#[test]
fn every_session_sees_a_catalog_change_at_its_next_append() {
    let db = TestDb::new("catalog_sessions");
    let mut a = db.connect();
    let mut b = db.connect();
    // `a` has read (and cached) the empty catalog.
    a.batch_execute("SELECT es_append('user-1', 'Other', '{}')")
        .unwrap();
    define_user(&mut b);
    assert_eq!(
        outcome(a.batch_execute("SELECT es_append('user-1', 'UserRegistered', '{}')")),
        "ES004"
    );
    b.batch_execute("SELECT es_drop_event_type('UserRegistered')")
        .unwrap();
    assert_eq!(
        outcome(a.batch_execute("SELECT es_append('user-1', 'UserRegistered', '{}')")),
        "ok"
    );
    // Within one transaction the change is seen at the next statement.
    let mut tx = a.transaction().unwrap();
    tx.batch_execute("SELECT es_set_catalog_mode('user', 'strict')")
        .unwrap();
    assert_eq!(
        outcome(tx.batch_execute("SELECT es_append('user-1', 'Whatever', '{}')")),
        "ES005"
    );
}

#[test]
fn a_redefinition_must_accept_every_stored_event() {
    let db = TestDb::new("catalog_redefine");
    let mut c = db.connect();
    c.batch_execute(
        "SELECT es_append('user-1', 'UserRegistered', '{\"email\": \"a@b\"}');
         SELECT es_append('user-2', 'UserRegistered', '{\"email\": \"c@d\", \"age\": \"x\"}');
         SELECT es_append('user-3', 'UserRegistered', '{\"age\": 3}', event_version => 2);",
    )
    .unwrap();
    let strict =
        r#"{"type": "object", "required": ["email"], "properties": {"age": {"type": "integer"}}}"#;
    let (code, msg, detail) = refusal(c.execute(
        "SELECT es_define_event_type('UserRegistered', $1::text::jsonb)",
        &[&strict],
    ));
    assert_eq!(code, "ES006", "{msg}");
    assert!(msg.contains("stream user-2, version 1"), "{msg}");
    assert_eq!(detail, "rule \"type\" at path \"/age\"");
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_event_types"), 0);
    // Version 2 holds an event without an email: that version cannot require one.
    assert_eq!(
        outcome(c.execute(
            "SELECT es_define_event_type('UserRegistered', '{\"required\": [\"email\"]}', 2)",
            &[]
        )),
        "ES006"
    );
    let lenient = r#"{"type": "object", "required": ["email"]}"#;
    c.execute(
        "SELECT es_define_event_type('UserRegistered', $1::text::jsonb, description => 'v1')",
        &[&lenient],
    )
    .unwrap();
    // Redefined with a description and a schema that still accepts everything stored.
    c.execute(
        "SELECT es_define_event_type('UserRegistered', $1::text::jsonb, description => 'signed up')",
        &[&lenient],
    )
    .unwrap();
    let row = c
        .query_one(
            "SELECT description, schema FROM es_event_types WHERE event_type = 'UserRegistered'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "signed up");
    assert_eq!(
        row.get::<_, Value>(1),
        serde_json::from_str::<Value>(lenient).unwrap()
    );
    assert_eq!(
        outcome(c.batch_execute("SELECT es_append('user-4', 'UserRegistered', '{}')")),
        "ES004"
    );
}

#[test]
fn the_catalog_as_a_document_and_who_may_change_it() {
    let db = TestDb::new("catalog_document");
    let mut c = db.connect();
    define_user(&mut c);
    c.batch_execute(
        "SELECT es_define_event_type('UserRegistered', NULL, 2, 'with a plan');
         SELECT es_define_upcast('UserRegistered', 1, '{\"op\": \"set\", \"path\": \"/plan\", \"value\": \"free\"}');
         SELECT es_append('user-1', 'UserRegistered', '{\"userId\": \"u1\", \"email\": \"a@b\", \"address\": {\"zip\": \"12345\"}}');
         SELECT es_append('user-1', 'UserRegistered', '{\"plan\": \"pro\"}', event_version => 2);
         SELECT es_append('order-1', 'OrderPlaced', '{}');
         SELECT es_append('cart-1', 'OrderPlaced', '{}');",
    )
    .unwrap();
    let rows = c
        .query(
            "SELECT event_type, in_catalog, description, jsonb_array_length(versions), personal_data,
                    subject, events_by_version, categories, first_seen IS NOT NULL
               FROM es_catalog()",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, String>(0), "OrderPlaced");
    assert!(!rows[0].get::<_, bool>(1));
    assert_eq!(rows[0].get::<_, Vec<String>>(7), vec!["cart", "order"]);
    assert_eq!(rows[0].get::<_, Value>(6), json!({"1": 2}));
    assert_eq!(rows[1].get::<_, String>(0), "UserRegistered");
    assert!(rows[1].get::<_, bool>(1));
    assert_eq!(
        rows[1].get::<_, Option<String>>(2).as_deref(),
        Some("with a plan")
    );
    assert_eq!(rows[1].get::<_, i32>(3), 2);
    assert_eq!(rows[1].get::<_, Vec<String>>(4), Vec::<String>::new());
    assert_eq!(rows[1].get::<_, Value>(6), json!({"1": 1, "2": 1}));
    assert!(rows[1].get::<_, bool>(8));
    // Readers read the catalog; only the owner (or whom it grants) changes it.
    // Roles are cluster-wide: named after the database.
    let (reader, writer) = (format!("{}_reader", db.name), format!("{}_writer", db.name));
    c.batch_execute(&format!(
        "CREATE ROLE {reader} IN ROLE event_store_reader; CREATE ROLE {writer} IN ROLE event_store_writer;"
    ))
    .unwrap();
    let mut r = db.connect_as(&reader);
    assert_eq!(count(&mut r, "SELECT count(*) FROM es_event_types"), 2);
    assert_eq!(count(&mut r, "SELECT count(*) FROM es_catalog()"), 2);
    let mut w = db.connect_as(&writer);
    for sql in [
        "SELECT es_define_event_type('X')",
        "SELECT es_drop_event_type('UserRegistered')",
        "SELECT es_define_upcast('X', 1, '{\"op\": \"ignore\"}')",
        "SELECT es_drop_upcast('UserRegistered', 1)",
        "SELECT es_set_catalog_mode('user', 'off')",
        "INSERT INTO es_catalog_types (event_type, version, defined_by) VALUES ('X', 1, 'me')",
        "DELETE FROM es_upcasts",
    ] {
        assert_eq!(outcome(w.batch_execute(sql)), "42501", "{sql}");
    }
    // A writer's appends are still checked.
    assert_eq!(
        outcome(w.batch_execute("SELECT es_append('user-2', 'UserRegistered', '{}')")),
        "ES004"
    );
}
