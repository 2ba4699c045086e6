//! Handlers run as their projection's owner, in a sandbox, within their time limit; a pass by a
//! non-superuser runs only its own roles' projections; a worker does not outlive its database.
use super::*;

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
