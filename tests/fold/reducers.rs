//! Declarative and custom reducers: the handed design's stream, rules refused when defined, the
//! documented result for every shape of event, and the category rule SQL shares with the core.
use super::*;

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
