//! Integration tests run against a real PostgreSQL started by scripts/test.sh, which passes
//! ES_TEST_HOST / ES_TEST_PORT and ES_TEST_TIMESCALEDB=1 for the cluster with TimescaleDB.
//! Every test gets a fresh database with the extension installed.
#![allow(dead_code)]

use postgres::{Client, Config, NoTls};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct TestDb {
    pub name: String,
    admin: Config,
}

pub fn timescaledb() -> bool {
    std::env::var("ES_TEST_TIMESCALEDB").as_deref() == Ok("1")
}

fn base_config() -> Config {
    let host = std::env::var("ES_TEST_HOST")
        .expect("run the integration tests through scripts/test.sh (ES_TEST_HOST is not set)");
    let port: u16 = std::env::var("ES_TEST_PORT")
        .expect("ES_TEST_PORT")
        .parse()
        .unwrap();
    let mut c = Config::new();
    c.host_path(host)
        .port(port)
        .user("postgres")
        .dbname("postgres");
    c
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    /// A new database named after the test, with timescaledb (when the cluster has it) and
    /// event_store installed.
    pub fn new(test: &str) -> TestDb {
        let db = TestDb::empty(test);
        let mut c = db.connect();
        if timescaledb() {
            c.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb")
                .unwrap();
        }
        c.batch_execute("CREATE EXTENSION event_store").unwrap();
        db
    }

    /// A new database without any extension.
    pub fn empty(test: &str) -> TestDb {
        let name = format!(
            "es_{}_{}_{}",
            test,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let admin = base_config();
        let mut c = admin.connect(NoTls).unwrap();
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        TestDb { name, admin }
    }

    pub fn config(&self) -> Config {
        let mut c = self.admin.clone();
        c.dbname(&self.name);
        c
    }

    /// A superuser connection.
    pub fn connect(&self) -> Client {
        self.config().connect(NoTls).unwrap()
    }

    /// A connection that has done SET ROLE to `role`.
    pub fn connect_as(&self, role: &str) -> Client {
        let mut c = self.connect();
        c.batch_execute(&format!("SET ROLE {role}")).unwrap();
        c
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping database {} for inspection", self.name);
            return;
        }
        if let Ok(mut c) = self.admin.connect(NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// The SQLSTATE of a failed statement, or a panic when it did not fail.
pub fn sqlstate<T: std::fmt::Debug>(r: Result<T, postgres::Error>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| panic!("no SQLSTATE: {e}")),
    }
}

/// Error message of a failed statement.
pub fn message<T: std::fmt::Debug>(r: Result<T, postgres::Error>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}

/// Runs `f` on `n` connections released at once; returns what each returned, in order.
pub fn race<T: Send + 'static>(
    db: &std::sync::Arc<TestDb>,
    n: usize,
    f: impl Fn(usize, &mut Client) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let f = std::sync::Arc::new(f);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (db, barrier, f) = (db.clone(), barrier.clone(), f.clone());
            std::thread::spawn(move || {
                let mut c = db.connect();
                barrier.wait();
                f(i, &mut c)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// "ok", or the SQLSTATE the statement failed with.
pub fn outcome<T>(r: Result<T, postgres::Error>) -> String {
    r.map(|_| "ok".to_string()).unwrap_or_else(|e| {
        e.code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| e.to_string())
    })
}

/// Waits up to `limit` for `done`, failing with `what`; returns how long it took.
pub fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

pub fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// Runs a PostgreSQL program as the cluster's OS user (`postgres` when the tests run as root).
pub fn as_postgres(program: &str, args: &[&str]) -> std::process::ExitStatus {
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("sudo");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        std::process::Command::new(program)
    };
    cmd.args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
}

/// A PostgreSQL cluster of a test's own, for cases that would take the whole server down if
/// they regressed (a crash ends every session of a cluster). Removed when dropped.
pub struct Cluster {
    dir: String,
    pub config: Config,
}

/// A PostgreSQL program: from ES_TEST_PG_BIN (scripts/test.sh passes its installation), or
/// Debian's PostgreSQL 15.
pub fn pg_bin(name: &str) -> String {
    let dir =
        std::env::var("ES_TEST_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    format!("{dir}/{name}")
}

impl Cluster {
    pub fn start(name: &str) -> Cluster {
        Cluster::start_with(name, "")
    }

    fn place(name: &str) -> (String, String, u16) {
        let run = std::env::var("ES_TEST_HOST").expect("ES_TEST_HOST");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let port = 55000 + (std::process::id() % 500) as u16 * 8 + n as u16 % 8;
        let dir = format!("{run}/own-{name}-{}-{n}", std::process::id());
        (run, dir, port)
    }

    /// A new cluster with `conf` added to its postgresql.conf.
    pub fn start_with(name: &str, conf: &str) -> Cluster {
        let (run, dir, port) = Cluster::place(name);
        let status = as_postgres(
            &pg_bin("initdb"),
            &[
                "-D",
                &dir,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        );
        assert!(status.success(), "initdb {dir}");
        let conf = format!(
            "port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{run}'\nfsync = off\n{conf}\n"
        );
        Cluster::run(dir, port, &run, &conf)
    }

    /// Appends `conf` to the cluster's postgresql.conf and starts it.
    fn run(dir: String, port: u16, run: &str, conf: &str) -> Cluster {
        let append = format!("printf '%s' \"$0\" >> '{dir}/postgresql.conf'");
        assert!(as_postgres("sh", &["-c", &append, conf]).success());
        let log = format!("{dir}/server.log");
        let status = as_postgres(&pg_bin("pg_ctl"), &["-D", &dir, "-l", &log, "-w", "start"]);
        assert!(status.success(), "pg_ctl start {dir}");
        let mut config = Config::new();
        config
            .host_path(run)
            .port(port)
            .user("postgres")
            .dbname("postgres");
        Cluster { dir, config }
    }

    /// A hot standby of this cluster: a base backup streaming from it.
    pub fn standby(&self, name: &str) -> Cluster {
        let (run, dir, port) = Cluster::place(name);
        let primary = self.config.get_ports()[0].to_string();
        let status = as_postgres(
            &pg_bin("pg_basebackup"),
            &[
                "-D", &dir, "-h", &run, "-p", &primary, "-U", "postgres", "-R", "-X", "stream",
                "-c", "fast",
            ],
        );
        assert!(status.success(), "pg_basebackup {dir}");
        Cluster::run(
            dir,
            port,
            &run,
            &format!("\nport = {port}\nhot_standby = on\n"),
        )
    }

    pub fn connect(&self) -> Client {
        self.config.connect(NoTls).unwrap()
    }

    /// `pg_ctl stop|start|promote` on this cluster.
    pub fn pg_ctl(&self, action: &str) {
        let log = format!("{}/server.log", self.dir);
        let mut args = vec!["-D", &self.dir, "-w", action];
        match action {
            "stop" => args.extend(["-m", "immediate"]),
            "start" => args.extend(["-l", &log]),
            _ => {}
        }
        assert!(
            as_postgres(&pg_bin("pg_ctl"), &args).success(),
            "pg_ctl {action} {}",
            self.dir
        );
    }

    /// A session in database `db`.
    pub fn connect_to(&self, db: &str) -> Client {
        let mut config = self.config.clone();
        config.dbname(db);
        config.connect(NoTls).unwrap()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(format!("{}/server.log", self.dir)).unwrap_or_default()
    }

    /// Whether the server still answers (a crash would restart it, ending every session).
    pub fn alive(&self, c: &mut Client) -> bool {
        c.simple_query("SELECT 1").is_ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        as_postgres(
            &pg_bin("pg_ctl"),
            &["-D", &self.dir, "-m", "immediate", "-w", "stop"],
        );
        as_postgres("rm", &["-rf", &self.dir]);
    }
}

/// A random generator for property tests, seeded from ES_TEST_SEED when set (to replay a
/// failure) or at random; the seed is printed, and returned for messages.
pub fn seeded_rng() -> (u64, rand::rngs::StdRng) {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("ES_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("ES_TEST_SEED={seed}");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

/// Whether the cluster preloads event_store, so that its projection worker runs passes.
pub fn worker() -> bool {
    std::env::var("ES_TEST_WORKER").as_deref() == Ok("1")
}
