//! The cluster-wide pool of projection workers, on clusters of the tests' own (the pool is the
//! whole server's): every database with work is served on a cluster with default settings, a
//! database that cannot get a worker is told so, and a slow handler delays only its own
//! projection.
use event_store_testing::{count, timescaledb, wait_for, Cluster};
use postgres::Client;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// One cluster at a time: these tests time how soon work is served, which six clusters
/// starting at once on a small machine would blur.
fn alone() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates database `name` with event_store (and TimescaleDB when `tsdb`), a projection owned
/// by `app_owner` that counts events, and returns a session in it.
fn app_database(cluster: &Cluster, name: &str, tsdb: bool) -> Client {
    cluster
        .connect()
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let mut c = cluster.connect_to(name);
    if tsdb {
        c.batch_execute("CREATE EXTENSION timescaledb").unwrap();
    }
    set_up(&mut c);
    c
}

fn set_up(c: &mut Client) {
    c.batch_execute(
        "CREATE EXTENSION event_store;
         DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_owner') THEN
                 CREATE ROLE app_owner IN ROLE event_store_writer;
             END IF;
         END $$;
         GRANT CREATE ON SCHEMA public TO app_owner;
         SET ROLE app_owner;
         CREATE TABLE IF NOT EXISTS counts (n integer NOT NULL);
         INSERT INTO counts VALUES (0);
         CREATE OR REPLACE FUNCTION count_event(e event_store) RETURNS void LANGUAGE sql
             AS $$ UPDATE counts SET n = n + 1 $$;
         SELECT es_create_projection('counts', 'count_event(event_store)');
         RESET ROLE;",
    )
    .unwrap();
}

/// Makes the counting handler sleep `seconds` per event first.
fn count_slowly(c: &mut Client, seconds: &str) {
    c.batch_execute(&format!(
        "SET ROLE app_owner;
         CREATE OR REPLACE FUNCTION count_event(e event_store) RETURNS void LANGUAGE sql
             AS $$ SELECT pg_sleep({seconds}); UPDATE counts SET n = n + 1 $$;
         RESET ROLE;"
    ))
    .unwrap();
}

fn append(c: &mut Client, stream: &str, n: usize) {
    for _ in 0..n {
        c.execute("SELECT es_append($1, 'Happened', '{}')", &[&stream])
            .unwrap();
    }
}

fn applied(c: &mut Client) -> i64 {
    count(c, "SELECT n::bigint FROM counts")
}

fn worker_state(c: &mut Client) -> (String, f64) {
    let row = c
        .query_one(
            "SELECT (SELECT worker FROM es_projections LIMIT 1),
                    (SELECT value FROM es_metrics WHERE name = 'event_store_worker_up')",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// Workers of the cluster inside a handler's pg_sleep.
fn workers_in_a_handler(c: &mut Client) -> i64 {
    count(
        c,
        "SELECT count(*) FROM pg_stat_activity
          WHERE backend_type = 'event_store projections' AND wait_event = 'PgSleep'",
    )
}

fn preload() -> &'static str {
    if timescaledb() {
        "shared_preload_libraries = 'timescaledb,event_store'"
    } else {
        "shared_preload_libraries = 'event_store'"
    }
}

#[test]
fn six_databases_on_a_default_cluster_are_all_served() {
    let _alone = alone();
    // Default max_worker_processes (8): TimescaleDB's launcher and one scheduler per database
    // with it, the logical replication launcher and event_store's launcher take five of them.
    let cluster = Cluster::start_with("sixdbs", preload());
    let mut dbs: Vec<Client> = (0..6)
        .map(|i| app_database(&cluster, &format!("app{i}"), timescaledb() && i < 3))
        .collect();
    for c in &mut dbs {
        append(c, "acct-1", 20);
    }
    for (i, c) in dbs.iter_mut().enumerate() {
        wait_for(
            Duration::from_secs(20),
            &format!("database app{i} applied its 20 events"),
            || applied(c) == 20,
        );
    }
    // Once the work is done, every database is served or idle: a worker that handed its slot
    // over right after a batch leaves its database's work asked for, and the worker that comes
    // to look finds none and leaves.
    for (i, c) in dbs.iter_mut().enumerate() {
        wait_for(
            Duration::from_secs(10),
            &format!("app{i} served or idle"),
            || {
                let (state, up) = worker_state(c);
                ["serving", "idle"].contains(&state.as_str()) && up == 1.0
            },
        );
    }
    // A database dropped and created again under its name, and an extension dropped and
    // created again, are served again.
    drop(dbs.pop());
    cluster
        .connect()
        .batch_execute("DROP DATABASE app5 WITH (FORCE)")
        .unwrap();
    let mut again = app_database(&cluster, "app5", false);
    append(&mut again, "acct-1", 3);
    wait_for(
        Duration::from_secs(20),
        "the re-created database applied its events",
        || applied(&mut again) == 3,
    );
    let c = &mut dbs[4];
    c.batch_execute("DROP EXTENSION event_store CASCADE; TRUNCATE counts")
        .unwrap();
    set_up(c);
    append(c, "acct-1", 2);
    wait_for(
        Duration::from_secs(20),
        "the re-created extension applied its events",
        || applied(c) == 2,
    );
}

#[test]
fn a_database_without_a_worker_slot_is_told_and_served_once_one_frees() {
    let _alone = alone();
    // One slot beyond the logical replication launcher's and event_store's launcher's, taken
    // by a worker whose handler never returns.
    let cluster = Cluster::start_with(
        "starved",
        "shared_preload_libraries = 'event_store'\nmax_worker_processes = 3\n\
         event_store.max_workers = 4\nevent_store.projection_timeout = 0",
    );
    let mut hog = app_database(&cluster, "hog", false);
    count_slowly(&mut hog, "3600");
    append(&mut hog, "acct-1", 1);
    wait_for(Duration::from_secs(20), "the hog's worker sleeps", || {
        workers_in_a_handler(&mut hog) == 1
    });
    let mut app = app_database(&cluster, "app", false);
    let mut listener = cluster.connect_to("app");
    listener.batch_execute("LISTEN event_store").unwrap();
    append(&mut app, "acct-1", 1);
    wait_for(Duration::from_secs(10), "the state says no slot", || {
        worker_state(&mut app) == ("no worker slot".into(), 0.0)
    });
    assert_eq!(applied(&mut app), 0);
    // The append did not notify at its own commit (which would take the notify-queue lock):
    // its announcement waits for a worker.
    assert_eq!(listener.notifications().len(), 0);
    let warnings = || {
        cluster
            .log()
            .matches("no background worker slot for database \"app\"")
            .count()
    };
    wait_for(Duration::from_secs(5), "a warning", || warnings() > 0);
    std::thread::sleep(Duration::from_millis(500)); // the launcher looks again every 100 ms
    let log = cluster.log();
    assert_eq!(warnings(), 1, "one warning: {log}");
    assert!(log.contains("Raise max_worker_processes"), "{log}");
    // The slot the hog's worker held goes to the waiting database.
    drop(hog);
    cluster
        .connect()
        .batch_execute("DROP DATABASE hog WITH (FORCE)")
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the waiting database applied its event",
        || applied(&mut app) == 1,
    );
    wait_for(Duration::from_secs(5), "the listener was woken", || {
        listener.batch_execute("SELECT 1").unwrap();
        !listener.notifications().is_empty()
    });
}

#[test]
fn a_slow_handler_delays_only_its_own_projection() {
    let _alone = alone();
    let cluster = Cluster::start_with("slowhandler", preload());
    let mut c = app_database(&cluster, "app", false);
    c.batch_execute(
        "CREATE ROLE slow_team IN ROLE event_store_writer;
         GRANT CREATE ON SCHEMA public TO slow_team;
         SET ROLE slow_team;
         CREATE TABLE slow_done (n integer);
         CREATE FUNCTION slow(e event_store) RETURNS void LANGUAGE sql
             AS $$ SELECT pg_sleep(5); INSERT INTO slow_done VALUES (1) $$;
         SELECT es_create_projection('slow', 'slow(event_store)', categories => '{slow}');
         RESET ROLE;",
    )
    .unwrap();
    append(&mut c, "slow-1", 3);
    wait_for(Duration::from_secs(10), "the slow handler runs", || {
        workers_in_a_handler(&mut c) == 1
    });
    wait_for(
        Duration::from_secs(5),
        "the counts of the slow events",
        || applied(&mut c) == 3,
    );
    for round in 1..=3 {
        let before = applied(&mut c);
        append(&mut c, "acct-1", 1);
        let took = wait_for(
            Duration::from_secs(4),
            "the other projection applied its event",
            || applied(&mut c) > before,
        );
        assert!(
            took < Duration::from_secs(1),
            "round {round}: the other projection waited {took:?} behind the slow handler"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The slow projection itself goes on, an event per batch (its time slice is shorter than
    // one handler call).
    assert!(count(&mut c, "SELECT count(*) FROM slow_done") <= 1);
}

#[test]
fn a_database_without_the_extension_is_looked_at_once() {
    let _alone = alone();
    // The postmaster logs every worker it starts at DEBUG1.
    let cluster = Cluster::start_with(
        "lookonce",
        &format!("{}\nlog_min_messages = debug1", preload()),
    );
    let mut app = app_database(&cluster, "app", false);
    append(&mut app, "acct-1", 1);
    wait_for(Duration::from_secs(10), "the projection applied", || {
        applied(&mut app) == 1
    });
    // Longer than the 10 s after which the launcher used to try every database again.
    std::thread::sleep(Duration::from_secs(12));
    let log = cluster.log();
    let started = |db: &str| {
        log.matches(&format!(
            "starting background worker process \"event_store projections {db}\""
        ))
        .count()
    };
    assert_eq!(started("postgres"), 1, "{log}");
    assert!(started("app") >= 1);
}

#[test]
fn databases_take_turns_when_the_pool_is_full() {
    let _alone = alone();
    // One slot: a database whose projection always has work (0.3 s per event) holds it, and
    // gives it back after a time slice to a database that waits, which gives it back in turn.
    let cluster = Cluster::start_with(
        "turns",
        &format!(
            "{}\nevent_store.max_workers = 1\nevent_store.projection_time_slice = 500",
            preload()
        ),
    );
    let mut busy = app_database(&cluster, "busy", false);
    count_slowly(&mut busy, "0.3");
    append(&mut busy, "acct-1", 200);
    wait_for(
        Duration::from_secs(10),
        "the busy database's worker runs",
        || applied(&mut busy) >= 2,
    );
    let mut other = app_database(&cluster, "other", false);
    append(&mut other, "acct-1", 1);
    wait_for(
        Duration::from_secs(5),
        "the waiting database got the slot",
        || applied(&mut other) == 1,
    );
    let before = applied(&mut busy);
    wait_for(
        Duration::from_secs(5),
        "the busy database got it back",
        || applied(&mut busy) > before + 2,
    );
}

#[test]
fn a_worker_stopped_inside_a_batch_is_replaced_without_a_new_commit() {
    let _alone = alone();
    let cluster = Cluster::start_with("stopped", preload());
    let mut c = app_database(&cluster, "app", false);
    count_slowly(&mut c, "0.1");
    append(&mut c, "acct-1", 30);
    wait_for(Duration::from_secs(10), "the worker runs", || {
        applied(&mut c) >= 3
    });
    // Every worker of the database stopped, none starting (the one a commit may have brought
    // in while the first was in a batch is connected by now).
    std::thread::sleep(Duration::from_millis(300));
    c.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE backend_type = 'event_store projections'",
    )
    .unwrap();
    wait_for(
        Duration::from_secs(20),
        "every event applied after the worker was stopped",
        || applied(&mut c) == 30,
    );
}
