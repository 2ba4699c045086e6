//! Settings under `event_store.*`. Those that protect the server (sizes, depths, time limits,
//! the worker's pace) are the superuser's (`Suset`): a writer must not lift its own limits.
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CStr;

/// Upper bound on `octet_length(event_data::text) + octet_length(metadata::text)` per event.
pub static MAX_EVENT_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);
/// Deepest nesting of arrays and objects accepted in `event_data` or `metadata`.
pub static MAX_EVENT_DEPTH: GucSetting<i32> = GucSetting::<i32>::new(64);
pub static PROJECTION_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(60_000);
pub static NOTIFY: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static PROJECTION_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(500);
pub static PROJECTION_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(5);
pub static PROJECTION_RETRY_DELAY: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static SNAPSHOT_EVERY: GucSetting<i32> = GucSetting::<i32>::new(100);
pub static PROJECTION_POLL_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
/// Upper bound of `event_store.max_workers` (the pool's slots in shared memory).
pub const MAX_WORKERS_BOUND: usize = 64;
pub static PROJECTION_TIME_SLICE: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static MASTER_KEY: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);

pub fn register() {
    GucRegistry::define_int_guc(
        c"event_store.max_event_bytes",
        c"Largest event accepted by es_append, in bytes of event_data plus metadata as text.",
        c"Appends over the limit fail with SQLSTATE 54000 and write nothing.",
        &MAX_EVENT_BYTES,
        1024,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"event_store.max_event_depth",
        c"Deepest nesting of arrays and objects es_append accepts in event_data or metadata.",
        c"Deeper events fail with SQLSTATE 54000 and write nothing; folds of deep events need stack.",
        &MAX_EVENT_DEPTH,
        1,
        1000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"event_store.projection_timeout",
        c"Longest one projection's batch may run before it is cancelled and counted as a failed attempt; 0 = no limit.",
        c"A slow or hanging handler then delays only its own projection.",
        &PROJECTION_TIMEOUT,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"event_store.notify",
        c"Whether appends send NOTIFY event_store at commit.",
        c"NOTIFY serialises commits on a cluster-wide queue lock; turn it off when no client listens.",
        &NOTIFY,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"event_store.snapshot_every",
        c"An append that takes a stream past a multiple of this many events stores a snapshot of its state; 0 turns automatic snapshots off.",
        c"Snapshots let the state functions fold only the events after them.",
        &SNAPSHOT_EVERY,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"event_store.projection_batch_size",
        c"Events a projection applies per transaction.",
        c"",
        &PROJECTION_BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"event_store.projection_max_attempts",
        c"Failed attempts at one batch before its projection is marked failed.",
        c"",
        &PROJECTION_MAX_ATTEMPTS,
        1,
        1000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"event_store.projection_retry_delay",
        c"Delay before the first retry of a failed batch; it doubles with each attempt, up to 5 minutes.",
        c"",
        &PROJECTION_RETRY_DELAY,
        0,
        300_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"event_store.projection_poll_interval",
        c"Longest the projection worker sleeps between checks when no commit wakes it.",
        c"",
        &PROJECTION_POLL_INTERVAL,
        10,
        3_600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"event_store.max_workers",
        c"Projection workers the whole cluster runs at once, shared by the databases that have work.",
        c"Each takes a max_worker_processes slot while it runs; one more is the launcher's (docs/operations.md).",
        &MAX_WORKERS,
        1,
        MAX_WORKERS_BOUND as i32,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"event_store.projection_time_slice",
        c"How long one projection's batch takes new events before it commits and yields to the others.",
        c"Also how long a worker serves one database before it gives its slot to a database waiting for one.",
        &PROJECTION_TIME_SLICE,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"event_store.master_key",
        c"64 hexadecimal digits: the key that wraps every subject's key in es_subject_keys.",
        c"Set by a superuser (postgresql.conf, or ALTER SYSTEM); only superusers can read it.",
        &MASTER_KEY,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
}

/// Runs `f` with PostgreSQL's `settings` (name, value) set, as a function's SET clauses would
/// be, and restored after.
pub fn with<R>(settings: &[(&CStr, &CStr)], f: impl FnOnce() -> R) -> R {
    nested(settings, true, f)
}

/// As `with`, and every setting `f` made, SET or SET LOCAL, is undone too, as an abort
/// would: for a user's function (a projection handler), whose settings must not reach its
/// caller. `with` pops its level as a commit does, which hands a plain SET on to the caller.
pub fn isolated<R>(settings: &[(&CStr, &CStr)], f: impl FnOnce() -> R) -> R {
    nested(settings, false, f)
}

fn nested<R>(settings: &[(&CStr, &CStr)], as_commit: bool, f: impl FnOnce() -> R) -> R {
    use pgrx::pg_sys;
    // SAFETY: settings saved in a GUC nest level of their own and popped after `f`; when `f`
    // raises an error, the (sub)transaction's abort pops the level instead.
    unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        for (name, value) in settings {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        let r = f();
        pg_sys::AtEOXact_GUC(as_commit, nest);
        r
    }
}
