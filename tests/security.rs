//! The threat model of docs/security.md, each case as real connections of the role named.
//! Cases that crashed the server before their fix run on a cluster of their own.
mod common;
use common::*;
use std::time::{Duration, Instant};

fn worker() -> bool {
    std::env::var("ES_TEST_WORKER").as_deref() == Ok("1")
}

/// Runs projection passes (on `pass`, else on `check`; the worker runs them where preloaded)
/// until `done` holds on `check`, failing with `what` after `secs` seconds.
fn until_projected(
    check: &mut postgres::Client,
    mut pass: Option<&mut postgres::Client>,
    secs: u64,
    what: &str,
    done: impl Fn(&mut postgres::Client) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if !worker() {
            let runner = match pass.as_deref_mut() {
                Some(p) => p,
                None => &mut *check,
            };
            runner.batch_execute("SELECT es_run_projections()").unwrap();
        }
        if done(check) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Roles named after the database (roles are cluster-wide), created with `grants`.
fn role(db: &TestDb, c: &mut postgres::Client, name: &str, grants: &str) -> String {
    let r = format!("{}_{name}", db.name);
    c.batch_execute(&format!("CREATE ROLE {r} {grants}"))
        .unwrap();
    r
}

#[test]
fn a_handler_that_changes_search_path_runs_nothing_as_the_owner() {
    let db = TestDb::new("sec_handler");
    let mut c = db.connect();
    let reader = role(&db, &mut c, "reader", "IN ROLE event_store_reader");
    let mut r = db.connect_as(&reader);
    // The attack of the issue: a temp table named like the projection state, with a trigger
    // that fails loudly if anything owner-run ever touches it.
    r.batch_execute(
        "CREATE TEMP TABLE es_projection_state(name text, status text, position bigint, attempts int,
             retry_at timestamptz, last_error text, last_error_position bigint, updated_at timestamptz);
         CREATE FUNCTION pg_temp.pwn() RETURNS trigger LANGUAGE plpgsql AS
             $$BEGIN RAISE EXCEPTION 'pwned as %', current_user; END$$;
         CREATE TRIGGER t BEFORE UPDATE ON pg_temp.es_projection_state
             FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.pwn();
         CREATE FUNCTION pg_temp.h(e public.event_store) RETURNS void LANGUAGE plpgsql AS
             $$BEGIN SET search_path = pg_temp, public, pg_catalog; END$$;
         CREATE FUNCTION pg_temp.r() RETURNS void LANGUAGE plpgsql AS
             $$BEGIN SET search_path = pg_temp, public, pg_catalog; END$$;
         SELECT es_create_projection('x', 'pg_temp.h(public.event_store)', NULL, NULL, 'pg_temp.r()');",
    )
    .unwrap();
    r.batch_execute("SELECT es_rebuild_projection('x')")
        .unwrap();
    assert_eq!(
        count(&mut r, "SELECT count(*) FROM public.es_projection_state WHERE name = 'x' AND status = 'rebuilding'"),
        1
    );
    // The handler's SET did not outlive it either.
    let path: String = r.query_one("SHOW search_path", &[]).unwrap().get(0);
    assert!(!path.starts_with("pg_temp"), "{path}");
    // Through es_run_projections: the handler runs per event, then the checkpoint is written.
    c.batch_execute("SELECT es_append('s-1', 'T', '{}')")
        .unwrap();
    if !worker() {
        // Only this session sees its temp functions: the pass runs here.
        r.batch_execute("SELECT es_run_projections()").unwrap();
        assert_eq!(
            count(
                &mut r,
                "SELECT position FROM public.es_projection_state WHERE name = 'x'"
            ),
            1
        );
        assert_eq!(
            count(&mut r, "SELECT count(*) FROM pg_temp.es_projection_state"),
            0
        );
        let path: String = r.query_one("SHOW search_path", &[]).unwrap().get(0);
        assert!(!path.starts_with("pg_temp"), "{path}");
    }
}

#[test]
fn objects_in_public_or_pg_temp_change_nothing_owner_run_code_does() {
    let db = TestDb::new("sec_public");
    let mut c = db.connect();
    let dbo = role(&db, &mut c, "dbo", "");
    let writer = role(&db, &mut c, "writer", "IN ROLE event_store_writer");
    // A database owner owns public (PostgreSQL 15), so may create anything in it.
    c.batch_execute(&format!("ALTER DATABASE {} OWNER TO {dbo}", db.name))
        .unwrap();
    let mut o = db.connect_as(&dbo);
    let trap = |name: &str, args: &str, ret: &str| {
        format!(
            "CREATE FUNCTION public.{name}({args}) RETURNS {ret} LANGUAGE plpgsql AS
                 $$BEGIN RAISE EXCEPTION 'pwned as %', current_user; END$$;"
        )
    };
    o.batch_execute(
        &[
            trap("clock_timestamp", "", "timestamptz"),
            trap("nextval", "text", "bigint"),
            trap("now", "", "timestamptz"),
            trap("jsonb_build_object", "text, text", "jsonb"),
            trap("split_part", "text, text, bigint", "text"),
            trap("coalesce_", "jsonb", "jsonb"),
        ]
        .concat(),
    )
    .unwrap();
    let mut w = db.connect_as(&writer);
    for _ in 0..2 {
        w.batch_execute("SET search_path = public, pg_catalog")
            .unwrap();
        w.query("SELECT * FROM es_append('user-1', 'T', '{\"a\": 1}')", &[])
            .unwrap();
        w.query("SELECT * FROM es_append_batch('user-1', '[{\"type\": \"T\", \"data\": {}, \"id\": \"7c2a1f7e-0000-4000-8000-000000000001\"}]')", &[]).unwrap();
        w.batch_execute("RESET search_path").unwrap();
    }
    // A reader's temp tables named like the extension's change no answer of es_verify,
    // es_stream or the state functions.
    let reader = role(&db, &mut c, "reader", "IN ROLE event_store_reader");
    let mut r = db.connect_as(&reader);
    r.batch_execute(
        "CREATE TEMP TABLE es_streams (LIKE public.es_streams);
         INSERT INTO es_streams (stream_id, version) VALUES ('ghost-1', 7);
         CREATE TEMP TABLE event_store (LIKE public.event_store);
         SET search_path = pg_temp, public, pg_catalog",
    )
    .unwrap();
    assert_eq!(count(&mut r, "SELECT count(*) FROM public.es_verify()"), 0);
    assert_eq!(
        count(&mut r, "SELECT count(*) FROM public.es_stream('user-1')"),
        3
    );
    let state: serde_json::Value = r
        .query_one("SELECT public.es_state('user-1')", &[])
        .unwrap()
        .get(0);
    assert_eq!(state, serde_json::json!({"a": 1}));
}

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

#[test]
fn a_shadowed_pg_proc_does_not_pass_a_reducer_check() {
    let cluster = Cluster::start("proc");
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE EXTENSION event_store; CREATE ROLE proc_reader IN ROLE event_store_reader;
         SELECT es_append('s-1', 'T', '{}')",
    )
    .unwrap();
    let mut r = cluster.connect();
    r.batch_execute(
        "SET ROLE proc_reader;
         CREATE TEMP VIEW pg_proc AS
             SELECT p.oid, 'f'::\"char\" AS prokind, false AS proretset, 2::int2 AS pronargs,
                    'jsonb'::regtype::oid AS prorettype,
                    (concat_ws(' ', 'jsonb'::regtype::oid, 'event_store'::regtype::oid))::oidvector AS proargtypes
               FROM pg_catalog.pg_proc p;
         SET search_path = pg_temp, public, pg_catalog",
    )
    .unwrap();
    let got = r.query("SELECT es_state('s-1', 'int8pl(bigint,bigint)')", &[]);
    assert_eq!(sqlstate(got), "42804");
    assert!(cluster.alive(&mut c));
}

#[test]
fn writers_cannot_lift_the_servers_limits() {
    let db = TestDb::new("sec_gucs");
    let mut c = db.connect();
    let writer = role(&db, &mut c, "writer", "IN ROLE event_store_writer");
    let mut w = db.connect_as(&writer);
    w.batch_execute("SELECT es_uuidv7()").unwrap(); // loads the library
    for setting in [
        "event_store.max_event_bytes = 2147483647",
        "event_store.max_event_depth = 1000",
        "event_store.projection_timeout = 0",
        "event_store.snapshot_every = 1",
        "event_store.projection_batch_size = 1000000",
    ] {
        assert_eq!(
            sqlstate(w.batch_execute(&format!("SET {setting}"))),
            "42501",
            "{setting}"
        );
    }
    // Set before the library is loaded (without preloading), the value is a placeholder that
    // PostgreSQL drops for a writer when the library defines the setting.
    let mut w = db.connect_as(&writer);
    w.batch_execute("SET event_store.max_event_bytes = 2147483647")
        .ok();
    let big = format!("{{\"a\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    assert_eq!(
        sqlstate(w.query(
            "SELECT * FROM es_append('big-1', 'T', $1::text::jsonb)",
            &[&big]
        )),
        "54000"
    );
}

#[test]
fn public_gets_nothing_of_the_extension() {
    let db = TestDb::new("sec_public_grants");
    let mut c = db.connect();
    let nobody = role(&db, &mut c, "nobody", "");
    // Every member of the extension, from pg_depend, so a new one cannot slip through.
    let leaks: Vec<String> = c
        .query(
            "SELECT d.objid::regprocedure::text FROM pg_depend d
              WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
                AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'event_store')
                AND d.classid = 'pg_proc'::regclass
                AND has_function_privilege($1, d.objid, 'EXECUTE')
             UNION ALL
             SELECT d.objid::regclass::text FROM pg_depend d JOIN pg_class k ON k.oid = d.objid
              WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
                AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'event_store')
                AND d.classid = 'pg_class'::regclass
                AND (CASE WHEN k.relkind = 'S' THEN has_sequence_privilege($1, d.objid, 'SELECT, USAGE, UPDATE')
                          ELSE has_table_privilege($1, d.objid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE') END)",
            &[&nobody],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(leaks, Vec::<String>::new());
    // Nor does a reader get the internals that run as the owner.
    let reader = role(&db, &mut c, "reader", "IN ROLE event_store_reader");
    let mut r = db.connect_as(&reader);
    for sql in [
        "SELECT * FROM _event_store.es_event_ids",
        "SELECT _event_store._es_projection_timer(true)",
        "SELECT _event_store._es_wake_projections(true)",
    ] {
        assert_eq!(sqlstate(r.batch_execute(sql)), "42501", "{sql}");
    }
}

#[test]
fn snapshots_of_streams_hidden_by_row_level_security_are_hidden_too() {
    let db = TestDb::new("sec_snapshots");
    let mut c = db.connect();
    let tenant = role(&db, &mut c, "tenant", "IN ROLE event_store_reader");
    // Row level security does not apply to a BYPASSRLS role: it may see every snapshot.
    let reader = role(
        &db,
        &mut c,
        "reader",
        "BYPASSRLS IN ROLE event_store_reader",
    );
    c.batch_execute(&format!(
        "SELECT es_append('a-1', 'T', '{{\"n\": 1}}'); SELECT es_append('b-1', 'T', '{{\"n\": 2}}');
         SELECT es_snapshot('a-1'); SELECT es_snapshot('b-1');
         ALTER TABLE event_store ENABLE ROW LEVEL SECURITY;
         CREATE POLICY tenant_a ON event_store FOR SELECT TO {tenant} USING (stream_id LIKE 'a-%');"
    ))
    .unwrap();
    let mut t = db.connect_as(&tenant);
    assert_eq!(count(&mut t, "SELECT count(*) FROM es_snapshots"), 0);
    assert_eq!(count(&mut t, "SELECT count(*) FROM event_store"), 1);
    let mut r = db.connect_as(&reader);
    assert_eq!(count(&mut r, "SELECT count(*) FROM es_snapshots"), 2);
}

#[test]
fn no_role_can_stall_the_feed_and_open_appends_are_visible() {
    let db = TestDb::new("sec_feed");
    let mut c = db.connect();
    let nobody = role(&db, &mut c, "nobody", "LOGIN");
    c.batch_execute(&format!(
        "GRANT CONNECT ON DATABASE {} TO {nobody}",
        db.name
    ))
    .unwrap();
    let mut attacker = db.connect_as(&nobody);
    // The lock key an append in flight at position 0 registered under before this fix.
    attacker
        .batch_execute("SELECT pg_advisory_lock_shared(1163085380, -2147483648)")
        .unwrap();
    let pid: i32 = attacker
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    c.batch_execute("SELECT es_append('s-1', 'T', '{}')")
        .unwrap();
    let seen = count(&mut c, "SELECT count(*) FROM es_read_all(0, 10)");
    let holders = count(
        &mut c,
        &format!("SELECT count(*) FROM es_feed_in_flight WHERE pid = {pid}"),
    );
    if worker() {
        // Preloaded: appends register in shared memory, which only es_append writes.
        assert_eq!((seen, holders), (1, 0));
    } else {
        // Without preloading the registration is an advisory lock: the documented limit.
        // The view names the holder, so an operator can end it.
        assert_eq!((seen, holders), (0, 1));
        c.batch_execute(&format!("SELECT pg_terminate_backend({pid})"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(count(&mut c, "SELECT count(*) FROM es_read_all(0, 10)"), 1);
    }
    // An append left open shows, with its lowest position, and holds the feed.
    let mut open = db.connect();
    open.batch_execute("BEGIN; SELECT es_append('s-2', 'T', '{}')")
        .unwrap();
    let open_pid: i32 = open
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let row = c
        .query_one("SELECT lowest_position, registered_at IS NOT NULL FROM es_feed_in_flight WHERE pid = $1", &[&open_pid])
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, bool>(1)), (1, true));
    c.batch_execute("SELECT es_append('s-3', 'T', '{}')")
        .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_read_all(0, 10)"), 1);
    open.batch_execute("COMMIT").unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_read_all(0, 10)"), 3);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_feed_in_flight"), 0);
}

#[test]
fn appends_take_no_lock_per_event_or_per_append() {
    let db = TestDb::new("sec_locks");
    let mut c = db.connect();
    c.batch_execute(
        "SELECT count(*) FROM es_append_batch('bulk-1',
            (SELECT jsonb_agg(jsonb_build_object('type', 'T', 'data', '{}'::jsonb, 'id', gen_random_uuid()))
               FROM generate_series(1, 40000)))",
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT es_stream_version('bulk-1')"), 40000);
    c.batch_execute("BEGIN").unwrap();
    for i in 0..2000 {
        c.query(
            "SELECT * FROM es_append($1, 'T', '{}', id => gen_random_uuid())",
            &[&format!("many-{}", i % 50)],
        )
        .unwrap();
    }
    let locks = count(
        &mut c,
        "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'",
    );
    assert!(locks <= 1, "{locks} advisory locks");
    c.batch_execute("COMMIT").unwrap();
    // Retries of ids are still stored once, and reuse elsewhere still refused.
    let id = "0191c3a0-0000-7000-8000-00000000abcd";
    for _ in 0..2 {
        c.query(
            "SELECT * FROM es_append('r-1', 'T', '{}', id => $1::text::uuid)",
            &[&id],
        )
        .unwrap();
    }
    assert_eq!(count(&mut c, "SELECT es_stream_version('r-1')"), 1);
    assert_eq!(
        sqlstate(c.query(
            "SELECT * FROM es_append('r-2', 'T', '{}', id => $1::text::uuid)",
            &[&id]
        )),
        "ES002"
    );
}

/// A handler acts for its projection's owner only: what it appends is recorded as the
/// owner's, it cannot manage other roles' projections, and it sees only what the owner may.
#[test]
fn handlers_act_only_for_their_owner() {
    let db = TestDb::new("sec_owner");
    let mut c = db.connect();
    let alice = role(&db, &mut c, "alice", "IN ROLE event_store_writer");
    let bob = role(&db, &mut c, "bob", "IN ROLE event_store_reader");
    let ops = role(&db, &mut c, "ops", "IN ROLE event_store_reader");
    c.batch_execute(&format!(
        "GRANT CREATE ON SCHEMA public TO {alice}, {bob};
         CREATE TABLE public.tries (what text);
         GRANT INSERT, SELECT ON public.tries TO {alice};
         ALTER TABLE event_store ENABLE ROW LEVEL SECURITY;
         CREATE POLICY alice_sees_a ON event_store FOR SELECT TO {alice} USING (stream_id LIKE 'a-%');
         CREATE POLICY others_see_all ON event_store FOR SELECT TO {bob}, {ops} USING (true);
         SET ROLE {bob};
         CREATE FUNCTION public.bob_h(e event_store) RETURNS void LANGUAGE sql AS $$ SELECT $$;
         SELECT es_create_projection('bobs', 'public.bob_h(event_store)', ARRAY['Nothing']);
         SET ROLE {alice};
         CREATE FUNCTION public.alice_h(e event_store) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.tries VALUES ('saw ' || e.stream_id);
             IF e.stream_id = 'a-1' THEN
                 PERFORM es_append('audit-1', 'Seen', '{{}}');
                 PERFORM es_create_projection('made_in_handler', 'public.alice_h(event_store)', ARRAY['Nothing']);
                 BEGIN
                     PERFORM es_pause_projection('bobs');
                     INSERT INTO public.tries VALUES ('paused bobs');
                 EXCEPTION WHEN insufficient_privilege THEN
                     INSERT INTO public.tries VALUES ('refused');
                 END;
             END IF;
         END $$;
         SELECT es_create_projection('alices', 'public.alice_h(event_store)', NULL, ARRAY['a', 'b']);
         RESET ROLE;
         SELECT es_append('a-1', 'T', '{{}}'); SELECT es_append('b-1', 'T', '{{}}');"
    ))
    .unwrap();
    // The pass runs as a superuser, not as the owner (a non-superuser's pass runs only its
    // own projections).
    until_projected(&mut c, None, 20, "projection did not catch up", |c| {
        count(
            c,
            "SELECT position FROM es_projection_state WHERE name = 'alices'",
        ) >= 2
    });
    let tries: Vec<String> = c
        .query("SELECT what FROM public.tries ORDER BY what", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tries, vec!["refused", "saw a-1"]);
    let by: String = c
        .query_one(
            "SELECT metadata ->> 'appendedBy' FROM event_store WHERE stream_id = 'audit-1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(by, alice);
    let owner: String = c
        .query_one(
            "SELECT owner::text FROM es_projection_state WHERE name = 'made_in_handler'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, alice);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_projection_state WHERE name = 'bobs' AND status = 'paused'"
        ),
        0
    );
}

#[test]
fn a_hanging_handler_delays_only_its_own_projection() {
    let db = TestDb::new("sec_timeout");
    let mut c = db.connect();
    let app = role(&db, &mut c, "app", "IN ROLE event_store_reader");
    // The worker reads the setting when it connects.
    set_for_passes(&db, &mut c, "event_store.projection_timeout = 300");
    c.batch_execute(&format!(
        "GRANT CREATE ON SCHEMA public TO {app};
         SET ROLE {app};
         CREATE TABLE public.fast_seen (n int);
         CREATE FUNCTION public.slow_h(e event_store) RETURNS void LANGUAGE sql AS $$ SELECT pg_sleep(30) $$;
         CREATE FUNCTION public.fast_h(e event_store) RETURNS void LANGUAGE sql AS $$ INSERT INTO public.fast_seen VALUES (1) $$;
         SELECT es_create_projection('a_slow', 'public.slow_h(event_store)');
         SELECT es_create_projection('b_fast', 'public.fast_h(event_store)');
         RESET ROLE;
         SELECT es_append('s-1', 'T', '{{}}');"
    ))
    .unwrap();
    let mut s = db.connect(); // a new session: it has the database's setting
    until_projected(
        &mut c,
        Some(&mut s),
        25,
        "the slow handler held up the pass",
        |c| {
            count(c, "SELECT count(*) FROM public.fast_seen") == 1
            && count(c, "SELECT count(*) FROM es_projection_state WHERE name = 'a_slow' AND last_error LIKE '%projection_timeout%'") == 1
        },
    );
}

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

#[test]
fn the_worker_of_a_dropped_database_does_not_come_back() {
    if !worker() {
        return; // no worker without preloading
    }
    // Databases dropped right after the extension and a projection woke the launcher: its
    // worker may be starting as the database goes. Such a worker fails to connect once and
    // is not restarted (it was, every 5 s, forever).
    for i in 0..8 {
        let db = TestDb::new(&format!("sec_drop{i}"));
        db.connect()
            .batch_execute(
                "CREATE FUNCTION h(e event_store) RETURNS void LANGUAGE sql AS $$ SELECT $$;
                 CREATE ROLE sec_drop_owner; GRANT event_store_reader TO sec_drop_owner;
                 SET ROLE sec_drop_owner; SELECT es_create_projection('p', 'h(event_store)'); RESET ROLE;
                 DROP FUNCTION h(event_store) CASCADE; DROP ROLE sec_drop_owner",
            )
            .ok();
    }
    let log = format!(
        "{}/server.log",
        std::env::var("ES_TEST_PGDATA").expect("ES_TEST_PGDATA")
    );
    let failures = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("FATAL") && l.contains("\"es_sec_drop"))
            .count()
    };
    std::thread::sleep(Duration::from_secs(6));
    let before = failures();
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(
        failures(),
        before,
        "a worker keeps restarting for a dropped database"
    );
}

/// A database owner's traps in public, laid before the extension is installed: neither the
/// installing superuser's script nor the (superuser) projection worker may call them.
#[test]
fn traps_laid_before_install_never_run_as_a_superuser() {
    let db = TestDb::empty("sec_traps");
    let mut c = db.connect();
    let dbo = role(&db, &mut c, "dbo", "");
    let app = role(&db, &mut c, "app", "IN ROLE event_store_writer");
    c.batch_execute(&format!("ALTER DATABASE {} OWNER TO {dbo}", db.name))
        .unwrap();
    let mut o = db.connect_as(&dbo);
    o.batch_execute(
        "CREATE TABLE public.fired (who text, what text);
         GRANT INSERT ON public.fired TO PUBLIC;
         CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE sql AS
             $$ INSERT INTO public.fired VALUES (current_user, 'format'); SELECT pg_catalog.format($1, $2) $$;
         CREATE FUNCTION public.format(text, regprocedure) RETURNS text LANGUAGE sql AS
             $$ INSERT INTO public.fired VALUES (current_user, 'format'); SELECT pg_catalog.format($1, $2) $$;
         CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE sql AS
             $$ INSERT INTO public.fired VALUES (current_user, 'quote_ident'); SELECT pg_catalog.quote_ident($1::text) $$;
         CREATE FUNCTION public.current_database() RETURNS name LANGUAGE sql AS
             $$ INSERT INTO public.fired VALUES (current_user, 'current_database'); SELECT pg_catalog.current_database() $$;",
    )
    .unwrap();
    if timescaledb() {
        c.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb")
            .unwrap();
    }
    c.batch_execute(&format!(
        "CREATE EXTENSION event_store;
         GRANT CREATE ON SCHEMA public TO {app};
         SET ROLE {app};
         CREATE TABLE public.seen (n int);
         CREATE FUNCTION public.h(e event_store) RETURNS void LANGUAGE sql AS $$ INSERT INTO public.seen VALUES (1) $$;
         SELECT es_create_projection('p', 'public.h(event_store)');
         RESET ROLE;
         SELECT es_append('s-1', 'T', '{{}}');"
    ))
    .unwrap();
    until_projected(&mut c, None, 30, "the projection never ran", |c| {
        count(c, "SELECT count(*) FROM public.seen") > 0
    });
    let fired: Vec<(String, String)> = c
        .query("SELECT who, what FROM public.fired", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(fired, vec![]);
}

// ---- Issue 22, item 5: the time limit holds, and a pass runs only the caller's projections.

/// Sets a database setting the projection passes read, and (where the worker runs them)
/// restarts the worker until one has connected since the setting was committed.
fn set_for_passes(db: &TestDb, c: &mut postgres::Client, setting: &str) {
    c.batch_execute(&format!("ALTER DATABASE {} SET {setting}", db.name))
        .unwrap();
    if !worker() {
        return;
    }
    let set: std::time::SystemTime = c.query_one("SELECT now()", &[]).unwrap().get(0);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let fresh: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                    AND backend_type = 'event_store projections' AND backend_start > $1",
                &[&set],
            )
            .unwrap()
            .get(0);
        if fresh > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no worker came back with the setting"
        );
        c.batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND backend_type = 'event_store projections';
             SELECT _event_store._es_wake_projections(true);",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_handler_that_traps_the_cancel_is_still_stopped() {
    let db = TestDb::new("sec_trap_cancel");
    let mut c = db.connect();
    let app = role(&db, &mut c, "app", "IN ROLE event_store_reader");
    let other = role(&db, &mut c, "other", "IN ROLE event_store_reader");
    set_for_passes(&db, &mut c, "event_store.projection_timeout = 500");
    // Traps every cancel, in a nested block too, for 6 s: long past the 0.5 s limit.
    c.batch_execute(&format!(
        "GRANT CREATE ON SCHEMA public TO {app}, {other};
         SET ROLE {app};
         CREATE TABLE public.trapped (n bigint);
         CREATE FUNCTION public.trap_h(e event_store) RETURNS void LANGUAGE plpgsql AS $$
         DECLARE t0 timestamptz := clock_timestamp();
         BEGIN
             WHILE clock_timestamp() < t0 + interval '6 seconds' LOOP
                 BEGIN
                     BEGIN
                         PERFORM pg_sleep(0.2);
                     EXCEPTION WHEN query_canceled THEN NULL;
                     END;
                 EXCEPTION WHEN query_canceled OR others THEN NULL;
                 END;
             END LOOP;
             INSERT INTO public.trapped VALUES (e.global_position);
         END $$;
         SELECT es_create_projection('a_trap', 'public.trap_h(event_store)');
         SET ROLE {other};
         CREATE TABLE public.fast_seen (n bigint);
         CREATE FUNCTION public.fast_h(e event_store) RETURNS void LANGUAGE sql AS
             $$ INSERT INTO public.fast_seen VALUES (e.global_position) $$;
         SELECT es_create_projection('b_fast', 'public.fast_h(event_store)');
         RESET ROLE;"
    ))
    .unwrap();
    let mut s = db.connect(); // a new session: it has the database's setting
    let started = Instant::now();
    c.batch_execute("SELECT es_append('s-1', 'T', '{}')")
        .unwrap();
    until_projected(
        &mut c,
        Some(&mut s),
        20,
        "the trapping handler was never stopped",
        |c| {
            count(c, "SELECT count(*) FROM public.fast_seen") == 1
                && count(c, "SELECT count(*) FROM es_projection_state WHERE name = 'a_trap' AND last_error LIKE '%projection_timeout%'") == 1
        },
    );
    // The other owner's event was not held up by the trap (6 s without the limit).
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "applied after {:?}",
        started.elapsed()
    );
    // The trapping handler's batch failed: nothing of it committed, the position stayed.
    assert_eq!(count(&mut c, "SELECT count(*) FROM public.trapped"), 0);
    assert_eq!(
        count(
            &mut c,
            "SELECT position FROM es_projection_state WHERE name = 'a_trap'"
        ),
        0
    );
}

#[test]
fn a_pass_by_a_non_superuser_runs_and_locks_only_its_own_projections() {
    let db = TestDb::new("sec_own_pass");
    let mut c = db.connect();
    let alice = role(&db, &mut c, "alice", "IN ROLE event_store_reader");
    let mallory = role(&db, &mut c, "mallory", "IN ROLE event_store_reader");
    c.batch_execute(&format!(
        "GRANT CREATE ON SCHEMA public TO {alice};
         SET ROLE {alice};
         CREATE TABLE public.alice_seen (n bigint);
         CREATE FUNCTION public.alice_h(e event_store) RETURNS void LANGUAGE sql AS
             $$ INSERT INTO public.alice_seen VALUES (e.global_position) $$;
         SELECT es_create_projection('alices', 'public.alice_h(event_store)');
         RESET ROLE;
         SELECT es_append('s-1', 'T', '{{}}');"
    ))
    .unwrap();
    // Mallory's pass applies nothing of alice's.
    let mut m = db.connect_as(&mallory);
    let applied: i32 = m
        .query_one("SELECT es_run_projections()", &[])
        .unwrap()
        .get(0);
    if !worker() {
        assert_eq!(applied, 0, "mallory's pass ran alice's projection");
        assert_eq!(count(&mut c, "SELECT count(*) FROM public.alice_seen"), 0);
    }
    until_projected(&mut c, None, 20, "alice's first event", |c| {
        count(c, "SELECT count(*) FROM public.alice_seen") == 1
    });
    // A pass left open in a transaction holds no row of alice's projection.
    m.batch_execute("BEGIN; SELECT es_run_projections();")
        .unwrap();
    c.batch_execute("SELECT es_append('s-1', 'T', '{}')")
        .unwrap();
    until_projected(
        &mut c,
        None,
        10,
        "mallory's open transaction held alice's projection",
        |c| count(c, "SELECT count(*) FROM public.alice_seen") == 2,
    );
    m.batch_execute("ROLLBACK").unwrap();
    // Alice runs her own.
    let mut a = db.connect_as(&alice);
    a.batch_execute("SELECT es_append('s-1', 'T', '{}')")
        .unwrap_err(); // a reader may not append
    c.batch_execute("SELECT es_append('s-1', 'T', '{}')")
        .unwrap();
    until_projected(&mut c, Some(&mut a), 10, "alice's own pass", |c| {
        count(c, "SELECT count(*) FROM public.alice_seen") == 3
    });
}

// ---- Issue 22, item 6: a role is identified by its oid, never by its name as text.

#[test]
fn roles_with_mixed_case_or_spaces_in_their_names_keep_their_identity() {
    let db = TestDb::new("sec_role_names");
    let mut c = db.connect();
    let lower = format!("{}_mixed", db.name);
    let mixed = format!("\"{}_Mixed\"", db.name);
    let spaced = format!("\"{} spaced\"", db.name);
    for r in [&lower, &mixed, &spaced] {
        c.batch_execute(&format!(
            "CREATE ROLE {r} IN ROLE event_store_reader; GRANT CREATE ON SCHEMA public TO {r}"
        ))
        .unwrap();
    }
    let mut m = db.connect_as(&mixed);
    m.batch_execute("SELECT es_save_checkpoint('c-mixed', 1)")
        .unwrap();
    let owner: bool = c
        .query_one(
            &format!(
                "SELECT owner = '{}'::regrole FROM es_checkpoints WHERE consumer = 'c-mixed'",
                mixed.replace('\'', "''")
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        owner,
        "the checkpoint belongs to another role than its saver"
    );
    // The lower-case namesake may not move it; its saver may.
    let mut l = db.connect_as(&lower);
    assert_eq!(
        sqlstate(l.batch_execute("SELECT es_save_checkpoint('c-mixed', 2)")),
        "42501"
    );
    m.batch_execute("SELECT es_save_checkpoint('c-mixed', 3)")
        .unwrap();
    // A name with a space works everywhere a role is recorded.
    let mut s = db.connect_as(&spaced);
    s.batch_execute(
        "SELECT es_save_checkpoint('c-spaced', 1);
         SELECT es_save_checkpoint('c-spaced', 2);
         CREATE FUNCTION public.sp_h(e event_store) RETURNS void LANGUAGE sql AS $$ SELECT $$;
         SELECT es_create_projection('spaced', 'public.sp_h(event_store)');
         SELECT es_pause_projection('spaced');",
    )
    .unwrap();
    m.batch_execute(
        "CREATE FUNCTION public.mx_h(e event_store) RETURNS void LANGUAGE sql AS $$ SELECT $$;
         SELECT es_create_projection('mixed', 'public.mx_h(event_store)');
         SELECT es_pause_projection('mixed');",
    )
    .unwrap();
    assert_eq!(
        sqlstate(l.batch_execute("SELECT es_pause_projection('mixed')")),
        "42501"
    );
    let owners: Vec<(String, bool)> = c
        .query(
            &format!(
                "SELECT name, owner = CASE name WHEN 'mixed' THEN '{}' ELSE '{}' END::regrole
                   FROM es_projection_state ORDER BY name",
                mixed, spaced
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        owners,
        vec![("mixed".into(), true), ("spaced".into(), true)]
    );
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

// ---- Issue 22, item 4: an append that waited for a catalog change is checked against it.

/// Runs `sql` as `role` on a thread; returns once the statement waits for a lock.
fn queued(
    db: &std::sync::Arc<TestDb>,
    role: &str,
    sql: &'static str,
) -> std::thread::JoinHandle<String> {
    let mut w = db.connect_as(role);
    let pid: i32 = w.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let h = std::thread::spawn(move || outcome(w.batch_execute(sql)));
    let mut c = db.connect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(
        &mut c,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event_type = 'Lock'"
        ),
    ) == 0
    {
        assert!(Instant::now() < deadline, "the append never waited");
        std::thread::sleep(Duration::from_millis(20));
    }
    h
}

#[test]
fn an_append_queued_behind_a_catalog_change_is_sealed_and_validated_by_it() {
    let db = std::sync::Arc::new(TestDb::new("sec_catalog_queue"));
    let mut c = db.connect();
    let writer = role(&db, &mut c, "writer", "IN ROLE event_store_writer");
    // The writer's backend has read the catalog before (and would keep it).
    let mut w = db.connect_as(&writer);
    w.batch_execute("SELECT es_append('warm-1', 'Warm', '{}')")
        .unwrap();
    drop(w);
    for isolation in ["READ COMMITTED", "REPEATABLE READ"] {
        let mut admin = db.connect();
        admin
            .batch_execute(&format!(
                "BEGIN; SELECT es_define_event_type('Signup{}', personal_data => '{{/email}}', subject => '/user')",
                isolation.len()
            ))
            .unwrap();
        let sql: &'static str = if isolation == "READ COMMITTED" {
            "SELECT es_append('signup-1', 'Signup14', '{\"user\": \"u1\", \"email\": \"u1@plain.example\"}')"
        } else {
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM event_store;
             SELECT es_append('signup-2', 'Signup15', '{\"user\": \"u2\", \"email\": \"u2@plain.example\"}');
             COMMIT;"
        };
        let h = queued(&db, &writer, sql);
        admin.batch_execute("COMMIT").unwrap();
        assert_eq!(h.join().unwrap(), "ok", "{isolation}");
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE event_data::text LIKE '%plain.example%'"
        ),
        0,
        "an event was stored with its personal data in the clear"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE stream_id LIKE 'signup-%'"
        ),
        2
    );
    // A new schema: the queued append is validated by it.
    let mut admin = db.connect();
    admin
        .batch_execute(
            "BEGIN; SELECT es_define_event_type('Order', '{\"type\": \"object\", \"required\": [\"total\"]}')",
        )
        .unwrap();
    let h = queued(&db, &writer, "SELECT es_append('order-1', 'Order', '{}')");
    admin.batch_execute("COMMIT").unwrap();
    assert_eq!(h.join().unwrap(), "ES004");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE stream_id = 'order-1'"
        ),
        0
    );
}

// ---- Issue 22, item 1: a database owner runs no code as the extension's owner.

/// A schema `traps` of the database owner's, where every trap records who ran it and what.
const TRAPS: &str = "
    CREATE SCHEMA traps;
    CREATE TABLE traps.fired (who name, what text);
    GRANT USAGE ON SCHEMA traps TO PUBLIC;
    GRANT INSERT ON traps.fired TO PUBLIC;
    CREATE FUNCTION traps.fire(what text) RETURNS boolean LANGUAGE sql AS
        $$ INSERT INTO traps.fired VALUES (current_user, what); SELECT true $$;
    -- Matches the grants' `refclassid = 'pg_extension'::regclass` better than pg_catalog's =.
    CREATE FUNCTION public.trap_eq(oid, regclass) RETURNS boolean LANGUAGE sql AS
        $$ SELECT traps.fire('=(oid, regclass)') AND $1 OPERATOR(pg_catalog.=) $2::oid $$;
    CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.trap_eq);
    CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE sql AS
        $$ SELECT traps.fire('format') :: text || pg_catalog.format($1, $2) $$;";

/// Overloads next to the functions owner-run code calls, better matches for what 0.2.0 passed.
const OVERLOADS: &str = "
    CREATE FUNCTION public._es_check_append(text, text, text, integer) RETURNS void LANGUAGE sql AS
        $$ SELECT traps.fire('_es_check_append') $$;
    CREATE FUNCTION public._es_run_as(regprocedure, regrole, event_store) RETURNS boolean LANGUAGE sql AS
        $$ SELECT traps.fire('_es_run_as') $$;
    CREATE FUNCTION public._es_state_with(text, text, bigint, regprocedure) RETURNS jsonb LANGUAGE sql AS
        $$ SELECT traps.fire('_es_state_with') :: text :: jsonb $$;";

fn fired(c: &mut postgres::Client) -> Vec<(String, String)> {
    c.query("SELECT who::text, what FROM traps.fired ORDER BY 1, 2", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A custom reducer (a superuser's, in public) for the state functions' SQL path.
const REDUCER: &str = "
    CREATE FUNCTION public.keep_last(s jsonb, e event_store) RETURNS jsonb LANGUAGE sql AS
        $$ SELECT e.event_data $$;
    GRANT EXECUTE ON FUNCTION public.keep_last(jsonb, event_store) TO PUBLIC;";

/// Everything each role does with the store, through the functions in `schema`; the reader
/// saves checkpoint `position`.
fn use_the_store(db: &TestDb, schema: &str, writer: &str, reader: &str, position: i64) {
    let mut w = db.connect_as(writer);
    w.batch_execute(&format!(
        "SET search_path = {schema};
         SELECT * FROM es_append('acct-1', 'Opened', '{{\"n\": 1}}');
         SELECT * FROM es_append_batch('acct-1', '[{{\"type\": \"Deposited\", \"data\": {{\"n\": 2}}}}]');
         SELECT * FROM es_append_multi('[{{\"stream_id\": \"acct-2\", \"events\": [{{\"type\": \"Opened\", \"data\": {{}}}}]}}]');"
    ))
    .unwrap();
    let mut r = db.connect_as(reader);
    r.batch_execute(&format!(
        "SET search_path = {schema};
         SELECT es_save_checkpoint('mailer', {position});
         SELECT count(*) FROM es_read_all(0);
         SELECT count(*) FROM es_read_category('acct', 0, 10, 0, 2);
         SELECT count(*) FROM es_stream('acct-1', upcast => true);
         SELECT es_state('acct-1'), es_state_at_version('acct-1', 1), es_stream_version('acct-1');
         SELECT es_state('acct-1', '{schema}.keep_last(jsonb, {schema}.event_store)'::regprocedure);
         SELECT count(*) FROM es_verify();
         SELECT es_digest();
         SELECT count(*) FROM es_catalog();
         SELECT es_metrics_prometheus();
         SELECT count(*) FROM es_projections;"
    ))
    .unwrap();
}

#[test]
fn a_database_owner_runs_nothing_as_the_extension_owner() {
    let db = TestDb::empty("sec_dbo");
    let mut c = db.connect();
    let dbo = role(&db, &mut c, "dbo", "");
    // On managed PostgreSQL the application's role owns its database, and so public.
    c.batch_execute(&format!("ALTER DATABASE {} OWNER TO {dbo}", db.name))
        .unwrap();
    if timescaledb() {
        c.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb")
            .unwrap();
    }
    let mut o = db.connect_as(&dbo);
    o.batch_execute(TRAPS).unwrap();
    if timescaledb() {
        // A better match than TimescaleDB's own for a call by name in its schema (public).
        o.batch_execute(
            "CREATE FUNCTION public.drop_chunks(relation regclass, older_than timestamptz) RETURNS SETOF text
                 LANGUAGE sql AS $$ SELECT traps.fire('drop_chunks') :: text $$;",
        )
        .unwrap();
    }
    c.batch_execute("CREATE EXTENSION event_store").unwrap();
    c.batch_execute(REDUCER).unwrap();
    let writer = role(&db, &mut c, "writer", "IN ROLE event_store_writer");
    let reader = role(&db, &mut c, "reader", "IN ROLE event_store_reader");
    if timescaledb() {
        // Old events in chunks of their own, for retention below.
        c.batch_execute("SELECT set_chunk_time_interval('event_store', interval '1 second')")
            .unwrap();
    }
    o.batch_execute(OVERLOADS).unwrap();
    // A projection of the writer's, run by the worker or by a superuser's pass.
    c.batch_execute(&format!(
        "GRANT CREATE ON SCHEMA public TO {writer};
         SET ROLE {writer};
         CREATE TABLE public.seen (n int);
         CREATE FUNCTION public.seen(e event_store) RETURNS void LANGUAGE sql
             BEGIN ATOMIC INSERT INTO public.seen VALUES (1); END;
         SELECT es_create_projection('seen', 'public.seen(event_store)');
         RESET ROLE;"
    ))
    .unwrap();
    use_the_store(&db, "public", &writer, &reader, 1);
    until_projected(&mut c, None, 30, "the projection never ran", |c| {
        count(c, "SELECT count(*) FROM public.seen") >= 3
    });
    assert_eq!(fired(&mut c), vec![], "traps in public");

    // The schema renamed under the store, with stubs under the old name.
    o.batch_execute(
        "ALTER SCHEMA public RENAME TO moved;
         CREATE SCHEMA public;
         CREATE TABLE public.es_checkpoints (consumer text, position bigint, owner regrole, saved_at timestamptz);
         CREATE TABLE public.es_streams (stream_id text, version bigint);
         CREATE FUNCTION public._es_calling_role() RETURNS name LANGUAGE sql AS
             $$ SELECT traps.fire('renamed: _es_calling_role') :: text :: name $$;
         CREATE FUNCTION public.es_upcast(e moved.event_store) RETURNS moved.event_store LANGUAGE sql AS
             $$ SELECT traps.fire('renamed: es_upcast'); SELECT e $$;
         CREATE FUNCTION public._es_feed_horizon() RETURNS bigint LANGUAGE sql AS
             $$ SELECT traps.fire('renamed: _es_feed_horizon') :: int :: bigint $$;
         GRANT USAGE, CREATE ON SCHEMA public TO PUBLIC;",
    )
    .unwrap();
    c.batch_execute("SET search_path = moved").unwrap();
    use_the_store(&db, "moved", &writer, &reader, 2);
    until_projected(
        &mut c,
        None,
        30,
        "the projection stopped after the rename",
        |c| count(c, "SELECT count(*) FROM moved.seen") >= 6,
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT max(position) FROM _event_store.es_checkpoints WHERE consumer = 'mailer'"
        ),
        2
    );
    // Retention over whole chunks on TimescaleDB (TimescaleDB is in moved now, with the
    // owner's drop_chunks beside its own), in batches otherwise: after the last event's
    // one-second chunk has ended a second ago.
    std::thread::sleep(Duration::from_millis(2200));
    let removed: serde_json::Value = c
        .query_one("SELECT es_apply_retention(interval '1 second')", &[])
        .unwrap()
        .get(0);
    assert!(
        removed["events_removed"].as_i64().unwrap() >= 6,
        "{removed}"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
    assert_eq!(fired(&mut c), vec![]);
}

/// The same traps laid before ALTER EXTENSION UPDATE, from 0.2.0 and from 0.1.0 (their SQL
/// built from the git history by scripts/old-version.sh, installed before the traps).
#[test]
fn traps_laid_before_an_update_never_run() {
    traps_before_update_from("0.2.0");
}

#[test]
fn traps_laid_before_an_update_from_0_1_0_never_run() {
    traps_before_update_from("0.1.0");
}

fn traps_before_update_from(old: &str) {
    let db = TestDb::empty(&format!("sec_dbo_update_{}", old.replace('.', "_")));
    let mut c = db.connect();
    let dbo = role(&db, &mut c, "dbo", "");
    c.batch_execute(&format!("ALTER DATABASE {} OWNER TO {dbo}", db.name))
        .unwrap();
    if timescaledb() {
        c.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb")
            .unwrap();
    }
    c.batch_execute(&format!(
        "CREATE EXTENSION event_store VERSION '{old}';
         SELECT es_append('acct-1', 'Opened', '{{}}');"
    ))
    .unwrap();
    c.batch_execute(REDUCER).unwrap();
    let writer = role(&db, &mut c, "writer", "IN ROLE event_store_writer");
    let reader = role(&db, &mut c, "reader", "IN ROLE event_store_reader");
    let mut o = db.connect_as(&dbo);
    o.batch_execute(TRAPS).unwrap();
    c.batch_execute("ALTER EXTENSION event_store UPDATE")
        .unwrap();
    o.batch_execute(OVERLOADS).unwrap();
    use_the_store(&db, "public", &writer, &reader, 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
    assert_eq!(fired(&mut c), vec![]);
}
/// A create_hypertable of the database owner's next to TimescaleDB's (both in public): the
/// install refuses to call either, rather than risk the wrong one.
#[test]
fn a_foreign_create_hypertable_stops_the_install() {
    if !timescaledb() {
        return;
    }
    let db = TestDb::empty("sec_dbo_tsdb");
    let mut c = db.connect();
    let dbo = role(&db, &mut c, "dbo", "");
    c.batch_execute(&format!(
        "ALTER DATABASE {} OWNER TO {dbo}; SET client_min_messages = warning; CREATE EXTENSION timescaledb",
        db.name
    ))
    .unwrap();
    let mut o = db.connect_as(&dbo);
    o.batch_execute(TRAPS).unwrap();
    o.batch_execute(
        "CREATE FUNCTION public.create_hypertable(regclass, name, chunk_time_interval interval,
                                                  create_default_indexes boolean, migrate_data boolean)
             RETURNS boolean LANGUAGE sql AS $$ SELECT traps.fire('create_hypertable') $$;",
    )
    .unwrap();
    assert_eq!(
        sqlstate(c.batch_execute("CREATE EXTENSION event_store")),
        "42723"
    );
    o.batch_execute(
        "DROP FUNCTION public.create_hypertable(regclass, name, interval, boolean, boolean)",
    )
    .unwrap();
    c.batch_execute("CREATE EXTENSION event_store").unwrap();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'event_store'"),
        1
    );
    assert_eq!(fired(&mut c), vec![]);
}

// ---- Issue 22, item 2: export and erasure hold against a writer.

/// The victim's and mallory's signups, their emails sealed; a writer without personal-data
/// rights; an officer who may export. Returns (writer, officer).
fn personal_store(db: &TestDb, c: &mut postgres::Client) -> (String, String) {
    let writer = role(db, c, "writer", "IN ROLE event_store_writer");
    let officer = role(
        db,
        c,
        "officer",
        "IN ROLE event_store_reader, event_store_personal_data",
    );
    c.batch_execute(&format!(
        "GRANT EXECUTE ON FUNCTION es_subject_export(text) TO {officer};
         SELECT es_define_event_type('UserRegistered', personal_data => '{{/email}}', subject => '/userId');
         SELECT es_define_event_type('Note', subject => '/about');
         SELECT es_append('signup-9', 'UserRegistered', '{{\"userId\": \"victim\", \"email\": \"victim@example.com\"}}');
         SELECT es_append('signup-7', 'UserRegistered', '{{\"userId\": \"mallory\", \"email\": \"mallory@example.com\"}}');"
    ))
    .unwrap();
    (writer, officer)
}

/// A stored value as the table holds it (sealed): any reader may select it.
fn stored_value(c: &mut postgres::Client, stream: &str, pointer: &str) -> serde_json::Value {
    c.query_one(
        "SELECT event_data #> $2::text::text[] FROM event_store WHERE stream_id = $1 AND stream_version = 1",
        &[&stream, &pointer],
    )
    .unwrap()
    .get(0)
}

#[test]
fn an_export_opens_only_what_is_sealed_under_the_subjects_own_keys() {
    let db = TestDb::new("sec_export_others");
    let mut c = db.connect();
    let (writer, officer) = personal_store(&db, &mut c);
    let mut w = db.connect_as(&writer);
    // Route 1: an event about mallory in the victim's stream puts that stream's state, which
    // holds the victim's email, into mallory's export.
    w.batch_execute("SELECT es_append('signup-9', 'Note', '{\"about\": \"mallory\"}')")
        .unwrap();
    // Route 2: the victim's sealed value, readable as ciphertext, copied into an event about
    // mallory.
    let seal = stored_value(&mut w, "signup-9", "{email}");
    assert!(seal.get("$es_sealed").is_some(), "{seal}");
    w.execute(
        "SELECT es_append('note-1', 'Note', jsonb_build_object('about', 'mallory', 'text', $1::jsonb))",
        &[&seal],
    )
    .unwrap();
    let mut o = db.connect_as(&officer);
    let doc: serde_json::Value = o
        .query_one("SELECT es_subject_export('mallory')", &[])
        .unwrap()
        .get(0);
    let text = doc.to_string();
    assert!(!text.contains("victim@example.com"), "{text}");
    // Mallory's own data is there, in the events and in the state of mallory's stream.
    assert_eq!(
        doc["streams"]["signup-7"]["state"]["email"],
        "mallory@example.com"
    );
    let events = doc["events"].as_array().unwrap();
    assert_eq!(events[0]["data"]["email"], "mallory@example.com");
    // Everything else personal shows withheld.
    assert_eq!(
        doc["streams"]["signup-9"]["state"]["email"],
        "[personal data]"
    );
    let note = events.iter().find(|e| e["stream_id"] == "note-1").unwrap();
    assert_eq!(note["data"]["text"], "[personal data]");
    assert_eq!(doc["streams"]["note-1"]["state"]["text"], "[personal data]");
    // The victim's own export still opens it.
    let doc: serde_json::Value = o
        .query_one("SELECT es_subject_export('victim')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        doc["streams"]["signup-9"]["state"]["email"],
        "victim@example.com"
    );
}

#[test]
fn a_value_at_a_personal_data_path_is_always_sealed_by_the_store() {
    let db = TestDb::new("sec_prewrapped");
    let mut c = db.connect();
    let (writer, officer) = personal_store(&db, &mut c);
    let mut w = db.connect_as(&writer);
    // Plaintext dressed up as a seal: it would stay in the table after erasure.
    let r = w.batch_execute(
        "SELECT es_append('signup-3', 'UserRegistered', '{\"userId\": \"u3\", \"email\": {\"$es_sealed\": \"u3@plain.example\"}}')",
    );
    assert_eq!(sqlstate(r), "ES004");
    // The victim's real seal, copied into an event about mallory.
    let victims = stored_value(&mut w, "signup-9", "{email}");
    let append = "SELECT es_append($1, 'UserRegistered', jsonb_build_object('userId', $2::text, 'email', $3::jsonb))";
    assert_eq!(
        sqlstate(w.execute(append, &[&"signup-4", &"mallory", &victims])),
        "ES004"
    );
    // In a batch too: nothing of it is written.
    let r = w.execute(
        "SELECT es_append_batch('signup-4', jsonb_build_array(
             jsonb_build_object('type', 'UserRegistered', 'data', '{\"userId\": \"mallory\", \"email\": \"m@x.example\"}'::jsonb),
             jsonb_build_object('type', 'UserRegistered', 'data', jsonb_build_object('userId', 'mallory', 'email', $1::jsonb))))",
        &[&victims],
    );
    assert_eq!(sqlstate(r), "ES004");
    // A seal under the event's own subject's live key is the store's own: it is kept.
    let mallorys = stored_value(&mut w, "signup-7", "{email}");
    w.execute(append, &[&"signup-5", &"mallory", &mallorys])
        .unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE event_data::text LIKE '%plain.example%' OR stream_id IN ('signup-3', 'signup-4')"
        ),
        0
    );
    let mut o = db.connect_as(&officer);
    let email: String = o
        .query_one("SELECT es_state('signup-5') ->> 'email'", &[])
        .unwrap()
        .get(0);
    assert_eq!(email, "mallory@example.com");
}

#[test]
fn a_retry_tells_a_writer_nothing_about_a_sealed_value() {
    let db = TestDb::new("sec_retry_guess");
    let mut c = db.connect();
    let (writer, _) = personal_store(&db, &mut c);
    let insider = role(
        &db,
        &mut c,
        "insider",
        "IN ROLE event_store_writer, event_store_personal_data",
    );
    let id: uuid::Uuid = c
        .query_one(
            "SELECT event_id FROM es_append('signup-5', 'UserRegistered', '{\"userId\": \"v5\", \"email\": \"v5@example.com\"}', id => 'a0f8e6a4-5b8e-4c1e-9d3a-000000000005')",
            &[],
        )
        .unwrap()
        .get(0);
    let guess = |c: &mut postgres::Client, email: &str| {
        outcome(c.execute(
            "SELECT es_append('signup-5', 'UserRegistered', jsonb_build_object('userId', 'v5', 'email', $2::text), id => $1)",
            &[&id, &email],
        ))
    };
    // Without the right to read personal data, a right and a wrong guess answer alike.
    let mut w = db.connect_as(&writer);
    let right = guess(&mut w, "v5@example.com");
    let wrong = guess(&mut w, "someone@else.example");
    assert_eq!(right, wrong);
    assert_eq!(right, "ok");
    // What is not personal data is still compared.
    let r = w.execute(
        "SELECT es_append('signup-5', 'UserRegistered', '{\"userId\": \"v6\", \"email\": \"v5@example.com\"}', id => $1)",
        &[&id],
    );
    assert_eq!(sqlstate(r), "ES002");
    // A member of event_store_personal_data, who reads the value anyway, gets the full check.
    let mut i = db.connect_as(&insider);
    assert_eq!(guess(&mut i, "v5@example.com"), "ok");
    assert_eq!(guess(&mut i, "someone@else.example"), "ES002");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE stream_id = 'signup-5'"
        ),
        1
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
