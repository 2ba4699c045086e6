//! Snapshots and es_fold: never answered under old rules, never past what the caller may
//! select, and equal to an independent fold in plain Rust on random streams.
use super::*;

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
        let model = model::RuleSet::new(&category, defs).unwrap();
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
