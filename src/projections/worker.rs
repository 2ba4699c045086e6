//! A projection worker: started by the launcher (launcher.rs) for one database, it announces
//! commits to listeners with NOTIFY, runs a batch of every projection with work (each in its
//! own transaction, least recently served first, skipping one another worker of the database
//! is applying) and the retention policy when due. It gives its slot back when the launcher
//! asks (after its current batch) or when it has had nothing to do for a while.
use super::pool::{self, Slot};
use crate::pg::schema;
use crate::pg::settings;
use crate::read::replication;
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// A worker with nothing to do this long gives its slot back.
const IDLE_EXIT: Duration = Duration::from_secs(10);
/// How often the worker looks whether the retention policy is due (not at every pass: commits
/// wake it for passes many times a second).
const RETENTION_CHECK: Duration = Duration::from_secs(5);

unsafe extern "C-unwind" {
    /// postgres.c's SIGTERM handler (pgrx's binding wraps it as a Rust function, which a
    /// signal handler cannot be).
    fn die(signal: std::ffi::c_int);
}

/// A transaction of the worker's. It first takes a share lock on the projection table, which
/// the update scripts take exclusively before anything else (scripts/update-script.py): an
/// `ALTER EXTENSION event_store UPDATE` waits for the transaction in progress and the next
/// waits for the update, rather than each holding a table the other needs next (a deadlock
/// that failed the update or the batch).
fn transaction<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe + std::panic::RefUnwindSafe) -> R {
    BackgroundWorker::transaction(|| {
        if let Some(table) = schema::try_relation(c"es_projection_state") {
            // SAFETY: a relation lock held to the end of this transaction, then the snapshot
            // replaced by one taken after it: the one from before an update it waited for
            // would not see the rows of a table the update rewrote.
            unsafe {
                pg_sys::LockRelationOid(table, pg_sys::AccessShareLock as i32);
                pg_sys::PopActiveSnapshot();
                pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            }
        }
        f()
    })
}

fn installed() -> bool {
    // SAFETY: a catalog lookup by name (NUL-terminated), in a transaction.
    BackgroundWorker::transaction(|| unsafe {
        pg_sys::get_extension_oid(c"event_store".as_ptr(), true) != pg_sys::InvalidOid
    })
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn es_projection_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SIGTERM (pg_terminate_backend, DROP DATABASE WITH (FORCE), shutdown) ends the worker at
    // the next interrupt check, as it ends a backend: also inside a handler that sleeps.
    // SAFETY: PostgreSQL's own handler for backends, installed as postgres.c does.
    unsafe { pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(die)) };
    let Ok(db) = BackgroundWorker::get_extra().parse::<u32>() else {
        return;
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db.into()), None);
    // The worker is a superuser: its own statements resolve nothing through `public`, where
    // a database owner could leave a better-matching overload of a built-in.
    BackgroundWorker::transaction(|| {
        Spi::run("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)")
    })
    .unwrap_or_else(|e| error!("event_store: {e}"));
    let present = installed();
    pool::set_known(present);
    if !present {
        return; // exit 0: nothing to do here until a commit says otherwise
    }
    let Some(slot) = pool::register_worker() else {
        return;
    };
    let retention = Cell::new(Instant::now());
    let mut backoff = Duration::from_millis(1);
    let mut next_pass = Instant::now();
    let mut worked = Instant::now();
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: rereads the configuration files, as a backend does on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if announce(&slot) {
            worked = Instant::now();
        }
        if slot.asked_to_leave() {
            break;
        }
        let (wanted, fresh) = slot.take_wanted();
        if fresh {
            retention.set(Instant::now()); // a policy just set is due at once
        }
        if wanted || Instant::now() >= next_pass {
            if !installed() {
                pool::set_known(false); // DROP EXTENSION
                break;
            }
            let (wait, applied) = pass(&slot, &retention, &mut backoff);
            slot.applied(applied);
            next_pass = Instant::now() + wait;
            if applied {
                worked = Instant::now();
            }
        }
        if slot.asked_to_leave() {
            break;
        }
        if slot.demand() {
            worked = Instant::now();
        }
        let idle = worked.elapsed();
        if idle >= IDLE_EXIT {
            break;
        }
        let mut wait = next_pass
            .saturating_duration_since(Instant::now())
            .min(IDLE_EXIT - idle);
        if HELD.get().is_some() {
            wait = wait.min(HELD_RETRY);
        }
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break;
        }
    }
}

/// NOTIFYs at most this often: under a stream of commits one covers all those of the last
/// interval, rather than a transaction per wake taking CPU from the appenders (6% of 8-client
/// throughput on 2 cores); a listener waits this much longer at most.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(2);

thread_local! {
    static ANNOUNCED_AT: Cell<Option<Instant>> = const { Cell::new(None) };
    /// A position claimed but not yet announced whole: the synchronous standbys had not
    /// confirmed it (src/read/replication.rs).
    static HELD: Cell<Option<i64>> = const { Cell::new(None) };
    static LAST_SENT: Cell<i64> = const { Cell::new(0) };
}

/// How often a held announcement is tried again.
const HELD_RETRY: Duration = Duration::from_millis(10);

/// Sends one NOTIFY for the commits announced since the last one, unless another worker of
/// the database claimed them. A NOTIFY needs a transaction id, so its commit would wait for a
/// WAL flush; it carries no data worth that wait (a lost notification only delays a listener
/// until the next one), so it commits asynchronously. Under synchronous replication the
/// payload stops at the feed's horizon and the rest is announced once the standbys confirm it.
/// True when it sent one.
fn announce(slot: &Slot) -> bool {
    if !slot.announcement_owed() && HELD.get().is_none() {
        return false;
    }
    if let Some(gap) = ANNOUNCED_AT
        .get()
        .and_then(|t| ANNOUNCE_EVERY.checked_sub(t.elapsed()))
    {
        // Not on the latch: commits meanwhile set it without waking this process.
        // SAFETY: sleeps this process; a signal ends it early.
        unsafe { pg_sys::pg_usleep(gap.as_micros() as std::ffi::c_long) };
    }
    let Some(position) = slot.claim_announcement().max(HELD.take()) else {
        return false;
    };
    let sent = transaction(|| {
        Spi::run("SET LOCAL synchronous_commit = off")
            .unwrap_or_else(|e| error!("event_store: {e}"));
        let bounded = replication::active();
        let servable = match bounded {
            true => position.min(crate::read::feed::_es_feed_horizon()),
            false => position,
        };
        if !bounded || servable > LAST_SENT.get() {
            crate::read::notify::send(servable);
            LAST_SENT.set(servable);
        }
        servable
    });
    HELD.set((sent < position).then_some(position));
    ANNOUNCED_AT.set(Some(Instant::now()));
    true
}

// What a pass runs, as the superuser: only `_event_store.` names (schema::qualified), never
// the extension's schema, which its owner could rename or fill. Least recently served first.
const DUE_SQL: &str = "SELECT name FROM _event_store.es_projection_state \
      WHERE status IN ('running', 'rebuilding') AND (retry_at IS NULL OR retry_at <= now()) \
      ORDER BY updated_at, name";
const BATCH_SQL: &str = "SELECT _event_store._es_project_batch($1, \
        _event_store._es_setting_int('event_store.projection_batch_size'::text), \
        _event_store._es_feed_horizon())";
const RETENTION_SQL: &str = "SELECT _event_store._es_apply_retention_policy()";
// Whether appends are in flight (the commit wakes us before their registration is released),
// whether any projection can run at all (appends ask for a pass only then), and when a pass
// is next due without a commit (a retry, the retention policy), in PostgreSQL's microseconds
// since 2000. And the horizon published for hot standbys. 0.1.0's SQL (until ALTER EXTENSION
// UPDATE) has neither a retention policy nor a published horizon.
macro_rules! after_sql {
    ($publish:literal, $retention:literal) => {
        concat!(
            "SELECT _event_store._es_feed_in_flight(), \
                    EXISTS (SELECT FROM _event_store.es_projection_state \
                             WHERE status IN ('running', 'rebuilding')), \
                    (SELECT (extract(epoch FROM min(t)) * 1000000)::bigint - 946684800000000 \
                       FROM (SELECT min(retry_at) FROM _event_store.es_projection_state \
                              WHERE status IN ('running', 'rebuilding') ",
            $retention,
            ") due(t)), ",
            $publish
        )
    };
}
const AFTER_SQL: [&str; 2] = [
    after_sql!(
        "_event_store._es_publish_feed_horizon()",
        "UNION ALL SELECT next_run_at FROM _event_store.es_retention"
    ),
    after_sql!("0::bigint", ""),
];

/// One pass: a batch of every due projection, then the retention policy when due. Returns how
/// long to wait before the next pass when nothing asks for one earlier, and whether it did
/// any work.
fn pass(slot: &Slot, next_retention: &Cell<Instant>, backoff: &mut Duration) -> (Duration, bool) {
    let names: Vec<String> = transaction(|| {
        Spi::connect(|c| {
            c.select(schema::qualified(DUE_SQL), None, &[]).map(|rows| {
                rows.filter_map(|r| r.get::<String>(1).ok().flatten())
                    .collect()
            })
        })
    })
    .unwrap_or_else(|e| error!("event_store: listing projections: {e}"));
    // Each projection in a transaction of its own: one that fails or hangs (until
    // event_store.projection_timeout) holds up no other, nor the NOTIFY between them. One
    // that another worker is applying is skipped (its row is locked).
    let mut applied = 0;
    for name in &names {
        slot.set_busy(true);
        applied += alone(&format!("projection \"{name}\""), || {
            Spi::get_one_with_args::<i32>(schema::qualified(BATCH_SQL), &[name.into()])
        })
        .unwrap_or(0);
        slot.set_busy(false);
        announce(slot);
        if slot.asked_to_leave() {
            return (Duration::ZERO, applied > 0);
        }
    }
    // The retention policy (es_set_retention) when due; again at once while batches remain.
    if Instant::now() >= next_retention.get() {
        slot.set_busy(true);
        let more = alone("retention", || match schema::legacy_sql() {
            true => Ok(None),
            false => Spi::get_one::<bool>(schema::qualified(RETENTION_SQL)),
        }) == Some(true);
        slot.set_busy(false);
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
    let (in_flight, active, due) = transaction(|| {
        // For hot standbys; a write only when the horizon moved, committed without waiting
        // for its WAL flush (a standby then stops a little lower for a moment at most).
        Spi::run("SET LOCAL synchronous_commit = off").and_then(|_| {
            Spi::get_three::<bool, bool, i64>(schema::qualified(
                AFTER_SQL[schema::legacy_sql() as usize],
            ))
        })
    })
    .unwrap_or_else(|e| error!("event_store: {e}"));
    let active = active.unwrap_or(true);
    slot.passed(active, due.unwrap_or(0));
    let poll = Duration::from_millis(settings::PROJECTION_POLL_INTERVAL.get() as u64);
    let wait = if applied > 0 {
        *backoff = Duration::from_millis(1);
        Duration::ZERO
    } else if in_flight.unwrap_or(false) && active {
        *backoff = (*backoff * 2).min(poll);
        *backoff / 2
    } else {
        *backoff = Duration::from_millis(1);
        poll
    };
    (wait, applied > 0)
}

/// Runs `f` (one batch of one projection, the retention policy) in a transaction of its own.
/// An error (a cancel, a lost lock, a failed retention run) rolls back that transaction only
/// and is logged for `what`.
fn alone<T: Clone>(
    what: &str,
    f: impl Fn() -> Result<Option<T>, pgrx::spi::Error> + std::panic::RefUnwindSafe,
) -> Option<T> {
    PgTryBuilder::new(|| transaction(|| f().ok().flatten()))
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
