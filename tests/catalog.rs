//! The event catalog: schemas checked on append (nothing written on failure), category modes,
//! redefinitions checked against stored events, upcasts seen by every fold and on request by
//! reads, snapshots keyed by upcasts, and the catalog as a document.
use event_store_testing::{self as common, *};
use postgres::Client;
use rand::{rngs::StdRng, Rng};
use serde_json::{json, Map, Value};

const USER_SCHEMA: &str = r#"{
    "type": "object",
    "required": ["email", "address"],
    "properties": {
        "email": {"type": "string", "pattern": "^[^@]+@[^@]+$"},
        "role": {"enum": ["admin", "user"]},
        "age": {"type": "integer", "minimum": 0},
        "address": {"type": "object", "required": ["zip"],
                    "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}
    }
}"#;

fn define_user(c: &mut Client) {
    c.execute(
        "SELECT es_define_event_type('UserRegistered', $1::text::jsonb, 1, 'A user signed up',
                                     ARRAY['/email'], '/userId')",
        &[&USER_SCHEMA],
    )
    .unwrap();
}

/// (SQLSTATE, message, detail) of a failed statement.
fn refusal<T: std::fmt::Debug>(r: Result<T, postgres::Error>) -> (String, String, String) {
    let e = r.expect_err("expected an error");
    let db = e.as_db_error().expect("a database error");
    (
        db.code().code().to_string(),
        db.message().to_string(),
        db.detail().unwrap_or_default().to_string(),
    )
}

fn written(c: &mut Client) -> (i64, i64) {
    (
        count(c, "SELECT count(*) FROM event_store"),
        count(c, "SELECT count(*) FROM es_streams WHERE version > 0"),
    )
}

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

/// An upcast operation and what the model does with it.
#[derive(Clone, Debug)]
enum ModelOp {
    Rename(String, String),
    Set(String, i64),
    Remove(String),
}

impl ModelOp {
    fn json(&self) -> Value {
        match self {
            ModelOp::Rename(f, t) => {
                json!({"op": "rename", "from": format!("/{f}"), "path": format!("/{t}")})
            }
            ModelOp::Set(k, v) => json!({"op": "set", "path": format!("/{k}"), "value": v}),
            ModelOp::Remove(k) => json!({"op": "remove", "path": format!("/{k}")}),
        }
    }

    fn apply(&self, m: &mut Map<String, Value>) {
        match self {
            ModelOp::Rename(f, t) => {
                if let Some(v) = m.remove(f) {
                    m.insert(t.clone(), v);
                }
            }
            ModelOp::Set(k, v) => {
                m.insert(k.clone(), json!(v));
            }
            ModelOp::Remove(k) => {
                m.remove(k);
            }
        }
    }
}

fn random_chain(rng: &mut StdRng, latest: i32) -> Vec<Vec<ModelOp>> {
    let keys = ["a", "b", "c", "d"];
    (1..latest)
        .map(|_| {
            (0..rng.gen_range(1..3))
                .map(|_| {
                    let k = keys[rng.gen_range(0..keys.len())].to_string();
                    match rng.gen_range(0..3) {
                        0 => ModelOp::Rename(k, keys[rng.gen_range(0..keys.len())].to_string()),
                        1 => ModelOp::Set(k, rng.gen_range(100..200)),
                        _ => ModelOp::Remove(k),
                    }
                })
                .filter(|op| !matches!(op, ModelOp::Rename(f, t) if f == t))
                .collect::<Vec<_>>()
        })
        .map(|ops| {
            if ops.is_empty() {
                vec![ModelOp::Remove("z".into())]
            } else {
                ops
            }
        })
        .collect()
}

fn define_chain(c: &mut Client, chain: &[Vec<ModelOp>]) {
    for (i, ops) in chain.iter().enumerate() {
        let rule = Value::Array(ops.iter().map(ModelOp::json).collect());
        c.execute(
            "SELECT es_define_upcast('Changed', $1, $2)",
            &[&(i as i32 + 1), &rule],
        )
        .unwrap();
    }
}

/// The model: upcast each event through the chain, then merge it into the state (no reducer
/// is defined; values are integers, so a merge sets each key).
fn model_states(chain: &[Vec<ModelOp>], events: &[(i32, Map<String, Value>)]) -> Vec<Value> {
    let mut state = Map::new();
    events
        .iter()
        .map(|(version, data)| {
            let mut d = data.clone();
            for ops in &chain[(*version as usize - 1)..] {
                ops.iter().for_each(|op| op.apply(&mut d));
            }
            state.extend(d);
            Value::Object(state.clone())
        })
        .collect()
}

fn states(c: &mut Client, stream: &str) -> Vec<(Value, Value)> {
    c.query(
        "SELECT es_state_at_version($1, v.stream_version),
                (SELECT es_fold(e ORDER BY e.stream_version) FROM event_store e
                  WHERE e.stream_id = $1 AND e.stream_version <= v.stream_version)
           FROM event_store v WHERE v.stream_id = $1 ORDER BY v.stream_version",
        &[&stream],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn random_upcast_chains_fold_as_the_model_with_snapshots_and_without() {
    let db = TestDb::new("catalog_upcast_property");
    let mut c = db.connect();
    let (seed, mut rng) = common::seeded_rng();
    for round in 0..4 {
        let stream = format!("thing-{round}");
        let latest = rng.gen_range(2..5);
        let chain = random_chain(&mut rng, latest);
        c.batch_execute("DELETE FROM es_upcasts").unwrap();
        define_chain(&mut c, &chain);
        c.batch_execute(&format!(
            "SET event_store.snapshot_every = {}",
            rng.gen_range(1..5)
        ))
        .unwrap();
        let events: Vec<(i32, Map<String, Value>)> = (0..rng.gen_range(5..20))
            .map(|_| {
                let mut m = Map::new();
                for k in ["a", "b", "c", "d"] {
                    if rng.gen_bool(0.5) {
                        m.insert(k.into(), json!(rng.gen_range(0..100)));
                    }
                }
                (rng.gen_range(1..=latest), m)
            })
            .collect();
        for (version, data) in &events {
            c.execute(
                "SELECT es_append($1, 'Changed', $2, event_version => $3)",
                &[&stream, &Value::Object(data.clone()), version],
            )
            .unwrap();
        }
        let ctx = format!("seed {seed}, chain {chain:?}, events {events:?}");
        let expected = model_states(&chain, &events);
        let with_snapshots = states(&mut c, &stream);
        assert!(
            count(
                &mut c,
                &format!("SELECT count(*) FROM es_snapshots WHERE stream_id = '{stream}'")
            ) > 0,
            "{ctx}: no snapshot"
        );
        c.execute("SELECT es_drop_snapshots($1)", &[&stream])
            .unwrap();
        let without = states(&mut c, &stream);
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(
                &with_snapshots[i].0,
                want,
                "{ctx}: es_state_at_version {}",
                i + 1
            );
            assert_eq!(&with_snapshots[i].1, want, "{ctx}: es_fold {}", i + 1);
            assert_eq!(&without[i].0, want, "{ctx}: without snapshots {}", i + 1);
        }
        // Reads upcast on request, and return events as stored otherwise.
        let upcast: Vec<(i32, Value)> = c
            .query(
                "SELECT event_version, event_data FROM es_stream($1, upcast => true)",
                &[&stream],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let stored: Vec<i32> = c
            .query("SELECT event_version FROM es_stream($1)", &[&stream])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            stored,
            events.iter().map(|e| e.0).collect::<Vec<_>>(),
            "{ctx}"
        );
        for (i, (version, data)) in upcast.iter().enumerate() {
            assert_eq!(*version, latest, "{ctx}");
            let mut d = events[i].1.clone();
            for ops in &chain[(events[i].0 as usize - 1)..] {
                ops.iter().for_each(|op| op.apply(&mut d));
            }
            assert_eq!(data, &Value::Object(d), "{ctx}: event {}", i + 1);
        }
        // Changing an upcast: no state comes from a snapshot folded under the old one.
        c.execute("SELECT es_snapshot($1)", &[&stream]).unwrap();
        let mut changed = chain.clone();
        changed[0] = vec![
            ModelOp::Set("a".into(), 999),
            ModelOp::Rename("b".into(), "e".into()),
        ];
        define_chain(&mut c, &changed[..1]);
        let expected = model_states(&changed, &events);
        assert_eq!(
            c.query_one("SELECT es_state($1)", &[&stream])
                .unwrap()
                .get::<_, Value>(0),
            *expected.last().unwrap(),
            "{ctx}: after changing the first upcast"
        );
        assert_eq!(
            count(&mut c, "SELECT count(*) FROM es_verify(NULL, true)"),
            0,
            "{ctx}"
        );
    }
}

#[test]
fn projections_and_the_feed_see_upcast_events() {
    let db = TestDb::new("catalog_upcast_reads");
    let mut c = db.connect();
    // Handlers run as their projection's owner, never a superuser.
    let owner = format!("{}_owner", db.name);
    c.batch_execute(&format!(
        "SELECT es_append('user-1', 'UserRegistered', '{{\"mail\": \"a@b\"}}');
         SELECT es_append('user-1', 'UserRegistered', '{{\"contact\": {{\"email\": \"c@d\"}}}}', event_version => 2);
         SELECT es_define_upcast('UserRegistered', 1, '{{\"op\": \"rename\", \"from\": \"/mail\", \"path\": \"/contact/email\"}}');
         CREATE ROLE {owner} IN ROLE event_store_reader; GRANT CREATE ON SCHEMA public TO {owner};
         SET ROLE {owner};
         CREATE TABLE seen (version int, email text);
         CREATE FUNCTION remember(e event_store) RETURNS void LANGUAGE sql
             AS $$ INSERT INTO seen VALUES (e.event_version, e.event_data #>> '{{contact,email}}') $$;
         SELECT es_create_projection('emails', 'remember(event_store)');
         RESET ROLE;"
    ))
    .unwrap();
    let feed: Vec<(i32, Value)> = c
        .query(
            "SELECT event_version, event_data FROM es_read_all(upcast => true)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        feed,
        vec![
            (2, json!({"contact": {"email": "a@b"}})),
            (2, json!({"contact": {"email": "c@d"}}))
        ]
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_read_category('user', upcast => true) WHERE event_version = 2"
        ),
        2
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_read_all() WHERE event_version = 1"
        ),
        1
    );
    // Projections: run here, or wait for the worker.
    for _ in 0..300 {
        if std::env::var("ES_TEST_WORKER").as_deref() != Ok("1") {
            c.batch_execute("SELECT es_run_projections()").unwrap();
        }
        if count(&mut c, "SELECT count(*) FROM seen") == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let seen: Vec<(i32, String)> = c
        .query("SELECT version, email FROM seen ORDER BY email", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let status: (String, Option<String>) = c
        .query_one("SELECT status, last_error FROM es_projections", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        seen,
        vec![(2, "a@b".to_string()), (2, "c@d".to_string())],
        "{status:?}"
    );
    // A custom reducer sees them upcast too.
    c.batch_execute(
        "CREATE FUNCTION emails(s jsonb, e event_store) RETURNS jsonb LANGUAGE sql
             AS $$ SELECT s || jsonb_build_object(e.stream_version::text, e.event_data #>> '{contact,email}') $$;",
    )
    .unwrap();
    assert_eq!(
        c.query_one(
            "SELECT es_state('user-1', 'emails(jsonb, event_store)')",
            &[]
        )
        .unwrap()
        .get::<_, Value>(0),
        json!({"1": "a@b", "2": "c@d"})
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
