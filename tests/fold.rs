//! Reducers, snapshots, es_fold and es_diff against a real PostgreSQL, and the property that
//! every path to a state (snapshots or not, es_state_at or es_fold) gives the answer of an
//! independent fold in plain Rust.
use event_store_testing as common;

// The pure rule engine is the model the database must agree with.
use event_store_core::fold::{reducers, rules};

use common::{sqlstate, TestDb};
use postgres::Client;
use rand::Rng;
use serde_json::{json, Value};

fn state(c: &mut Client, sql: &str) -> Option<Value> {
    c.query_one(sql, &[]).unwrap().get(0)
}

fn define(c: &mut Client, category: &str, event_type: &str, rule: Value) {
    c.execute(
        "SELECT es_define_reducer($1, $2, $3)",
        &[&category, &event_type, &rule],
    )
    .unwrap();
}

fn append(c: &mut Client, stream: &str, ty: &str, data: Value) {
    c.execute(
        "SELECT 1 FROM es_append($1, $2, $3)",
        &[&stream, &ty, &data],
    )
    .unwrap();
}

#[test]
fn the_handed_user_stream_folds_by_its_reducers_in_every_state_function() {
    let db = TestDb::new("fold_user");
    let mut c = db.connect();
    for (event_type, rule) in [
        (
            "UserEmailChanged",
            json!({"op": "set", "path": "/email", "from": "/newEmail"}),
        ),
        (
            "UserRoleChanged",
            json!({"op": "set", "path": "/role", "from": "/newRole"}),
        ),
        (
            "UserLoggedIn",
            json!([{"op": "increment", "path": "/logins", "value": 1}, {"op": "set", "path": "/lastLogin", "from": "/at"}]),
        ),
    ] {
        define(&mut c, "user", event_type, rule);
    }
    append(
        &mut c,
        "user-1",
        "UserRegistered",
        json!({"email": "a@x", "role": "user"}),
    );
    let after_registration: String = c
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    append(
        &mut c,
        "user-1",
        "UserEmailChanged",
        json!({"newEmail": "b@x"}),
    );
    append(&mut c, "user-1", "UserLoggedIn", json!({"at": "monday"}));
    append(
        &mut c,
        "user-1",
        "UserRoleChanged",
        json!({"newRole": "admin"}),
    );
    append(&mut c, "user-1", "UserLoggedIn", json!({"at": "tuesday"}));
    append(
        &mut c,
        "user-2",
        "UserRegistered",
        json!({"email": "z@x", "role": "user"}),
    );

    let now = json!({"email": "b@x", "role": "admin", "logins": 2, "lastLogin": "tuesday"});
    assert_eq!(
        state(&mut c, "SELECT es_state('user-1')"),
        Some(now.clone())
    );
    assert_eq!(
        state(
            &mut c,
            &format!("SELECT es_state_at('user-1', '{after_registration}')")
        ),
        Some(json!({"email": "a@x", "role": "user"}))
    );
    assert_eq!(
        state(&mut c, "SELECT es_state_at_version('user-1', 3)"),
        Some(json!({"email": "b@x", "role": "user", "logins": 1, "lastLogin": "monday"}))
    );
    // The aggregate applies the same reducers, for every stream in one query.
    let rows = c
        .query(
            "SELECT stream_id, es_fold(e ORDER BY e.stream_version) FROM event_store e
              WHERE stream_id LIKE 'user-%' GROUP BY stream_id ORDER BY stream_id",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, Value>(1), now);
    assert_eq!(
        rows[1].get::<_, Value>(1),
        json!({"email": "z@x", "role": "user"})
    );
    // The NULL cases.
    assert_eq!(state(&mut c, "SELECT es_state('user-none')"), None);
    assert_eq!(
        state(&mut c, "SELECT es_state_at('user-1', '2000-01-01')"),
        None
    );
    assert_eq!(
        state(&mut c, "SELECT es_fold(e) FROM event_store e WHERE false"),
        None
    );
    assert_eq!(state(&mut c, "SELECT es_state_at(NULL, now())"), None);
    // Callers whose search_path leaves out the extension's schema get the same answers.
    c.batch_execute("SET search_path = pg_catalog").unwrap();
    assert_eq!(
        state(&mut c, "SELECT public.es_state('user-1')"),
        Some(now.clone())
    );
    assert_eq!(
        state(&mut c, "SELECT public.es_fold(e ORDER BY e.stream_version) FROM public.event_store e WHERE stream_id = 'user-1'"),
        Some(now)
    );
}

#[test]
fn bad_rules_are_refused_when_defined_and_leave_nothing_behind() {
    let db = TestDb::new("fold_bad_rules");
    let mut c = db.connect();
    let cases = [
        (
            "user",
            "T",
            json!({"op": "set", "path": "/a"}),
            "22023",
            "needs \"from\" or \"value\"",
        ),
        (
            "user",
            "T",
            json!({"op": "frobnicate"}),
            "22023",
            "unknown op \"frobnicate\"",
        ),
        ("user", "T", json!([]), "22023", "at least one operation"),
        (
            "user",
            "T",
            json!({"op": "set", "path": "email", "value": 1}),
            "22023",
            "not a JSON pointer",
        ),
        (
            "user",
            "T",
            json!({"op": "increment", "path": "/n", "value": "1"}),
            "22023",
            "must be a number",
        ),
        (
            "user-1",
            "T",
            json!({"op": "ignore"}),
            "22023",
            "must not contain \"-\"",
        ),
        (
            "",
            "T",
            json!({"op": "ignore"}),
            "22023",
            "must not be empty",
        ),
    ];
    for (category, event_type, rule, code, text) in cases {
        let r = c.execute(
            "SELECT es_define_reducer($1, $2, $3)",
            &[&category, &event_type, &rule],
        );
        let e = r.unwrap_err();
        assert_eq!(e.code().unwrap().code(), code, "{rule}");
        let msg = e.as_db_error().unwrap().message();
        assert!(msg.contains(text), "{rule}: {msg}");
    }
    assert_eq!(
        sqlstate(c.execute("SELECT es_define_reducer('user', 'T', NULL)", &[])),
        "22004"
    );
    assert_eq!(
        sqlstate(c.execute(
            "SELECT es_define_reducer(NULL, 'T', '{\"op\": \"ignore\"}')",
            &[]
        )),
        "22004"
    );
    assert_eq!(common::count(&mut c, "SELECT count(*) FROM es_reducers"), 0);
    // Replacing and dropping.
    define(&mut c, "user", "T", json!({"op": "ignore"}));
    define(&mut c, "user", "T", json!({"op": "merge"}));
    assert_eq!(
        c.query_one("SELECT rule FROM es_reducers", &[])
            .unwrap()
            .get::<_, Value>(0),
        json!({"op": "merge"})
    );
    assert!(c
        .query_one("SELECT es_drop_reducer('user', 'T')", &[])
        .unwrap()
        .get::<_, bool>(0));
    assert!(!c
        .query_one("SELECT es_drop_reducer('user', 'T')", &[])
        .unwrap()
        .get::<_, bool>(0));
}

#[test]
fn events_of_unexpected_shape_give_the_documented_results() {
    let db = TestDb::new("fold_shapes");
    let mut c = db.connect();
    for (event_type, rule) in [
        (
            "Deposited",
            json!({"op": "increment", "path": "/balance", "from": "/amount"}),
        ),
        (
            "Tagged",
            json!({"op": "append", "path": "/tags", "from": "/tag"}),
        ),
        (
            "Untagged",
            json!({"op": "remove_value", "path": "/tags", "from": "/tag"}),
        ),
        (
            "Moved",
            json!({"op": "set", "path": "/address/city", "from": "/to/city"}),
        ),
    ] {
        define(&mut c, "acct", event_type, rule);
    }
    for (t, d) in [
        ("Deposited", json!({"amount": 10.25})),
        ("Deposited", json!({"amount": "lots"})), // not a number: ignored
        ("Deposited", json!({})),                 // missing: ignored
        ("Deposited", json!({"amount": 0.75})),
        ("Tagged", json!({"tag": "vip"})),
        ("Tagged", json!({"tag": "new"})),
        ("Untagged", json!({"tag": "new"})),
        ("Untagged", json!({"tag": "never-there"})),
        ("Moved", json!({"to": "nowhere"})), // /to/city absent: ignored
        ("Moved", json!({"to": {"city": "Oslo"}})),
        ("Renamed", json!({"name": "Ann", "nickname": null})), // no rule: merge
    ] {
        append(&mut c, "acct-1", t, d);
    }
    let s: Value = serde_json::from_str(
        r#"{"balance": 11.00, "tags": ["vip"], "address": {"city": "Oslo"}, "name": "Ann"}"#,
    )
    .unwrap();
    assert_eq!(state(&mut c, "SELECT es_state('acct-1')"), Some(s));
    let text: String = c
        .query_one("SELECT es_state('acct-1') ->> 'balance'", &[])
        .unwrap()
        .get(0);
    assert_eq!(text, "11.00", "sums keep numeric scale");
}

/// The fold reads jsonb in place: wide objects (keys found by binary search, JEntry offsets
/// every 32 entries), long arrays, nested containers and numbers of every form must read as
/// jsonb itself reads them.
#[test]
fn wide_and_nested_events_read_as_jsonb_reads_them() {
    let db = TestDb::new("fold_wide");
    let mut c = db.connect();
    define(
        &mut c,
        "wide",
        "Picked",
        json!([{"op": "set", "path": "/picked", "from": "/k077"},
               {"op": "set", "path": "/last", "from": "/list/39/n"},
               {"op": "increment", "path": "/sum", "from": "/k150"}]),
    );
    let mut wide = serde_json::Map::new();
    for i in 0..200 {
        let v = match i % 5 {
            0 => json!(i),
            1 => serde_json::from_str(&format!("-{i}.{i:03}e1")).unwrap(),
            2 => json!(format!("v{}", "x".repeat(i))),
            3 => json!({"n": i, "deep": [i, {"k": [null, true, false]}]}),
            _ => json!(null),
        };
        wide.insert(format!("k{i:03}"), v);
    }
    let list: Vec<Value> = (0..40i64).map(|n| json!({"n": n * 1000000007})).collect();
    wide.insert("list".into(), json!(list));
    let wide = Value::Object(wide);
    append(&mut c, "wide-1", "Created", wide.clone());
    append(&mut c, "wide-1", "Picked", wide.clone());
    append(&mut c, "wide-1", "Picked", wide.clone());
    // jsonb's own reading, for comparison: merge drops the nulls (RFC 7396).
    let expected: Value = c
        .query_one(
            "SELECT jsonb_strip_nulls($1::jsonb) || jsonb_build_object('picked', $1::jsonb -> 'k077',
                    'last', $1::jsonb #> '{list,39,n}', 'sum', ($1::jsonb ->> 'k150')::numeric * 2)",
            &[&wide],
        )
        .unwrap()
        .get(0);
    let got = state(&mut c, "SELECT es_state('wide-1')").unwrap();
    assert_eq!(got, expected);
}

#[test]
fn a_changed_reducer_is_never_answered_from_an_old_snapshot() {
    let db = TestDb::new("fold_stale");
    let mut c = db.connect();
    for i in 1..=5 {
        append(
            &mut c,
            "order-1",
            "ItemAdded",
            json!({"sku": format!("s{i}"), "qty": i}),
        );
    }
    assert_eq!(
        c.query_one("SELECT es_snapshot('order-1')", &[])
            .unwrap()
            .get::<_, Option<i64>>(0),
        Some(5)
    );
    assert_eq!(
        state(&mut c, "SELECT es_state('order-1')"),
        Some(json!({"sku": "s5", "qty": 5}))
    );
    define(
        &mut c,
        "order",
        "ItemAdded",
        json!({"op": "increment", "path": "/items", "from": "/qty"}),
    );
    assert_eq!(
        state(&mut c, "SELECT es_state('order-1')"),
        Some(json!({"items": 15}))
    );
    assert_eq!(
        common::count(&mut c, "SELECT count(*) FROM es_snapshots"),
        0,
        "redefining dropped the category's snapshots"
    );
    // A snapshot left over from other rules (say, restored by hand) is not used either.
    c.batch_execute(
        "INSERT INTO es_snapshots (stream_id, reducers, stream_version, last_at, state)
         SELECT 'order-1', '\\x00', 5, last_at, '{\"stale\": true}' FROM es_streams WHERE stream_id = 'order-1'",
    )
    .unwrap();
    assert_eq!(
        state(&mut c, "SELECT es_state('order-1')"),
        Some(json!({"items": 15}))
    );
    assert_eq!(
        c.query_one("SELECT es_snapshot('order-1')", &[])
            .unwrap()
            .get::<_, Option<i64>>(0),
        Some(5)
    );
    assert!(c
        .query_one("SELECT es_drop_reducer('order', 'ItemAdded')", &[])
        .unwrap()
        .get::<_, bool>(0));
    assert_eq!(
        state(&mut c, "SELECT es_state('order-1')"),
        Some(json!({"sku": "s5", "qty": 5}))
    );
    assert_eq!(
        c.query_one("SELECT es_snapshot('order-none')", &[])
            .unwrap()
            .get::<_, Option<i64>>(0),
        None
    );
}

#[test]
fn custom_reducers_are_checked_and_run_with_the_callers_rights() {
    let db = TestDb::new("fold_custom");
    let mut c = db.connect();
    // Roles are cluster-wide: one per test process.
    let reader_role = format!("es_fold_reader_{}", std::process::id());
    c.batch_execute(&format!(
        "CREATE FUNCTION count_types(s jsonb, e event_store) RETURNS jsonb LANGUAGE sql STABLE AS
             $$ SELECT s || jsonb_build_object(e.event_type, coalesce((s ->> e.event_type)::int, 0) + 1) $$;
         CREATE FUNCTION wrong_shape(s jsonb, e jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT s';
         CREATE ROLE {reader_role} IN ROLE event_store_reader;
         REVOKE EXECUTE ON FUNCTION count_types(jsonb, event_store) FROM PUBLIC;"
    ))
    .unwrap();
    for t in ["A", "B", "A"] {
        append(&mut c, "thing-1", t, json!({}));
    }
    let at: String = c
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    append(&mut c, "thing-1", "C", json!({}));
    assert_eq!(
        state(
            &mut c,
            "SELECT es_state('thing-1', 'count_types(jsonb, event_store)')"
        ),
        Some(json!({"A": 2, "B": 1, "C": 1}))
    );
    assert_eq!(
        state(
            &mut c,
            &format!("SELECT es_state_at('thing-1', '{at}', 'count_types(jsonb, event_store)')")
        ),
        Some(json!({"A": 2, "B": 1}))
    );
    assert_eq!(
        state(
            &mut c,
            "SELECT es_state_at_version('thing-1', 1, 'count_types(jsonb, event_store)')"
        ),
        Some(json!({"A": 1}))
    );
    assert_eq!(
        state(&mut c, "SELECT es_fold(e, 'count_types(jsonb, event_store)' ORDER BY stream_version) FROM event_store e"),
        Some(json!({"A": 2, "B": 1, "C": 1}))
    );
    assert_eq!(
        state(
            &mut c,
            "SELECT es_state('thing-none', 'count_types(jsonb, event_store)')"
        ),
        None
    );
    assert_eq!(
        sqlstate(c.query_one(
            "SELECT es_state('thing-1', 'wrong_shape(jsonb, jsonb)')",
            &[]
        )),
        "42804"
    );
    assert_eq!(
        sqlstate(c.query_one("SELECT es_fold(e, NULL) FROM event_store e", &[])),
        "22004"
    );
    assert_eq!(state(&mut c, "SELECT es_state('thing-1', NULL)"), None);
    let mut reader = db.connect_as(&reader_role);
    assert_eq!(
        sqlstate(reader.query_one(
            "SELECT es_state('thing-1', 'count_types(jsonb, event_store)')",
            &[]
        )),
        "42501"
    );
    // Readers fold with the declarative reducers, snapshots included.
    c.query_one("SELECT es_snapshot('thing-1')", &[]).unwrap();
    assert_eq!(
        state(&mut reader, "SELECT es_state('thing-1')"),
        Some(json!({}))
    );
    assert_eq!(
        sqlstate(reader.execute(
            "SELECT es_define_reducer('thing', 'A', '{\"op\": \"ignore\"}')",
            &[]
        )),
        "42501"
    );
    drop(reader);
    c.batch_execute(&format!(
        "DROP OWNED BY {reader_role}; DROP ROLE {reader_role}"
    ))
    .unwrap();
}

#[test]
fn es_diff_names_each_change_and_the_event_that_made_it() {
    let db = TestDb::new("fold_diff");
    let mut c = db.connect();
    define(
        &mut c,
        "user",
        "UserEmailChanged",
        json!({"op": "set", "path": "/email", "from": "/newEmail"}),
    );
    append(
        &mut c,
        "user-7",
        "UserRegistered",
        json!({"email": "a@x", "role": "user"}),
    );
    let from: String = c
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    c.batch_execute("BEGIN; SET LOCAL event_store.correlation_id = 'req-42'")
        .unwrap();
    append(
        &mut c,
        "user-7",
        "UserEmailChanged",
        json!({"newEmail": "b@x"}),
    );
    append(
        &mut c,
        "user-7",
        "RoleRevoked",
        json!({"role": null, "flags": {"locked": true}}),
    );
    c.batch_execute("COMMIT").unwrap();
    let to: String = c
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    append(
        &mut c,
        "user-7",
        "UserEmailChanged",
        json!({"newEmail": "later@x"}),
    );
    let rows = c
        .query(
            &format!("SELECT stream_version, event_type, correlation_id, path, before, after, event_id = (SELECT event_id FROM event_store WHERE stream_id = 'user-7' AND stream_version = d.stream_version)
                        FROM es_diff('user-7', '{from}', '{to}') d"),
            &[],
        )
        .unwrap();
    type Change = (
        i64,
        String,
        Option<String>,
        String,
        Option<Value>,
        Option<Value>,
        bool,
    );
    let got: Vec<Change> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect();
    let req = Some("req-42".to_string());
    assert_eq!(
        got,
        vec![
            (
                2,
                "UserEmailChanged".into(),
                req.clone(),
                "/email".into(),
                Some(json!("a@x")),
                Some(json!("b@x")),
                true
            ),
            (
                3,
                "RoleRevoked".into(),
                req.clone(),
                "/role".into(),
                Some(json!("user")),
                None,
                true
            ),
            (
                3,
                "RoleRevoked".into(),
                req,
                "/flags".into(),
                None,
                Some(json!({"locked": true})),
                true
            ),
        ]
    );
    assert_eq!(
        sqlstate(c.query(
            &format!("SELECT * FROM es_diff('user-7', '{to}', '{from}')"),
            &[]
        )),
        "22023"
    );
    assert_eq!(
        common::count(
            &mut c,
            "SELECT count(*) FROM es_diff('user-7', NULL, now())"
        ),
        0
    );
}

/// Random rule sets over random streams: `es_state_at_version` and `es_state_at` with
/// snapshots taken every few events, the same after dropping every snapshot, and `es_fold`,
/// all equal the model fold of core/src/fold/rules.rs at every version.
#[test]
fn state_functions_see_only_what_the_caller_may_select() {
    let db = TestDb::new("fold_rights");
    let mut c = db.connect();
    let pid = std::process::id();
    let (tenant, columns, none) = (
        format!("es_fold_tenant_{pid}"),
        format!("es_fold_columns_{pid}"),
        format!("es_fold_none_{pid}"),
    );
    // Row level security hides one event from the tenant; another role may select only the
    // columns a fold reads; a third everything but event_store.
    c.batch_execute(&format!(
        "CREATE ROLE {tenant} IN ROLE event_store_reader;
         CREATE ROLE {columns};
         CREATE ROLE {none};
         GRANT USAGE ON SCHEMA public, _event_store TO {columns}, {none};
         GRANT SELECT ON _event_store.es_streams, _event_store.es_reducers, _event_store.es_snapshots,
                         _event_store.es_catalog_types, _event_store.es_catalog_modes, _event_store.es_upcasts,
                         _event_store.es_anchors TO {columns}, {none};
         GRANT EXECUTE ON FUNCTION es_state(text), _event_store._es_fold_events(text, integer, jsonb, jsonb, text),
                                   _event_store._es_fold_rows(text, bigint, bigint, timestamptz, timestamptz) TO {columns}, {none};
         GRANT SELECT (stream_id, stream_version, event_type, event_version, event_data, created_at)
            ON event_store TO {columns};
         CREATE POLICY not_secret ON event_store FOR SELECT TO {tenant}
            USING (event_type <> 'Secret');
         CREATE POLICY everything ON event_store FOR SELECT TO {columns}, {none} USING (true);
         ALTER TABLE event_store ENABLE ROW LEVEL SECURITY;"
    ))
    .unwrap();
    // A snapshot after every event: it holds what the tenant may not see.
    c.batch_execute("SET event_store.snapshot_every = 1")
        .unwrap();
    append(&mut c, "acct-1", "Opened", json!({"owner": "ann"}));
    append(&mut c, "acct-1", "Secret", json!({"pin": 1234}));
    append(&mut c, "acct-1", "Renamed", json!({"owner": "bob"}));
    let all = json!({"owner": "bob", "pin": 1234});
    assert_eq!(
        state(&mut c, "SELECT es_state('acct-1')"),
        Some(all.clone())
    );
    let mut t = db.connect_as(&tenant);
    assert_eq!(
        state(&mut t, "SELECT es_state('acct-1')"),
        Some(json!({"owner": "bob"}))
    );
    assert_eq!(
        state(&mut t, "SELECT es_state_at_version('acct-1', 2)"),
        Some(json!({"owner": "ann"}))
    );
    let mut cols = db.connect_as(&columns);
    assert_eq!(state(&mut cols, "SELECT es_state('acct-1')"), Some(all));
    let mut n = db.connect_as(&none);
    assert_eq!(
        sqlstate(n.query_one("SELECT es_state('acct-1')", &[])),
        "42501"
    );
}

#[test]
fn snapshots_and_es_fold_agree_with_the_model_fold_everywhere() {
    let db = TestDb::new("fold_property");
    let mut c = db.connect();
    let (seed, mut rng) = common::seeded_rng();
    if common::timescaledb() {
        // Each stream spread over many chunks, which the state functions read one by one.
        c.batch_execute("SELECT set_chunk_time_interval('event_store', interval '1 millisecond')")
            .unwrap();
    }
    let paths = ["/a", "/b", "/a/b", "/c/d", "/n"];
    let types = ["A", "B", "C", "D"];
    for round in 0..4 {
        let category = format!("p{round}");
        c.batch_execute(&format!(
            "SET event_store.snapshot_every = {}",
            rng.gen_range(1..6)
        ))
        .unwrap();
        let mut defs = Vec::new();
        for t in types.iter().take(3) {
            let kind = rng.gen_range(0..8);
            let root_or_a = ["", "/a"][rng.gen_range(0..2)];
            let mut pick = || paths[rng.gen_range(0..paths.len())];
            let op = match kind {
                0 => json!({"op": "merge", "path": pick(), "from": root_or_a}),
                1 => json!({"op": "set", "path": pick(), "from": pick()}),
                2 => json!({"op": "remove", "path": pick()}),
                3 => json!({"op": "increment", "path": "/n", "from": "/n"}),
                4 => json!({"op": "append", "path": "/l", "from": pick()}),
                5 => json!({"op": "remove_value", "path": "/l", "from": pick()}),
                6 => json!({"op": "replace", "from": pick()}),
                _ => json!([{"op": "set", "path": pick(), "value": kind}, {"op": "merge"}]),
            };
            define(&mut c, &category, t, op.clone());
            defs.push((category.clone(), t.to_string(), op));
        }
        let model = reducers::RuleSet::new(&category, defs).unwrap();
        for s in 0..3 {
            let stream = format!("{category}-{s}");
            let mut events = Vec::new();
            while events.len() < rng.gen_range(5..25) {
                let batch: Vec<Value> = (0..rng.gen_range(1..4))
                    .map(|_| {
                        let n = rng.gen_range(-50..50) as f64 / 4.0;
                        let data = json!({
                            (["a", "b", "x"][rng.gen_range(0..3)]): ([json!(null), json!(n), json!({"b": n, "c": "s"}), json!([1, "t"])][rng.gen_range(0..4)].clone()),
                            "n": n,
                        });
                        json!({"type": types[rng.gen_range(0..types.len())], "data": data})
                    })
                    .collect();
                c.execute(
                    "SELECT 1 FROM es_append_batch($1, $2)",
                    &[&stream, &Value::Array(batch.clone())],
                )
                .unwrap();
                events.extend(batch);
                if rng.gen_bool(0.3) {
                    // Rolled back: its row stays in the index, dead, and the next append
                    // reuses its version (on a hypertable its chunk may go with it).
                    let mut tx = c.transaction().unwrap();
                    tx.execute(
                        "SELECT 1 FROM es_append($1, 'A', '{\"a\": \"rolled back\"}')",
                        &[&stream],
                    )
                    .unwrap();
                    tx.rollback().unwrap();
                }
            }
            let mut expected = vec![];
            let mut model_state = rules::initial_state();
            for e in &events {
                model.apply(&mut model_state, e["type"].as_str().unwrap(), 1, &e["data"]);
                expected.push(Value::from(&model_state));
            }
            let answers = |c: &mut Client| -> Vec<(Value, Value, Value, String)> {
                c.query(
                    "SELECT es_state_at_version($1, v.stream_version), es_state_at($1, v.created_at),
                            (SELECT es_fold(e ORDER BY e.stream_version) FROM event_store e
                              WHERE e.stream_id = $1 AND e.stream_version <= v.stream_version),
                            v.created_at::text
                       FROM event_store v WHERE v.stream_id = $1 ORDER BY v.stream_version",
                    &[&stream],
                )
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect()
            };
            let with_snapshots = answers(&mut c);
            let taken = common::count(
                &mut c,
                &format!("SELECT count(*) FROM es_snapshots WHERE stream_id = '{stream}'"),
            );
            assert!(taken > 0, "seed {seed}: no snapshot was taken");
            c.query_one("SELECT es_drop_snapshots($1)", &[&stream])
                .unwrap();
            let without = answers(&mut c);
            for (v, want) in expected.iter().enumerate() {
                let (by_version, by_time, folded, at) = &with_snapshots[v];
                // Events appended together share their time: the state at that instant is
                // the state after the last of them.
                let last_at_that_time = with_snapshots.iter().rposition(|w| &w.3 == at).unwrap();
                let ctx = format!("seed {seed}, {stream} version {}: events {events:?}", v + 1);
                for (what, got, want) in [
                    ("es_state_at_version", by_version, want),
                    ("es_fold", folded, want),
                    ("es_state_at", by_time, &expected[last_at_that_time]),
                    ("es_state_at_version without snapshots", &without[v].0, want),
                    (
                        "es_state_at without snapshots",
                        &without[v].1,
                        &expected[last_at_that_time],
                    ),
                ] {
                    assert!(
                        event_store_core::json::state::same(
                            &got.clone().into(),
                            &want.clone().into()
                        ),
                        "{ctx}: {what} gave {got}, the model {want}"
                    );
                }
            }
        }
    }
    if common::timescaledb() {
        let chunks = common::count(
            &mut c,
            "SELECT max(n) FROM (SELECT count(DISTINCT tableoid) n FROM event_store GROUP BY stream_id) s",
        );
        assert!(chunks > 1, "no stream spans chunks");
    }
}

#[test]
fn the_sql_category_rule_is_the_cores() {
    let db = TestDb::new("category");
    let mut c = db.connect();
    for id in [
        "user-123",
        "user-1-2",
        "user",
        "-1",
        "a--b",
        "é-x",
        "order_line-7",
    ] {
        let sql: String = c
            .query_one("SELECT _event_store._es_category($1)", &[&id])
            .unwrap()
            .get(0);
        assert_eq!(sql, event_store_core::stream::category(id), "{id}");
    }
}
