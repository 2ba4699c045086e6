//! Operating the store: TimescaleDB conversion, chunk exclusion, pg_dump round trips.
use event_store_testing::*;
use postgres::NoTls;
use std::process::Command;
use std::sync::{Arc, Mutex};

fn seed(c: &mut postgres::Client) {
    for s in ["user-1", "user-2"] {
        for i in 1..=3 {
            c.query(
                "SELECT * FROM es_append($1, 'Step', jsonb_build_object('i', $2::int))",
                &[&s, &i],
            )
            .unwrap();
        }
    }
}

fn is_hypertable(c: &mut postgres::Client) -> bool {
    count(c, "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") > 0
        && count(c, "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'event_store'") == 1
}

#[test]
fn event_store_is_a_hypertable_exactly_when_timescaledb_is_installed() {
    let db = TestDb::new("flavour");
    let mut c = db.connect();
    assert_eq!(is_hypertable(&mut c), timescaledb());
    if !timescaledb() {
        assert_eq!(
            sqlstate(c.query("SELECT es_enable_hypertable()", &[])),
            "55000"
        );
    }
}

#[test]
fn a_plain_store_with_events_converts_to_a_hypertable_later() {
    if !timescaledb() {
        return;
    }
    let db = TestDb::empty("convert");
    let mut c = db.connect();
    c.batch_execute("CREATE EXTENSION event_store").unwrap();
    seed(&mut c);
    assert!(!is_hypertable(&mut c));
    c.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb")
        .unwrap();
    assert!(c
        .query_one("SELECT es_enable_hypertable(interval '1 day')", &[])
        .unwrap()
        .get::<_, bool>(0));
    assert!(!c
        .query_one("SELECT es_enable_hypertable()", &[])
        .unwrap()
        .get::<_, bool>(0));
    assert!(is_hypertable(&mut c));
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 6);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM ONLY event_store"),
        0,
        "rows moved into chunks"
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
    assert_eq!(
        sqlstate(c.batch_execute("DELETE FROM event_store")),
        "ES003"
    );
    assert_eq!(sqlstate(c.batch_execute("TRUNCATE event_store")), "ES003");
    c.query(
        "SELECT * FROM es_append('user-1', 'Step', '{}', '{}', 3)",
        &[],
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_stream('user-1')"), 4);
}

#[test]
fn reads_by_stream_touch_only_the_streams_chunks() {
    if !timescaledb() {
        return;
    }
    let db = TestDb::new("chunkexcl");
    let mut c = db.connect();
    // Tiny chunks so that every append below lands in chunks of its own.
    c.batch_execute("SELECT set_chunk_time_interval('event_store', interval '20 milliseconds')")
        .unwrap();
    for i in 0..10 {
        c.query("SELECT * FROM es_append('busy-1', 'Step', '{}')", &[])
            .unwrap();
        if i == 5 {
            c.query("SELECT * FROM es_append('quiet-1', 'Once', '{}')", &[])
                .unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let chunks = count(
        &mut c,
        "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'event_store'",
    );
    assert!(chunks >= 8, "expected many chunks, got {chunks}");
    // auto_explain shows the plans of the statements inside es_stream and es_state.
    let plans = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = plans.clone();
    let mut cfg = db.config();
    cfg.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
    let mut e = cfg.connect(NoTls).unwrap();
    e.batch_execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_analyze = on;
         SET auto_explain.log_timing = off; SET auto_explain.log_nested_statements = on; SET client_min_messages = log",
    )
    .unwrap();
    {
        let sql = "SELECT count(*) FROM es_stream('quiet-1')";
        plans.lock().unwrap().clear();
        e.batch_execute(sql).unwrap();
        let log = plans.lock().unwrap().join("\n");
        let inner = log
            .split("Query Text:")
            .find(|p| p.contains("FROM _event_store.log l,"))
            .unwrap_or_else(|| panic!("no plan for {sql}:\n{log}"));
        let scanned: std::collections::BTreeSet<&str> = inner
            .lines()
            .filter(|l| !l.contains("never executed"))
            .filter_map(|l| l.split("Scan on ").nth(1))
            .filter_map(|rel| rel.find("_chunk").map(|end| &rel[..end]))
            .collect();
        let scanned = scanned.len();
        assert!(
            scanned <= 1,
            "{sql} scanned {scanned} of {chunks} chunks:\n{inner}"
        );
    }
    // The state functions read chunks without a query plan: the chunks they opened are
    // the ones this transaction holds locks on.
    let mut tx = c.transaction().unwrap();
    tx.query_one("SELECT es_state('quiet-1')", &[]).unwrap();
    let locked: i64 = tx
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_class r ON r.oid = l.relation
              WHERE l.pid = pg_backend_pid() AND r.relkind = 'r' AND r.relname LIKE '%\\_chunk'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(locked, 1, "es_state opened {locked} of {chunks} chunks");
    tx.commit().unwrap();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM es_stream('quiet-1')"),
        1
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM es_stream('busy-1')"),
        10
    );
}

#[test]
fn pg_dump_and_restore_keep_events_hashes_and_positions() {
    let src = TestDb::new("dumpsrc");
    let mut c = src.connect();
    c.batch_execute(
        "SELECT es_define_reducer('user', 'Step', '{\"op\": \"increment\", \"path\": \"/sum\", \"from\": \"/i\"}')",
    )
    .unwrap();
    seed(&mut c);
    c.batch_execute("SELECT es_snapshot('user-1')").unwrap();
    c.batch_execute(
        "SELECT es_define_event_type('Registered', '{\"required\": [\"email\"]}', 1, 'signed up', ARRAY['/email'], '/id');
         SELECT es_define_upcast('Registered', 1, '{\"op\": \"rename\", \"from\": \"/email\", \"path\": \"/mail\"}');
         SELECT es_set_catalog_mode('order', 'strict');",
    )
    .unwrap();
    let host = std::env::var("ES_TEST_HOST").unwrap();
    let port = std::env::var("ES_TEST_PORT").unwrap();
    let file = std::env::temp_dir().join(format!("{}.dump", src.name));
    let dump = Command::new(pg_bin("pg_dump"))
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "postgres",
            "-Fc",
            "-f",
            file.to_str().unwrap(),
            &src.name,
        ])
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dst = TestDb::empty("dumpdst");
    let mut d = dst.connect();
    if timescaledb() {
        // TimescaleDB's documented restore procedure.
        d.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb; SELECT timescaledb_pre_restore()").unwrap();
    }
    let out = Command::new(pg_bin("pg_restore"))
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            &dst.name,
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    if timescaledb() {
        d.batch_execute("SELECT timescaledb_post_restore()")
            .unwrap();
    }
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut d = dst.connect();
    assert_eq!(count(&mut d, "SELECT count(*) FROM event_store"), 6);
    assert_eq!(count(&mut d, "SELECT count(*) FROM es_streams"), 2);
    assert_eq!(count(&mut d, "SELECT count(*) FROM es_verify()"), 0);
    // Reducers and the catalog are definitions and come back; snapshots are derived data and
    // do not.
    assert_eq!(count(&mut d, "SELECT count(*) FROM es_reducers"), 1);
    assert_eq!(
        count(&mut d, "SELECT count(*) FROM es_event_types WHERE description = 'signed up' AND personal_data = '{/email}' AND upcast_to_next IS NOT NULL"),
        1
    );
    assert_eq!(count(&mut d, "SELECT count(*) FROM es_catalog_modes"), 1);
    assert_eq!(
        sqlstate(d.batch_execute("SELECT es_append('x-1', 'Registered', '{}')")),
        "ES004"
    );
    assert_eq!(
        sqlstate(d.batch_execute("SELECT es_append('order-1', 'Unknown', '{}')")),
        "ES005"
    );
    assert_eq!(count(&mut d, "SELECT count(*) FROM es_snapshots"), 0);
    assert_eq!(
        count(&mut d, "SELECT (es_state('user-1') ->> 'sum')::bigint"),
        6
    );
    // The restored store goes on: versions continue and positions do not repeat.
    let pos: i64 = d
        .query_one(
            "SELECT global_position FROM es_append('user-1', 'Step', '{}', '{}', 3)",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(pos > 6);
    assert_eq!(count(&mut d, "SELECT count(*) FROM es_verify()"), 0);
    assert_eq!(
        sqlstate(d.batch_execute("DELETE FROM event_store")),
        "ES003"
    );
    assert_eq!(is_hypertable(&mut d), timescaledb());
}
