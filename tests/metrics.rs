//! Metrics: es_metrics and its Prometheus text, and the queries file of contrib/ read by the
//! real prometheus-postgres-exporter over HTTP.
use event_store_testing::*;
use std::io::{Read, Write};

/// The value of the sample `line` (metric name with its labels) in Prometheus text.
fn sample(text: &str, line: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Four events in three streams, and a paused projection (owned by a role of its own:
/// handlers never run as a superuser).
fn seed(db: &TestDb, c: &mut postgres::Client) {
    let owner = format!("{}_owner", db.name);
    c.batch_execute(&format!(
        "SELECT es_append('user-1', 'A', '{{}}'); SELECT es_append('user-1', 'B', '{{}}');
         SELECT es_append('user-2', 'A', '{{}}'); SELECT es_append('order-1', 'A', '{{}}');
         CREATE ROLE {owner} IN ROLE event_store_reader; GRANT CREATE ON SCHEMA public TO {owner};
         SET ROLE {owner};
         CREATE TABLE seen (p bigint);
         CREATE FUNCTION keep(e event_store) RETURNS void LANGUAGE sql AS $$ INSERT INTO seen VALUES (e.global_position) $$;
         SELECT es_create_projection('keeper', 'keep(event_store)');
         SELECT es_pause_projection('keeper');
         RESET ROLE;"
    ))
    .unwrap();
}

#[test]
fn es_metrics_in_the_prometheus_text_format() {
    let db = TestDb::new("metrics_text");
    let mut c = db.connect();
    seed(&db, &mut c);
    let text: String = c
        .query_one("SELECT es_metrics_prometheus()", &[])
        .unwrap()
        .get(0);
    assert!(
        text.contains("# TYPE event_store_writes_total counter\n"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "event_store_writes_total{category=\"user\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "event_store_writes_total{category=\"order\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "event_store_events"), Some(4.0));
    assert_eq!(sample(&text, "event_store_streams"), Some(3.0));
    // The paused projection has read nothing: 4 positions and the first event's age behind.
    assert_eq!(
        sample(&text, "projection_lag_events{projection=\"keeper\"}"),
        Some(4.0)
    );
    assert!(sample(&text, "projection_lag_seconds{projection=\"keeper\"}").unwrap() > 0.0);
    assert_eq!(
        sample(
            &text,
            "event_store_projection_status{projection=\"keeper\",status=\"paused\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "event_store_projection_status{projection=\"keeper\",status=\"running\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "event_store_feed_in_flight_positions"),
        Some(0.0)
    );
    // No clean verification yet; then one, logged as evidence.
    assert!(!text.contains("event_store_last_clean_verify_timestamp_seconds"));
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
    let text: String = c
        .query_one("SELECT es_metrics_prometheus()", &[])
        .unwrap()
        .get(0);
    let at = sample(&text, "event_store_last_clean_verify_timestamp_seconds").unwrap();
    let now: f64 = c
        .query_one("SELECT extract(epoch FROM now())::float8", &[])
        .unwrap()
        .get(0);
    assert!((now - at).abs() < 60.0, "{at} vs {now}");
    // Every line is a comment or `name{labels} value`.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = l.rsplit_once(' ').unwrap();
        v.parse::<f64>().unwrap_or_else(|_| panic!("{l}"));
    }
    // An append in flight holds the feed back, and shows.
    let mut other = db.connect();
    let mut tx = other.transaction().unwrap();
    tx.batch_execute("SELECT es_append('user-3', 'A', '{}')")
        .unwrap();
    let text: String = c
        .query_one("SELECT es_metrics_prometheus()", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        sample(&text, "event_store_feed_in_flight_positions"),
        Some(1.0),
        "{text}"
    );
    tx.rollback().unwrap();
}

#[test]
fn only_roles_that_see_every_event_log_a_verification_and_nobody_forges_one() {
    let db = TestDb::new("metrics_verify_log");
    let mut c = db.connect();
    seed(&db, &mut c);
    let (reader, tenant) = (format!("{}_reader", db.name), format!("{}_tenant", db.name));
    c.batch_execute(&format!(
        "CREATE ROLE {reader} IN ROLE event_store_reader; CREATE ROLE {tenant} IN ROLE event_store_reader;
         ALTER TABLE event_store ENABLE ROW LEVEL SECURITY;
         CREATE POLICY everything ON event_store FOR SELECT TO {reader} USING (true);
         CREATE POLICY own ON event_store FOR SELECT TO {tenant} USING (stream_id = 'user-1');"
    ))
    .unwrap();
    let mut r = db.connect_as(&reader);
    assert_eq!(count(&mut r, "SELECT count(*) FROM es_verify()"), 0);
    // Row level security filters even the reader's (permissive) view: not logged.
    // The tenant sees one stream: es_verify reports the others' events as missing, and
    // that answer is not evidence about the store either.
    let mut t = db.connect_as(&tenant);
    assert!(count(&mut t, "SELECT count(*) FROM es_verify()") > 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verifications"), 0);
    c.batch_execute("ALTER TABLE event_store DISABLE ROW LEVEL SECURITY")
        .unwrap();
    assert_eq!(count(&mut r, "SELECT count(*) FROM es_verify()"), 0);
    assert_eq!(
        count(&mut c, &format!("SELECT count(*) FROM es_verifications WHERE verified_by = '{reader}' AND problems = 0 AND stream_id IS NULL")),
        1
    );
    assert_eq!(
        outcome(r.batch_execute("INSERT INTO es_verifications (snapshots, problems, verified_by) VALUES (false, 0, 'x')")),
        "42501"
    );
    // Read-only transactions verify without logging.
    r.batch_execute("BEGIN READ ONLY; SELECT * FROM es_verify(); COMMIT")
        .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verifications"), 1);
}

/// GET `path` from 127.0.0.1:`port`, the body.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

#[test]
fn the_exporter_serves_the_metrics_of_the_contrib_queries_file() {
    let db = TestDb::new("metrics_exporter");
    let mut c = db.connect();
    seed(&db, &mut c);
    let role = format!("{}_monitor", db.name);
    c.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN IN ROLE event_store_reader"
    ))
    .unwrap();
    let host = std::env::var("ES_TEST_HOST").unwrap();
    let port = std::env::var("ES_TEST_PORT").unwrap();
    let listen: u16 = 19000 + (port.parse::<u16>().unwrap() % 1000);
    let queries = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/prometheus-postgres-exporter.yml"
    );
    let mut exporter = std::process::Command::new("prometheus-postgres-exporter")
        .args([
            "--disable-default-metrics",
            "--disable-settings-metrics",
            &format!("--extend.query-path={queries}"),
            &format!("--web.listen-address=127.0.0.1:{listen}"),
        ])
        .env(
            "DATA_SOURCE_NAME",
            format!(
                "host={host} port={port} user={role} dbname={} sslmode=disable",
                db.name
            ),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("prometheus-postgres-exporter (scripts/setup.sh installs it)");
    let mut body = None;
    for _ in 0..100 {
        body = http_get(listen, "/metrics").filter(|b| b.contains("event_store_events"));
        if body.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = exporter.kill();
    let output = exporter.wait_with_output().unwrap();
    let body = body.unwrap_or_else(|| {
        panic!(
            "no event_store metrics from the exporter: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let find = |name: &str, labels: &[&str]| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .find(|l| labels.iter().all(|want| l.contains(want)))
            .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
            .unwrap_or_else(|| panic!("{name} {labels:?} not in:\n{body}"))
    };
    assert_eq!(find("event_store_events", &[]), 4.0);
    assert_eq!(find("event_store_streams", &[]), 3.0);
    assert_eq!(
        find("event_store_writes_total", &["category=\"user\""]),
        3.0
    );
    assert_eq!(
        find("event_store_writes_total", &["category=\"order\""]),
        1.0
    );
    assert_eq!(
        find("projection_lag_events", &["projection=\"keeper\""]),
        4.0
    );
    assert!(find("projection_lag_seconds", &["projection=\"keeper\""]) > 0.0);
    assert_eq!(
        find(
            "event_store_projection_info",
            &["projection=\"keeper\"", "status=\"paused\""]
        ),
        1.0
    );
    // Served by a worker where the library is preloaded; otherwise it says so with a 0.
    let state = if worker() {
        ""
    } else {
        "state=\"not preloaded\""
    };
    let up = find(
        "event_store_worker_up",
        &[&format!("database=\"{}\"", db.name), state],
    );
    assert_eq!(up, if worker() { 1.0 } else { 0.0 });
}
