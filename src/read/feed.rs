//! The global feed's horizon: the highest position below which every event has either
//! committed or rolled back for good (see sql/read/feed.sql for the registration side).
use crate::pg::{schema, shmem};
use crate::read::replication;
use event_store_core::read::feed::{
    horizon, lock_key, registered_bound, stream_hash, FEED_LOCK_CLASS,
};
use pgrx::prelude::*;
use pgrx::{register_xact_callback, IntoDatum, PgXactCallbackEvent};
use std::cell::Cell;

/// The last position handed out so far (what `nextval` returned last), read without a query.
pub(crate) fn seq_last() -> i64 {
    let seq = schema::relation(c"es_global_position_seq");
    // SAFETY: PostgreSQL's pg_sequence_last_value(regclass), NULL until the first nextval.
    let last = unsafe {
        pgrx::direct_function_call::<i64>(pg_sys::pg_sequence_last_value, &[seq.into_datum()])
    };
    last.unwrap_or_else(|| {
        // Never called, or set back with setval(..., false): ask the sequence's row.
        let sql = schema::qualified(
            "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END \
               FROM _event_store.es_global_position_seq",
        );
        schema::select_one::<i64>(sql)
            .unwrap_or_else(|| error!("event_store: cannot read es_global_position_seq"))
    })
}

/// Takes `n` consecutive global positions and returns the first. One position is one
/// `nextval`; a block is taken under a lock held only while it is taken (an LWLock when
/// preloaded, else a session advisory lock of its own class), so that a consumer sees the
/// events of one call as one block.
pub fn allocate(n: i64) -> i64 {
    let seq = schema::relation(c"es_global_position_seq");
    // SAFETY: PostgreSQL's nextval(regclass) on the extension's sequence, never NULL.
    let next = || unsafe {
        pgrx::direct_function_call::<i64>(pg_sys::nextval_oid, &[seq.into_datum()])
            .expect("nextval returns a value")
    };
    if n <= 1 {
        return next();
    }
    let _lock = shmem::PositionLock::acquire();
    let first = next();
    for _ in 1..n {
        next();
    }
    first
}

const LOCKS_SQL: &str = "SELECT l.pid, coalesce(a.xact_start, a.backend_start), l.objid::bigint \
       FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
      WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid = $1::bigint::oid \
        AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())";

/// Appends in flight in this database: (pid, since, lowest position they may commit).
/// Without preloading, read from advisory locks, which any role can take too (docs/security.md).
fn in_flight(seq_last: i64) -> Vec<(i32, Option<TimestampWithTimeZone>, i64)> {
    if shmem::available() {
        return shmem::in_flight()
            .into_iter()
            .map(|(pid, since, bound)| (pid, TimestampWithTimeZone::try_from(since).ok(), bound))
            .collect();
    }
    Spi::connect(|client| {
        client
            .select(LOCKS_SQL, None, &[(FEED_LOCK_CLASS as i64).into()])
            .map(|rows| {
                rows.map(|r| {
                    (
                        r.get::<i32>(1).ok().flatten().unwrap_or(0),
                        r.get::<TimestampWithTimeZone>(2).ok().flatten(),
                        registered_bound(
                            seq_last,
                            r.get::<i64>(3).ok().flatten().unwrap_or(0) as u32,
                        ),
                    )
                })
                .collect()
            })
            .unwrap_or_else(|e| error!("event_store: reading pg_locks: {e}"))
    })
}

/// (positions handed out, horizon), on a primary. Reads the sequence before the registrations:
/// an append that registers after the sequence was read only takes positions above it. Under
/// synchronous replication the horizon also waits for the standbys (`replication::bound`).
fn read_horizon() -> (i64, i64) {
    let seq_last = seq_last();
    let bounds = in_flight(seq_last).into_iter().map(|(_, _, b)| b);
    (seq_last, replication::bound(horizon(seq_last, bounds)))
}

fn in_recovery() -> bool {
    // SAFETY: reads this server's recovery state.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// Refuses (0A000) a transaction at another level than READ COMMITTED, as the feed's reads
/// always have: one reading as of its own snapshot (REPEATABLE READ, SERIALIZABLE) could not
/// see what committed before a later horizon or lock. `needs` says who: "feed reads need",
/// "a conditional append needs".
pub fn require_read_committed(needs: &str, hint: &str) {
    // SAFETY: reads the transaction's isolation level.
    let level = unsafe { pg_sys::XactIsoLevel } as u32;
    if level != pg_sys::XACT_READ_COMMITTED {
        let name = match level {
            pg_sys::XACT_READ_UNCOMMITTED => "read uncommitted",
            pg_sys::XACT_REPEATABLE_READ => "repeatable read",
            _ => "serializable",
        };
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("event_store: {needs} READ COMMITTED, not {name}"),
            hint
        );
    }
}

/// The feed reads' check (es_read_all, es_read_category, es_dcb_read): a snapshot older than
/// the horizon could miss events committed in between, so they run in READ COMMITTED, where
/// each statement takes a fresh snapshot. 0A000 otherwise.
#[pg_extern(volatile, parallel_unsafe, schema = "_event_store")]
pub fn _es_check_feed_isolation() {
    require_read_committed(
        "feed reads need",
        "Read the feed outside REPEATABLE READ and SERIALIZABLE transactions.",
    );
}

/// Highest position a feed reader may go up to now.
#[pg_extern(volatile, parallel_unsafe, schema = "_event_store")]
pub fn _es_feed_horizon() -> i64 {
    if in_recovery() {
        return replication::published();
    }
    read_horizon().1
}

/// Whether appends are in flight, holding the horizon below the positions handed out.
#[pg_extern(volatile, parallel_unsafe, schema = "_event_store")]
fn _es_feed_in_flight() -> bool {
    if in_recovery() {
        return false;
    }
    let (seq_last, horizon) = read_horizon();
    horizon < seq_last
}

/// The rows of the es_feed_in_flight view.
#[pg_extern(volatile, parallel_unsafe, schema = "_event_store")]
fn _es_feed_holders() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(registered_at, Option<TimestampWithTimeZone>),
        name!(lowest_position, i64),
    ),
> {
    let mut rows = in_flight(seq_last());
    rows.sort_by_key(|r| r.2);
    TableIterator::new(rows)
}

thread_local! {
    /// The advisory lock key this transaction registered under, or 0 in shared memory.
    static REGISTERED: Cell<Option<i32>> = const { Cell::new(None) };
}

/// Registers the calling transaction as an append in flight, once per transaction however
/// many appends it makes, until it ends (released after its commit is visible). The bound is
/// the last position handed out so far: the caller's will be above it. A registration made in
/// a subtransaction that rolls back is kept: it only holds readers back a little longer.
pub fn register() {
    if REGISTERED.get().is_some() {
        return;
    }
    let bound = seq_last();
    let key = if shmem::available() {
        shmem::register(bound);
        0
    } else {
        // A session lock, released below: a transaction-level one would go with a rolled-back
        // subtransaction while the transaction goes on appending.
        let key = lock_key(bound);
        // SAFETY: PostgreSQL's own advisory-lock function, called with two int4 arguments.
        unsafe {
            pgrx::direct_function_call::<()>(
                pg_sys::pg_advisory_lock_shared_int4,
                &[(FEED_LOCK_CLASS as i32).into_datum(), key.into_datum()],
            );
        }
        key
    };
    REGISTERED.set(Some(key));
    register_xact_callback(PgXactCallbackEvent::PrePrepare, || {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "event_store: a transaction that appended events cannot be prepared (two-phase commit)"
        );
    });
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        // SAFETY: set by the commit this callback follows.
        release(Some(unsafe { pg_sys::XactLastCommitEnd }))
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || release(None));
}

fn release(commit_end: Option<u64>) {
    match REGISTERED.take() {
        Some(0) if shmem::available() => shmem::release(commit_end),
        Some(key) => unsafe {
            // SAFETY: releases the session lock taken above.
            pgrx::direct_function_call::<bool>(
                pg_sys::pg_advisory_unlock_shared_int4,
                &[(FEED_LOCK_CLASS as i32).into_datum(), key.into_datum()],
            );
        },
        None => {}
    }
}

/// The consumer group member (0-based) that receives a stream's events.
#[pg_extern(immutable, strict, parallel_safe, schema = "_event_store")]
fn _es_consumer_group_member(stream_id: &str, size: i32) -> i32 {
    (stream_hash(stream_id) % size.max(1) as u64) as i32
}

#[pg_extern(immutable, parallel_safe, schema = "_event_store")]
fn _es_check_feed_read(max_count: Option<i32>, member: Option<i32>, size: Option<i32>) {
    event_store_core::validate::check_feed_read(max_count, member, size)
        .unwrap_or_else(|e| crate::pg::errors::raise_invalid(e))
}
