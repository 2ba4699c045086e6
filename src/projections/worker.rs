//! The projection worker. With `shared_preload_libraries = 'event_store'`, a launcher starts
//! with the server and keeps one worker per database that has the extension; each worker runs
//! a batch of every projection, each in its own transaction, as soon as appends commit (the
//! appending backend sets its latch, found in shared memory), and otherwise every
//! `event_store.projection_poll_interval`.
use crate::pg::guards::{Opened, TableScan};
use crate::pg::schema;
use crate::pg::{settings, shmem};
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
/// How long a database's request for its worker is honoured: one that comes while its old
/// worker is still being reaped is served when the postmaster reports that worker gone.
const REQUEST: Duration = Duration::from_secs(2);
/// How often the worker looks whether the retention policy is due (not at every pass: commits
/// wake it for passes many times a second).
const RETENTION_CHECK: Duration = Duration::from_secs(5);

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
    // Connected to no database (it reads only the shared catalog pg_database): any database,
    // `postgres` included, may be dropped or refuse connections.
    BackgroundWorker::connect_worker_to_spi(None, None);
    shmem::register_launcher();
    // Per database: its worker, and when one was last started. A worker for a database
    // without the extension exits at once; it is tried again RETRY later, not in a loop.
    let mut workers: HashMap<String, (Option<DynamicBackgroundWorker>, Instant)> = HashMap::new();
    let mut requested_at: Option<Instant> = None;
    loop {
        // A database that asked for its worker gets it now, not RETRY after one that came too
        // early (before CREATE EXTENSION) exited.
        if shmem::take_launch_request() {
            requested_at = Some(Instant::now());
        }
        let requested = requested_at.filter(|t| t.elapsed() < REQUEST);
        let databases = BackgroundWorker::transaction(databases);
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
            // A request starts each database's worker once, not in a loop for those that exit.
            if started.elapsed() < RETRY && requested.is_none_or(|t| *started > t) {
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
                // Never restarted by the postmaster: a database dropped meanwhile would
                // make it fail to connect every few seconds forever. The launcher starts
                // it again while the database exists.
                .set_restart_time(None)
                // SAFETY: the launcher's own pid, set before it started.
                .set_notify_pid(unsafe { pg_sys::MyProcPid })
                .load_dynamic()
                .ok();
            waiting |= worker.is_none();
        }
        let wait = match requested {
            Some(t) => REQUEST.saturating_sub(t.elapsed()),
            None if waiting => RETRY,
            None => RESCAN,
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

/// The databases that accept connections and are not templates, read from pg_database with a
/// catalog scan, as autovacuum's launcher reads them (no SQL: there is no database to parse in).
fn databases() -> Vec<String> {
    let mut names = vec![];
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
                names.push(name.to_string_lossy().into_owned());
            }
        }
    }
    names
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn es_projection_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    // The worker is a superuser: its own statements resolve nothing through `public`, where
    // a database owner could leave a better-matching overload of a built-in.
    BackgroundWorker::transaction(|| {
        Spi::run("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)")
    })
    .unwrap_or_else(|e| error!("event_store: {e}"));
    // SAFETY: a catalog lookup by name (NUL-terminated), in a transaction.
    let installed = BackgroundWorker::transaction(|| unsafe {
        pg_sys::get_extension_oid(c"event_store".as_ptr(), true) != pg_sys::InvalidOid
    });
    if !installed {
        return; // exit 0: nothing to do here
    }
    shmem::register_worker();
    let retention = Cell::new(Instant::now());
    let mut backoff = Duration::from_millis(1);
    let mut announced = shmem::to_announce().0;
    let mut next_pass = Instant::now();
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: rereads the configuration files, as a backend does on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        announce(&mut announced);
        if shmem::take_wanted() || Instant::now() >= next_pass {
            let wait = pass(&retention, &mut backoff, &mut announced);
            next_pass = Instant::now() + wait;
        }
        let wait = next_pass.saturating_duration_since(Instant::now());
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break;
        }
    }
}

/// Sends one NOTIFY for the commits announced since the last one (`announced` counts them).
/// A NOTIFY needs a transaction id, so its commit would wait for a WAL flush; it carries no
/// data worth that wait (a lost notification only delays a listener until the next one), so
/// it commits asynchronously.
fn announce(announced: &mut u64) {
    let (commits, position) = shmem::to_announce();
    if commits != *announced {
        BackgroundWorker::transaction(|| {
            Spi::run("SET LOCAL synchronous_commit = off")
                .unwrap_or_else(|e| error!("event_store: {e}"));
            crate::read::notify::send(position)
        });
        *announced = commits;
    }
}

// What a pass runs, as the superuser: only `_event_store.` names (schema::qualified), never
// the extension's schema, which its owner could rename or fill.
const DUE_SQL: &str = "SELECT name FROM _event_store.es_projection_state \
      WHERE status IN ('running', 'rebuilding') AND (retry_at IS NULL OR retry_at <= now()) \
      ORDER BY name";
const BATCH_SQL: &str = "SELECT _event_store._es_project_batch($1, \
        _event_store._es_setting_int('event_store.projection_batch_size'::text), \
        _event_store._es_feed_horizon())";
const RETENTION_SQL: &str = "SELECT _event_store._es_apply_retention_policy()";
// Whether appends are in flight (the commit wakes us before their registration is released),
// and whether any projection can run at all: appends wake us only then. And the horizon
// published for hot standbys, which 0.1.0's SQL (until ALTER EXTENSION UPDATE) lacks.
macro_rules! after_sql {
    ($publish:literal) => {
        concat!(
            "SELECT _event_store._es_feed_in_flight(), \
                    EXISTS (SELECT FROM _event_store.es_projection_state \
                             WHERE status IN ('running', 'rebuilding')), ",
            $publish
        )
    };
}
const AFTER_SQL: [&str; 2] = [
    after_sql!("_event_store._es_publish_feed_horizon()"),
    after_sql!("0::bigint"),
];

/// One pass: a batch of every due projection. Returns how long to wait before the next pass
/// when nothing asks for one earlier.
fn pass(next_retention: &Cell<Instant>, backoff: &mut Duration, announced: &mut u64) -> Duration {
    let names: Vec<String> = BackgroundWorker::transaction(|| {
        Spi::connect(|c| {
            c.select(schema::qualified(DUE_SQL), None, &[]).map(|rows| {
                rows.filter_map(|r| r.get::<String>(1).ok().flatten())
                    .collect()
            })
        })
    })
    .unwrap_or_else(|e| error!("event_store: listing projections: {e}"));
    // Each projection in a transaction of its own: one that fails or hangs (until
    // event_store.projection_timeout) holds up no other, nor the NOTIFY between them.
    let mut applied = 0;
    for name in &names {
        applied += alone(&format!("projection \"{name}\""), || {
            Spi::get_one_with_args::<i32>(schema::qualified(BATCH_SQL), &[name.into()])
        })
        .unwrap_or(0);
        announce(announced);
    }
    // The retention policy (es_set_retention) when due; again at once while batches remain.
    // 0.1.0's SQL (until ALTER EXTENSION UPDATE) has none.
    if Instant::now() >= next_retention.get() {
        let more = alone("retention", || match schema::legacy_sql() {
            true => Ok(None),
            false => Spi::get_one::<bool>(schema::qualified(RETENTION_SQL)),
        }) == Some(true);
        next_retention.set(
            Instant::now()
                + if more {
                    Duration::ZERO
                } else {
                    RETENTION_CHECK
                },
        );
        applied += more as i32;
    }
    let (in_flight, active) = BackgroundWorker::transaction(|| {
        // For hot standbys; a write only when the horizon moved, committed without waiting
        // for its WAL flush (a standby then stops a little lower for a moment at most).
        Spi::run("SET LOCAL synchronous_commit = off").and_then(|_| {
            Spi::get_two::<bool, bool>(schema::qualified(AFTER_SQL[schema::legacy_sql() as usize]))
        })
    })
    .unwrap_or_else(|e| error!("event_store: {e}"));
    shmem::set_active(active.unwrap_or(true));
    let poll = Duration::from_millis(settings::PROJECTION_POLL_INTERVAL.get() as u64);
    if applied > 0 {
        *backoff = Duration::from_millis(1);
        Duration::ZERO
    } else if in_flight.unwrap_or(false) && active.unwrap_or(false) {
        *backoff = (*backoff * 2).min(poll);
        *backoff / 2
    } else {
        *backoff = Duration::from_millis(1);
        poll
    }
}

/// Runs `f` (one batch of one projection, the retention policy) in a transaction of its own.
/// An error (a cancel, a lost lock, a failed retention run) rolls back that transaction only
/// and is logged for `what`.
fn alone<T: Clone>(
    what: &str,
    f: impl Fn() -> Result<Option<T>, pgrx::spi::Error> + std::panic::RefUnwindSafe,
) -> Option<T> {
    PgTryBuilder::new(|| BackgroundWorker::transaction(|| f().ok().flatten()))
        .catch_others(|e| {
            // SAFETY: the transaction the error left open is rolled back before the next one.
            unsafe { pg_sys::AbortCurrentTransaction() };
            if let pgrx::pg_sys::panic::CaughtError::PostgresError(report) = &e {
                log!("event_store: {what}: {}", report.message());
            }
            None
        })
        .execute()
}

thread_local! {
    static WAKE: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Wakes this database's projection worker through its latch when the transaction commits,
/// when it has projections to run (its launcher when it has none yet, so that a new
/// database is served at once). `fresh` wakes it in any case: projection management calls
/// it so that a new or resumed projection starts at once.
#[pg_extern(volatile, parallel_unsafe, schema = "_event_store")]
pub fn _es_wake_projections(fresh: default!(bool, false)) {
    if !shmem::available() {
        return; // not preloaded: no worker
    }
    let pending = WAKE.get();
    WAKE.set(Some(fresh || pending.unwrap_or(false)));
    if pending.is_some() {
        return;
    }
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        shmem::wake(WAKE.take().unwrap_or(false));
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || WAKE.set(None));
}
