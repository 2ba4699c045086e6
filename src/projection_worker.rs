//! The projection worker. With `shared_preload_libraries = 'event_store'`, a launcher starts
//! with the server and keeps one worker per database that has the extension; each worker runs
//! `es_run_projections()` as soon as appends commit (the appending backend signals it), and
//! otherwise every `event_store.projection_poll_interval`.
use crate::guc;
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use pgrx::{register_xact_callback, PgXactCallbackEvent};
use std::cell::Cell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const LAUNCHER_TYPE: &str = "event_store launcher";
const WORKER_TYPE: &str = "event_store projections";
const RESCAN: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_secs(10);

pub fn register_launcher() {
    BackgroundWorkerBuilder::new(LAUNCHER_TYPE)
        .set_type(LAUNCHER_TYPE)
        .set_library("event_store")
        .set_function("es_launcher_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn es_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some("postgres"), None);
    // Per database: its worker, and when one was last started. A worker for a database
    // without the extension exits at once; it is tried again RETRY later, not in a loop.
    let mut workers: HashMap<String, (Option<DynamicBackgroundWorker>, Instant)> = HashMap::new();
    loop {
        let databases: Vec<String> = BackgroundWorker::transaction(|| {
            Spi::connect(|c| {
                c.select("SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate", None, &[])
                    .expect("listing databases")
                    .map(|r| r.get::<String>(1).unwrap().unwrap())
                    .collect()
            })
        });
        workers.retain(|db, _| databases.contains(db));
        let mut waiting = false;
        for db in databases {
            let (worker, started) = workers
                .entry(db.clone())
                .or_insert((None, Instant::now() - RETRY));
            let running = worker
                .as_ref()
                .is_some_and(|w| !matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped)));
            if running {
                continue;
            }
            if started.elapsed() < RETRY {
                waiting = true;
                continue;
            }
            *started = Instant::now();
            *worker = BackgroundWorkerBuilder::new(&format!("{WORKER_TYPE} {db}"))
                .set_type(WORKER_TYPE)
                .set_library("event_store")
                .set_function("es_projection_worker_main")
                .set_extra(&db)
                .enable_spi_access()
                .set_restart_time(Some(Duration::from_secs(5)))
                .set_notify_pid(unsafe { pg_sys::MyProcPid })
                .load_dynamic()
                .ok();
            waiting |= worker.is_none();
        }
        if !BackgroundWorker::wait_latch(Some(if waiting { RETRY } else { RESCAN })) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn es_projection_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    let schema: Option<String> = BackgroundWorker::transaction(|| {
        Spi::get_one(
            "SELECT quote_ident(n.nspname) FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace \
             WHERE x.extname = 'event_store' \
               AND to_regprocedure(quote_ident(n.nspname) || '.es_run_projections(integer)') IS NOT NULL",
        )
        .unwrap_or(None)
    });
    let Some(s) = schema else {
        return; // not installed here (or a version without projections): exit 0, not restarted
    };
    // One pass: apply a batch of every projection with work; also tell whether appends are in
    // flight (the commit signal arrives before their feed registration is released). Without
    // active projections the pass stays cheap: no horizon, no pg_locks scan.
    let pass = format!(
        "SELECT {s}.es_run_projections(), \
                EXISTS (SELECT FROM {s}.es_projection_state WHERE status IN ('running', 'rebuilding')) \
                AND {s}._es_feed_in_flight()"
    );
    let mut backoff = Duration::from_millis(1);
    loop {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let (applied, in_flight): (i32, bool) = BackgroundWorker::transaction(|| {
            Spi::connect(|c| {
                let row = c
                    .select(&pass, None, &[])
                    .expect("running projections")
                    .first();
                (
                    row.get(1).unwrap().unwrap_or(0),
                    row.get(2).unwrap().unwrap_or(false),
                )
            })
        });
        let poll = Duration::from_millis(guc::PROJECTION_POLL_INTERVAL.get() as u64);
        let wait = if applied > 0 {
            backoff = Duration::from_millis(1);
            Duration::ZERO
        } else if in_flight {
            backoff = (backoff * 2).min(poll);
            backoff / 2
        } else {
            backoff = Duration::from_millis(1);
            poll
        };
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break;
        }
    }
}

thread_local! {
    static WAKE_PENDING: Cell<bool> = const { Cell::new(false) };
    // (pid of this database's worker, else of the launcher, else 0; when it was looked up)
    static WORKER: Cell<Option<(i32, Instant)>> = const { Cell::new(None) };
}

/// Whom to signal at commit: this database's worker, else the launcher, else nobody (0), and
/// nobody while no projection is active, since waking a worker costs CPU on every commit.
fn worker_pid(fresh: bool) -> i32 {
    if let Some((pid, at)) = WORKER.get() {
        if !fresh && at.elapsed() < Duration::from_secs(5) {
            return pid;
        }
    }
    let row = Spi::get_two::<i32, i32>(
        "SELECT (SELECT pid FROM pg_stat_activity WHERE backend_type = 'event_store projections' \
                  AND datname = current_database() LIMIT 1), \
                (SELECT pid FROM pg_stat_activity WHERE backend_type = 'event_store launcher' LIMIT 1) \
          WHERE EXISTS (SELECT FROM es_projection_state WHERE status IN ('running', 'rebuilding'))",
    );
    // No worker here yet: wake the launcher so that it starts one. Cached either way: the
    // lookup reads every backend's status, too costly for every append.
    let pid = match row {
        Ok((worker, launcher)) => worker.or(launcher).unwrap_or(0),
        Err(_) => 0, // no row: no active projection
    };
    WORKER.set(Some((pid, Instant::now())));
    pid
}

/// Wakes this database's projection worker when the transaction commits (its launcher when
/// it has none yet, so that a new database is served at once). `fresh` skips the cached
/// lookup: projection management calls it so that a new projection starts at once.
#[pg_extern(volatile, parallel_unsafe)]
fn _es_wake_projections(fresh: default!(bool, false)) {
    if WAKE_PENDING.get() {
        return;
    }
    let pid = worker_pid(fresh);
    if pid == 0 {
        return;
    }
    WAKE_PENDING.set(true);
    register_xact_callback(PgXactCallbackEvent::Commit, move || {
        WAKE_PENDING.set(false);
        unsafe { libc::kill(pid, libc::SIGUSR1) };
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || WAKE_PENDING.set(false));
}
