//! Upcasts: random chains fold as the model does, with snapshots and without, and projections
//! and the feed see upcast events.
use super::*;

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
