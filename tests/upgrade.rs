//! ALTER EXTENSION event_store UPDATE from 0.1.0, 0.2.0, 0.3.0, 0.4.0, 0.5.0 and 0.6.0 (their SQL built from the git
//! history by scripts/old-version.sh): this library serves the old SQL until the update, the
//! update keeps every event, hash, reducer, catalog entry, key, checkpoint, digest and
//! projection position, and leaves the same objects, privileges and configuration as a fresh
//! install of this version.
use event_store_testing::*;
use postgres::Client;
use std::time::{Duration, Instant};

/// Waits until the projection has applied everything (the worker, or a pass by hand).
fn caught_up(c: &mut Client) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if !worker() {
            c.query_one("SELECT es_run_projections()", &[]).unwrap();
        }
        let (status, position): (String, i64) = {
            let r = c
                .query_one(
                    "SELECT status, position FROM es_projections WHERE name = 'counts'",
                    &[],
                )
                .unwrap();
            (r.get(0), r.get(1))
        };
        let last = count(c, "SELECT max(global_position) FROM event_store");
        if (status == "caught up" && position == last) || Instant::now() > deadline {
            assert_eq!((status.as_str(), position), ("caught up", last));
            return position;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What must survive: every event with its hash, the registry, reducers, projection state, and
/// from 0.2.0 on the catalog, checkpoints, digests and the personal data its keys reveal.
fn contents(c: &mut Client, old: &str) -> Vec<String> {
    let mut out = vec![];
    let since_0_2_0 = [
        "SELECT format('%s %s %s %s', event_type, version, personal_data, subject) FROM es_catalog_types ORDER BY 1",
        "SELECT format('%s %s', consumer, position) FROM es_checkpoints ORDER BY 1",
        "SELECT format('%s %s %s %s', position, events, streams, encode(root, 'hex')) FROM es_digests ORDER BY 1",
        "SELECT format('%s %s', stream_version, event_data) FROM es_stream('member-1') ORDER BY 1",
    ];
    let later = if old == "0.1.0" {
        &[][..]
    } else {
        &since_0_2_0[..]
    };
    for sql in [
        "SELECT format('%s %s %s %s %s %s %s', global_position, event_id, stream_id, stream_version, event_type, event_data, encode(hash, 'hex')) FROM event_store ORDER BY 1",
        "SELECT format('%s %s %s %s', stream_id, version, last_position, encode(head_hash, 'hex')) FROM es_streams ORDER BY 1",
        "SELECT format('%s %s %s', category, event_type, rule) FROM es_reducers ORDER BY 1",
        "SELECT format('%s %s %s', name, status, position) FROM es_projection_state ORDER BY 1",
        "SELECT format('%s %s', event_type, n) FROM counts ORDER BY 1",
    ]
    .iter()
    .chain(later)
    {
        for r in c.query(*sql, &[]).unwrap() {
            out.push(r.get(0));
        }
    }
    out
}

/// The extension's objects as the catalogs describe them, by name: functions with their
/// whole definition, privileges and settings; tables with columns, defaults, constraints,
/// indexes, triggers, policies and privileges; views; which tables pg_dump keeps.
const SCHEMA_SQL: &str = "
WITH ext AS (SELECT oid, extconfig FROM pg_extension WHERE extname = 'event_store'),
members AS (
    SELECT d.classid, d.objid FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e')
SELECT format('function %s -> %s kind=%s volatile=%s definer=%s strict=%s config=%s acl=%s def=%s',
              p.oid::regprocedure, pg_get_function_result(p.oid), p.prokind, p.provolatile,
              p.prosecdef, p.proisstrict, p.proconfig, p.proacl,
              CASE WHEN p.prokind = 'a' THEN (SELECT format('%s/%s/%s', aggtransfn, aggfinalfn, aggtranstype::regtype)
                                                FROM pg_aggregate WHERE aggfnoid = p.oid)
                   ELSE md5(pg_get_functiondef(p.oid)) END)
  FROM members m JOIN pg_proc p ON p.oid = m.objid WHERE m.classid = 'pg_proc'::regclass
UNION ALL
SELECT format('relation %s kind=%s acl=%s', c.oid::regclass, c.relkind, c.relacl)
  FROM members m JOIN pg_class c ON c.oid = m.objid WHERE m.classid = 'pg_class'::regclass
UNION ALL
SELECT format('column %s.%s %s notnull=%s default=%s generated=%s', c.oid::regclass, a.attname,
              format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid), a.attgenerated)
  FROM members m JOIN pg_class c ON c.oid = m.objid AND m.classid = 'pg_class'::regclass
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
UNION ALL
SELECT format('constraint %s %s', con.conrelid::regclass, pg_get_constraintdef(con.oid))
  FROM members m JOIN pg_constraint con ON con.conrelid = m.objid AND m.classid = 'pg_class'::regclass
UNION ALL
SELECT format('index %s', pg_get_indexdef(i.indexrelid))
  FROM members m JOIN pg_index i ON i.indrelid = m.objid AND m.classid = 'pg_class'::regclass
UNION ALL
SELECT format('trigger %s', pg_get_triggerdef(t.oid))
  FROM members m JOIN pg_trigger t ON t.tgrelid = m.objid AND m.classid = 'pg_class'::regclass
 WHERE NOT t.tgisinternal
UNION ALL
SELECT format('policy %s on %s: %s', pol.polname, pol.polrelid::regclass, pg_get_expr(pol.polqual, pol.polrelid))
  FROM members m JOIN pg_policy pol ON pol.polrelid = m.objid AND m.classid = 'pg_class'::regclass
UNION ALL
SELECT format('view %s: %s', c.oid::regclass, md5(pg_get_viewdef(c.oid)))
  FROM members m JOIN pg_class c ON c.oid = m.objid AND m.classid = 'pg_class'::regclass WHERE c.relkind = 'v'
UNION ALL
SELECT format('dumped %s', cfg::regclass) FROM ext, unnest(ext.extconfig) cfg
UNION ALL
SELECT format('comment %s: %s', pg_describe_object(d.classoid, d.objoid, d.objsubid), md5(d.description))
  FROM members m JOIN pg_description d ON d.classoid = m.classid AND d.objoid = m.objid
ORDER BY 1";

fn schema(c: &mut Client) -> Vec<String> {
    c.query(SCHEMA_SQL, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn a_store_made_by_0_1_0_keeps_working_then_updates_in_place() {
    updates_in_place("0.1.0");
}

#[test]
fn a_store_made_by_0_2_0_keeps_working_then_updates_in_place() {
    updates_in_place("0.2.0");
}

#[test]
fn a_store_made_by_0_3_0_keeps_working_then_updates_in_place() {
    updates_in_place("0.3.0");
}

#[test]
fn a_store_made_by_0_4_0_keeps_working_then_updates_in_place() {
    updates_in_place("0.4.0");
}

#[test]
fn a_store_made_by_0_5_0_keeps_working_then_updates_in_place() {
    updates_in_place("0.5.0");
}

#[test]
fn a_store_made_by_0_6_0_keeps_working_then_updates_in_place() {
    updates_in_place("0.6.0");
}

/// A store made by `old`, filled through its SQL, updated straight to this version
/// (sql/event_store--OLD--CURRENT.sql), compared with a fresh install object by object.
fn updates_in_place(old: &str) {
    let db = TestDb::empty(&format!("upgrade_{}", old.replace('.', "_")));
    let mut c = db.connect();
    if timescaledb() {
        c.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb")
            .unwrap();
    }
    let created = c.batch_execute(&format!("CREATE EXTENSION event_store VERSION '{old}'"));
    assert!(
        created.is_ok(),
        "event_store {old}'s SQL is not installed (scripts/old-version.sh, run by scripts/test.sh): {created:?}"
    );
    let role = format!("{}_app", db.name);
    // Filled through the old SQL, served by this library: reducers, single, batch and
    // multi-stream appends, a snapshot, a projection run by its owner's handler.
    c.batch_execute(&format!(
        "SELECT es_define_reducer('acct', 'Deposited', '{{\"op\": \"increment\", \"path\": \"/balance\", \"from\": \"/amount\"}}');
         SELECT es_append('acct-1', 'Opened', '{{\"owner\": \"ann\"}}', expected_version => 0);
         SELECT es_append_batch('acct-1', '[{{\"type\": \"Deposited\", \"data\": {{\"amount\": 10}}}},
                                             {{\"type\": \"Deposited\", \"data\": {{\"amount\": 5}}}}]', 1);
         SELECT es_append_multi('[{{\"stream_id\": \"acct-2\", \"events\": [{{\"type\": \"Opened\", \"data\": {{}}}}]}},
                                  {{\"stream_id\": \"order-1\", \"events\": [{{\"type\": \"Placed\", \"data\": {{\"total\": 3}}}}]}}]');
         SELECT es_snapshot('acct-1');
         CREATE ROLE {role}; GRANT event_store_writer TO {role}; GRANT CREATE ON SCHEMA public TO {role};
         SET ROLE {role};
         CREATE TABLE counts (event_type text PRIMARY KEY, n integer NOT NULL);
         CREATE FUNCTION count_event(e event_store) RETURNS void LANGUAGE sql AS
             $$ INSERT INTO counts VALUES (e.event_type, 1) ON CONFLICT (event_type) DO UPDATE SET n = counts.n + 1 $$;
         SELECT es_create_projection('counts', 'count_event(event_store)');
         RESET ROLE;"
    ))
    .unwrap();
    if timescaledb() {
        assert!(count(&mut c, "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'event_store'") >= 1);
    }
    caught_up(&mut c);
    // The reads, the fold, the feed and es_verify work on the old SQL.
    let balance = "SELECT (es_state('acct-1') ->> 'balance')::bigint";
    assert_eq!(count(&mut c, balance), 15);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_stream('acct-1')"), 3);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_read_all(0, 100)"), 5);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM es_verify(snapshots => true)"),
        0
    );
    c.batch_execute(
        "SELECT es_append('acct-1', 'Deposited', '{\"amount\": 1}', expected_version => 3)",
    )
    .unwrap();
    assert_eq!(count(&mut c, balance), 16);
    // From 0.2.0 on: a member's name is personal data, sealed under its subject's key.
    if old != "0.1.0" {
        c.batch_execute(
            "SELECT es_define_event_type('Registered', personal_data => '{/name}', subject => '/memberId');
             SELECT es_append('member-1', 'Registered', '{\"memberId\": \"m1\", \"name\": \"ann\"}');",
        )
        .unwrap();
    }
    // From 0.5.0 on: a conditional append, read back by tag through the old es_dcb_read.
    let dcb_read = "SELECT count(*) FROM es_dcb_read('{\"items\": [{\"tags\": [\"course:1\"]}]}')";
    let tagged = old.as_bytes() >= b"0.5.0".as_slice();
    if tagged {
        c.batch_execute(
            "SELECT es_dcb_append('[{\"type\": \"CourseDefined\", \"data\": {}, \"tags\": [\"course:1\"]}]',
                                  '{\"fail_if_events_match\": {\"items\": [{\"tags\": [\"course:1\"]}]}, \"after\": null}')",
        )
        .unwrap();
        assert_eq!(count(&mut c, dcb_read), 1);
    }
    let position = caught_up(&mut c);
    // From 0.2.0 on: a checkpoint, and a digest an auditor keeps, taken before the update.
    let old_digest: Option<serde_json::Value> = (old != "0.1.0").then(|| {
        let sealed = count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE stream_id = 'member-1' AND event_data ->> 'name' = 'ann'",
        );
        assert_eq!(sealed, 0, "the name is stored sealed");
        c.batch_execute("SELECT es_save_checkpoint('auditor', 3)")
            .unwrap();
        c.query_one("SELECT es_digest()", &[]).unwrap().get(0)
    });
    let before = contents(&mut c, old);
    if old != "0.1.0" {
        assert!(
            before.iter().any(|r| r.contains("\"name\": \"ann\"")),
            "the name revealed by its key: {before:?}"
        );
    }

    c.batch_execute("ALTER EXTENSION event_store UPDATE")
        .unwrap();
    let version: String = c
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'event_store'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_ne!(version, old);
    assert_eq!(
        contents(&mut c, old),
        before,
        "events, hashes, registry, reducers, projections"
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM es_verify(snapshots => true)"),
        0
    );
    assert_eq!(count(&mut c, balance), 16);
    // The projection goes on from where it was.
    c.batch_execute("SELECT es_append('order-1', 'Paid', '{}')")
        .unwrap();
    assert_eq!(caught_up(&mut c), position + 1);
    // This version's functions work on the updated store.
    c.batch_execute(
        "SELECT es_define_event_type('Placed', '{\"type\": \"object\", \"required\": [\"total\"]}', subject => 'stream');
         SELECT es_save_checkpoint('mailer', 2);",
    )
    .unwrap();
    assert_eq!(
        outcome(c.batch_execute("SELECT es_append('order-2', 'Placed', '{}')")),
        "ES004"
    );
    if tagged {
        assert_eq!(count(&mut c, dcb_read), 1);
    }
    // The digest taken before the update verifies after it.
    if let Some(d) = old_digest {
        assert_eq!(
            count(
                &mut c,
                &format!("SELECT count(*) FROM es_verify_digest('{d}')")
            ),
            0
        );
    }
    let d: serde_json::Value = c.query_one("SELECT es_digest()", &[]).unwrap().get(0);
    assert_eq!(
        count(
            &mut c,
            &format!("SELECT count(*) FROM es_verify_digest('{d}')")
        ),
        0
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_stream('acct-1', upcast => true)"
        ),
        4
    );
    let metrics: String = c
        .query_one("SELECT es_metrics_prometheus()", &[])
        .unwrap()
        .get(0);
    assert!(
        metrics.contains("event_store_writes_total{category=\"acct\"} 5"),
        "{metrics}"
    );
    // And the result is what a fresh install of this version makes.
    let fresh = TestDb::new("upgrade_fresh");
    let (updated, made) = (schema(&mut c), schema(&mut fresh.connect()));
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|x| !b.contains(x)).cloned().collect()
    };
    assert_eq!(
        (only(&updated, &made), only(&made, &updated)),
        (vec![], vec![]),
        "(only after the update, only in a fresh install)"
    );
    c.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .unwrap();
}

/// ALTER EXTENSION UPDATE while the projection worker is inside a batch whose handler appends:
/// the update waits for the batch, the worker's next transactions wait for the update, and the
/// deadlock detector picks neither. (0.2.0's update took the position sequence, then waited for
/// the projection table the worker held, while the handler waited for the sequence.)
#[test]
fn an_update_waits_for_the_workers_batch_and_neither_deadlocks() {
    if !worker() {
        return; // without the worker, batches run in the caller's own sessions
    }
    let db = TestDb::empty("upgrade_mid_batch");
    let mut c = db.connect();
    if timescaledb() {
        c.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb")
            .unwrap();
    }
    let role = format!("{}_app", db.name);
    c.batch_execute(&format!(
        "CREATE EXTENSION event_store VERSION '0.2.0';
         CREATE ROLE {role}; GRANT event_store_writer TO {role}; GRANT CREATE ON SCHEMA public TO {role};
         SET ROLE {role};
         CREATE FUNCTION react(e event_store) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             IF e.event_type = 'Opened' THEN
                 PERFORM pg_sleep(1);
                 PERFORM es_append('seen-' || e.stream_id, 'Seen', '{{}}');
             END IF;
         END $$;
         SELECT es_create_projection('react', 'react(event_store)');
         RESET ROLE;
         SELECT es_append('acct-1', 'Opened', '{{}}');"
    ))
    .unwrap();
    wait_for(Duration::from_secs(20), "the handler sleeping", || {
        count(
            &mut c,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'",
        ) == 1
    });
    c.batch_execute("ALTER EXTENSION event_store UPDATE")
        .unwrap();
    wait_for(Duration::from_secs(20), "the projection caught up", || {
        count(
            &mut c,
            "SELECT count(*) FROM es_projections WHERE name = 'react' AND status = 'caught up'",
        ) == 1
    });
    let (attempts, error): (i32, Option<String>) = {
        let r = c
            .query_one(
                "SELECT attempts, last_error FROM es_projections WHERE name = 'react'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((attempts, error), (0, None), "the worker's batch failed");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM es_stream('seen-acct-1')"),
        1
    );
    c.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .unwrap();
}
