//! The launcher: with `shared_preload_libraries = 'event_store'` it starts with the server (on
//! a primary), connected to no database, and shares a pool of `event_store.max_workers`
//! projection workers between the databases: a database with work and no worker gets one
//! within moments while a slot is free; when none is, a worker that has served its database
//! for a time slice (or has nothing to do) gives its slot back. Which databases have
//! event_store is learnt once per database (a worker looks, then exits if it has none) and
//! then from their commits, never by starting workers in a loop. The decisions are
//! event_store_core::projections::pool's; this file reads the shared state and acts.
use super::pool;
use crate::pg::guards::{Opened, TableScan};
use crate::pg::settings;
use event_store_core::projections::pool as plan;
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const LAUNCHER_TYPE: &str = "event_store launcher";
pub const WORKER_TYPE: &str = "event_store projections";
/// How often pg_database is read when no backend asks sooner.
const RESCAN: Duration = Duration::from_secs(1);
/// How often the launcher looks again while work waits (a pool::BUSY_AFTER later, a worker
/// inside a batch counts as stuck).
const WAITING: Duration = Duration::from_millis(100);
/// Rounds are at least this far apart, however often commits wake the launcher.
const ROUND: Duration = Duration::from_millis(5);

pub fn register() {
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
    // Connected to no database (it reads only the shared catalog pg_database): any database,
    // `postgres` included, may be dropped or refuse connections.
    BackgroundWorker::connect_worker_to_spi(None, None);
    crate::read::replication::started();
    pool::register_launcher();
    // The workers this launcher started and that have not exited, by database.
    let mut started: Vec<(u32, DynamicBackgroundWorker)> = vec![];
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut scanned: Option<Instant> = None;
    let mut untracked_warned: HashSet<u32> = HashSet::new();
    let mut round = Instant::now();
    loop {
        // Commits set the latch as often as they come while a database's workers are busy.
        let gap = ROUND.saturating_sub(round.elapsed());
        if !gap.is_zero() {
            // SAFETY: sleeps this process; signals end it early.
            unsafe { pg_sys::pg_usleep(gap.as_micros() as std::ffi::c_long) };
        }
        round = Instant::now();
        if pool::take_rescan() || scanned.is_none_or(|t| t.elapsed() >= RESCAN) {
            names = BackgroundWorker::transaction(databases)
                .into_iter()
                .collect();
            let oids: Vec<u32> = names.keys().copied().collect();
            for oid in pool::track(&oids) {
                if untracked_warned.insert(oid) {
                    warning!(
                        "event_store: database \"{}\" is beyond the {} databases projection workers serve; its appends notify at commit and its projections need es_run_projections",
                        names[&oid],
                        pool::MAX_DATABASES
                    );
                }
            }
            scanned = Some(Instant::now());
        }
        started.retain(|(_, w)| !matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped)));
        let now = pool::now();
        let (databases, workers) =
            pool::snapshot(now, |db| started.iter().filter(|(d, _)| *d == db).count());
        let slice = settings::PROJECTION_TIME_SLICE.get() as i64 * 1000;
        let running = started.len().max(workers.len());
        let max = settings::MAX_WORKERS.get() as usize;
        let decided = plan::plan(&databases, &workers, running, max, slice);
        let mut waiting = decided.waiting;
        let name = |db: u32| names.get(&db).map_or("?", |n| n.as_str());
        for (i, &db) in decided.start.iter().enumerate() {
            match start(db, name(db)) {
                Some(worker) => started.push((db, worker)),
                None => {
                    // max_worker_processes is used up: this database and the rest wait.
                    for &db in &decided.start[i..] {
                        let unserved = databases.iter().any(|d| d.id == db && d.workers == 0);
                        if pool::no_slot(db, now, unserved) {
                            warn_no_slot(name(db), max);
                        }
                        waiting.push(db);
                    }
                    break;
                }
            }
        }
        pool::set_waiting(&waiting, now);
        for slot in decided.leave {
            pool::ask_to_leave(slot);
        }
        let due = pool::next_due();
        // While work waits, look again soon: for a worker that finds no slot, and for one
        // whose every worker may turn out stuck in a batch.
        let wait = if !waiting.is_empty() || databases.iter().any(|d| d.demand) {
            WAITING
        } else if due != 0 {
            Duration::from_micros((due - pool::now()).clamp(0, 1_000_000) as u64)
        } else {
            RESCAN
        };
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: rereads the configuration files, as a backend does on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
}

fn start(db: u32, name: &str) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("{WORKER_TYPE} {name}"))
        .set_type(WORKER_TYPE)
        .set_library("event_store")
        .set_function("es_projection_worker_main")
        .set_extra(&db.to_string())
        .enable_spi_access()
        // Never restarted by the postmaster: a database dropped meanwhile would make it fail
        // to connect every few seconds forever. The launcher starts another while work waits.
        .set_restart_time(None)
        // SAFETY: the launcher's own pid, set before it started.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .ok()
}

fn warn_no_slot(name: &str, max: usize) {
    // SAFETY: a setting PostgreSQL reads at start.
    let processes = unsafe { pg_sys::max_worker_processes };
    ereport!(
        PgLogLevel::WARNING,
        PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        format!(
            "event_store: no background worker slot for database \"{name}\": its projections and notifications wait"
        ),
        format!(
            "Raise max_worker_processes (now {processes}): event_store needs 1 + event_store.max_workers ({max}), on top of TimescaleDB's and parallel queries' workers (docs/operations.md)."
        )
    );
}

/// The databases that accept connections and are not templates (oid, name), read from
/// pg_database with a catalog scan, as autovacuum's launcher reads them (no SQL: there is no
/// database to parse in).
fn databases() -> Vec<(u32, String)> {
    let mut found = vec![];
    // SAFETY: inside the caller's transaction; pg_database is a shared catalog, open from any
    // connection; its tuples are read while the scan holds them, and their names copied.
    unsafe {
        let rel = Opened::table(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock);
        let scan = TableScan(pg_sys::table_beginscan_catalog(
            rel.0,
            0,
            std::ptr::null_mut(),
        ));
        loop {
            let tuple = pg_sys::heap_getnext(scan.0, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            if form.datallowconn && !form.datistemplate {
                let name = std::ffi::CStr::from_ptr(form.datname.data.as_ptr());
                found.push((form.oid.into(), name.to_string_lossy().into_owned()));
            }
        }
    }
    found
}
