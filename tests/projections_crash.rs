//! Kill the server (immediate shutdown, no checkpoint) while projections run under load:
//! after restart the projection must equal a from-scratch count of the store.
//! Alone in its own test binary, since it stops the shared test cluster.
use event_store_testing::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

fn pg_ctl(args: &[&str]) {
    let data = std::env::var("ES_TEST_PGDATA").expect("ES_TEST_PGDATA");
    let pg_ctl = pg_bin("pg_ctl");
    let log = format!("{data}/server.log");
    let mut full = vec![pg_ctl.as_str(), "-D", &data, "-l", &log, "-w"];
    full.extend_from_slice(args);
    let status = if unsafe { libc::geteuid() } == 0 {
        Command::new("sudo")
            .args(["-u", "postgres", "--"])
            .args(&full)
            .status()
    } else {
        Command::new(full[0]).args(&full[1..]).status()
    }
    .unwrap();
    assert!(status.success(), "pg_ctl {args:?}");
}

#[test]
fn immediate_shutdown_under_load_loses_and_doubles_nothing() {
    let db = Arc::new(TestDb::new("crash"));
    let role = format!("{}_app", db.name);
    let mut c = db.connect();
    c.batch_execute(&format!(
        "CREATE ROLE {role}; GRANT event_store_writer TO {role}; GRANT CREATE ON SCHEMA public TO {role};
         SET ROLE {role};
         CREATE TABLE counts (event_type text PRIMARY KEY, n integer NOT NULL);
         CREATE TABLE seen (position bigint PRIMARY KEY);
         CREATE FUNCTION count_event(e event_store) RETURNS void LANGUAGE sql AS $$
             INSERT INTO seen VALUES (e.global_position);
             INSERT INTO counts VALUES (e.event_type, 1) ON CONFLICT (event_type) DO UPDATE SET n = counts.n + 1;
         $$;
         SELECT es_create_projection('counts', 'count_event(event_store)');
         RESET ROLE;"
    ))
    .unwrap();
    drop(c);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = vec![];
    for w in 0..4 {
        let (db, stop) = (db.clone(), stop.clone());
        threads.push(thread::spawn(move || {
            let Ok(mut c) = db.config().connect(postgres::NoTls) else {
                return;
            };
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let batch = format!(
                    "[{{\"type\": \"T{}\", \"data\": {{}}}}, {{\"type\": \"U\", \"data\": {{}}}}]",
                    i % 3
                );
                if c.query(
                    "SELECT * FROM es_append_batch($1, $2::text::jsonb)",
                    &[&format!("w-{w}"), &batch],
                )
                .is_err()
                {
                    return; // the server went away
                }
            }
        }));
    }
    if std::env::var("ES_TEST_WORKER").as_deref() != Ok("1") {
        let (db, stop) = (db.clone(), stop.clone());
        threads.push(thread::spawn(move || {
            let Ok(mut c) = db.config().connect(postgres::NoTls) else {
                return;
            };
            while !stop.load(Ordering::SeqCst) {
                if c.query_one("SELECT es_run_projections(50)", &[]).is_err() {
                    return;
                }
            }
        }));
    }
    thread::sleep(Duration::from_millis(1500));
    pg_ctl(&["-m", "immediate", "stop"]);
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    pg_ctl(&["start"]);

    let mut c = db.connect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        c.query_one("SELECT es_run_projections()", &[]).unwrap();
        let st: String = c
            .query_one(
                "SELECT status FROM es_projections WHERE name = 'counts'",
                &[],
            )
            .unwrap()
            .get(0);
        if st == "caught up" || Instant::now() > deadline {
            assert_eq!(st, "caught up");
            break;
        }
    }
    let events = count(&mut c, "SELECT count(*) FROM event_store");
    assert!(
        events > 20,
        "too little load before the crash: {events} events"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM seen"), events);
    let mismatched = count(
        &mut c,
        "SELECT count(*) FROM (SELECT event_type, count(*)::int AS n FROM event_store GROUP BY 1) truth
           FULL JOIN counts USING (event_type) WHERE truth.n IS DISTINCT FROM counts.n",
    );
    assert_eq!(mismatched, 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
    c.batch_execute(&format!("SET ROLE {role}; SELECT es_drop_projection('counts'); RESET ROLE; DROP OWNED BY {role}; DROP ROLE {role}")).unwrap();
}
