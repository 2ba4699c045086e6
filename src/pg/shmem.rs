//! Shared memory, when the library is preloaded: the appends in flight that hold the feed's
//! horizon (one slot per backend, written only by its own backend through `es_append`, so no
//! role can fake one), and the latches of the projection workers and their launcher.
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::sync::atomic::{
    fence, AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering,
};

/// Databases with a projection worker at once; more are served once others stop.
const MAX_WORKERS: usize = 256;

#[repr(C)]
struct Slot {
    /// The lowest position the backend's transaction may still commit, plus one; 0 = none.
    registered: AtomicI64,
    database: AtomicU32,
    pid: AtomicI32,
    since: AtomicI64,
}

#[repr(C)]
struct Worker {
    database: AtomicU32,
    procno: AtomicI32,
    /// Whether the database has projections to run: appends wake the worker only then.
    active: AtomicBool,
    /// Set with the latch when a projection pass is wanted now (not only a NOTIFY).
    wanted: AtomicBool,
    /// The highest position committed appends asked the worker to announce with NOTIFY.
    notify: AtomicI64,
    /// How many commits asked: a commit below the highest position (it took its position
    /// before another that committed first) still needs its own NOTIFY, since a listener
    /// woken earlier stopped below it.
    commits: AtomicU64,
}

#[repr(C)]
struct Header {
    launcher_procno: AtomicI32,
    /// A database without a worker asked for one: the launcher starts it now, even if one
    /// exited there moments ago (it came before CREATE EXTENSION).
    launch_requested: AtomicBool,
    workers: [Worker; MAX_WORKERS],
    // followed by one Slot per backend id (1..=MaxBackends)
}

static SHARED: AtomicPtr<Header> = AtomicPtr::new(std::ptr::null_mut());
/// The lock under which an append takes a block of consecutive positions.
static POSITIONS: AtomicPtr<pg_sys::LWLock> = AtomicPtr::new(std::ptr::null_mut());
const POSITIONS_TRANCHE: &std::ffi::CStr = c"event_store positions";
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;

fn size() -> usize {
    // SAFETY: MaxBackends is final when shared memory is requested.
    let backends = unsafe { pg_sys::MaxBackends } as usize;
    size_of::<Header>() + (backends + 1) * size_of::<Slot>()
}

/// Called from `_PG_init` while preloading.
pub fn init() {
    // SAFETY: hooks are chained once, in the postmaster, before any backend starts.
    unsafe {
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup);
    }
}

/// # Safety
/// Called by PostgreSQL as its shmem_request_hook, in the postmaster.
#[pg_guard]
unsafe extern "C-unwind" fn request() {
    // SAFETY: chained hook, then PostgreSQL's own request call.
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(size());
        pg_sys::RequestNamedLWLockTranche(POSITIONS_TRANCHE.as_ptr(), 1);
    }
}

/// # Safety
/// Called by PostgreSQL as its shmem_startup_hook, once per process that attaches.
#[pg_guard]
unsafe extern "C-unwind" fn startup() {
    // SAFETY: ShmemInitStruct under AddinShmemInitLock, as PostgreSQL documents; zeroed memory
    // is a valid Header and Slots (all atomics, 0 = free).
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let p = pg_sys::ShmemInitStruct(c"event_store".as_ptr(), size(), &mut found);
        if !found {
            std::ptr::write_bytes(p.cast::<u8>(), 0, size());
        }
        pg_sys::LWLockRelease(lock);
        SHARED.store(p.cast(), Ordering::SeqCst);
        let tranche = pg_sys::GetNamedLWLockTranche(POSITIONS_TRANCHE.as_ptr());
        POSITIONS.store(&raw mut (*tranche).lock, Ordering::SeqCst);
    }
}

fn header() -> Option<&'static Header> {
    // SAFETY: set once at startup to memory that lives as long as the server.
    unsafe { SHARED.load(Ordering::Relaxed).as_ref() }
}

/// Whether in-flight appends register here (the library was preloaded).
pub fn available() -> bool {
    header().is_some()
}

fn slots(h: &'static Header) -> &'static [Slot] {
    // SAFETY: the slots follow the header, MaxBackends + 1 of them (see `size`).
    unsafe {
        let first = (h as *const Header).add(1).cast::<Slot>();
        std::slice::from_raw_parts(first, pg_sys::MaxBackends as usize + 1)
    }
}

/// Registers this backend's transaction with the lowest position it may commit.
pub fn register(bound: i64) {
    let Some(h) = header() else {
        error!("event_store: feed registration in shared memory without preloading");
    };
    // SAFETY: reads of the backend's own identity.
    let slot = unsafe { &slots(h)[pg_sys::MyBackendId as usize] };
    // SAFETY: reads of the backend's own identity and the clock.
    unsafe {
        slot.database
            .store(pg_sys::MyDatabaseId.into(), Ordering::SeqCst);
        slot.pid.store(pg_sys::MyProcPid, Ordering::SeqCst);
        slot.since
            .store(pg_sys::GetCurrentTimestamp(), Ordering::SeqCst);
    }
    slot.registered.store(bound + 1, Ordering::SeqCst);
}

pub fn release() {
    if let Some(h) = header() {
        // SAFETY: the backend's own slot.
        unsafe { &slots(h)[pg_sys::MyBackendId as usize] }
            .registered
            .store(0, Ordering::SeqCst);
    }
}

/// This database's appends in flight: (pid, registered at, lowest position).
pub fn in_flight() -> Vec<(i32, i64, i64)> {
    let Some(h) = header() else { return vec![] };
    fence(Ordering::SeqCst);
    // SAFETY: the backend's database id.
    let db: u32 = unsafe { pg_sys::MyDatabaseId }.into();
    slots(h)
        .iter()
        .filter_map(|s| {
            let r = s.registered.load(Ordering::SeqCst);
            (r > 0 && s.database.load(Ordering::SeqCst) == db).then(|| {
                (
                    s.pid.load(Ordering::SeqCst),
                    s.since.load(Ordering::SeqCst),
                    r - 1,
                )
            })
        })
        .collect()
}

/// Sets the latch of the process with PGPROC number `procno`.
fn set_latch(procno: i32) {
    // SAFETY: ProcGlobal->allProcs has an entry per PGPROC number, and latches in PGPROC are
    // shared: any backend may set another's.
    unsafe {
        let proc = (*pg_sys::ProcGlobal).allProcs.add(procno as usize);
        pg_sys::SetLatch(&raw mut (*proc).procLatch);
    }
}

fn own_procno() -> i32 {
    // SAFETY: MyProc is set for every process that uses this.
    unsafe { (*pg_sys::MyProc).pgprocno }
}

/// The launcher announces itself so that a database without a worker yet can ask for one.
pub fn register_launcher() {
    if let Some(h) = header() {
        h.launcher_procno.store(own_procno() + 1, Ordering::SeqCst);
    }
}

/// A database's worker announces itself; its slot is freed when the process exits.
pub fn register_worker() {
    let Some(h) = header() else { return };
    // SAFETY: the worker's database id.
    let db: u32 = unsafe { pg_sys::MyDatabaseId }.into();
    let Some(i) = h.workers.iter().position(|w| {
        w.database
            .compare_exchange(0, db, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }) else {
        return; // all slots taken: this worker polls instead of being woken
    };
    let w = &h.workers[i];
    w.notify.store(0, Ordering::SeqCst);
    w.commits.store(0, Ordering::SeqCst);
    w.wanted.store(true, Ordering::SeqCst);
    w.active.store(true, Ordering::SeqCst);
    w.procno.store(own_procno() + 1, Ordering::SeqCst);
    // SAFETY: registers a callback run at process exit, before shared memory is detached.
    unsafe { pg_sys::before_shmem_exit(Some(unregister_worker), pg_sys::Datum::from(i)) };
}

/// # Safety
/// Called by PostgreSQL at process exit, with the slot index registered above.
#[pg_guard]
unsafe extern "C-unwind" fn unregister_worker(_code: i32, slot: pg_sys::Datum) {
    if let Some(h) = header() {
        let w = &h.workers[slot.value()];
        w.procno.store(0, Ordering::SeqCst);
        w.database.store(0, Ordering::SeqCst);
    }
}

/// The worker says whether it has projections to run.
pub fn set_active(active: bool) {
    let Some(h) = header() else { return };
    // SAFETY: the worker's database id.
    let db: u32 = unsafe { pg_sys::MyDatabaseId }.into();
    if let Some(w) = h
        .workers
        .iter()
        .find(|w| w.database.load(Ordering::SeqCst) == db)
    {
        w.active.store(active, Ordering::SeqCst);
    }
}

fn own_worker(h: &'static Header) -> Option<&'static Worker> {
    // SAFETY: the backend's database id.
    let db: u32 = unsafe { pg_sys::MyDatabaseId }.into();
    h.workers
        .iter()
        .find(|w| w.database.load(Ordering::SeqCst) == db && w.procno.load(Ordering::SeqCst) > 0)
}

/// Wakes this database's worker for a projection pass (when it has projections to run, or
/// always when `fresh`), or the launcher when the database has no worker yet.
pub fn wake(fresh: bool) {
    let Some(h) = header() else { return };
    match own_worker(h) {
        Some(w) => {
            if fresh || w.active.load(Ordering::SeqCst) {
                w.wanted.store(true, Ordering::SeqCst);
                set_latch(w.procno.load(Ordering::SeqCst) - 1);
            }
        }
        None => {
            let procno = h.launcher_procno.load(Ordering::SeqCst);
            if fresh && procno > 0 {
                h.launch_requested.store(true, Ordering::SeqCst);
                set_latch(procno - 1);
            }
        }
    }
}

/// For the launcher: whether a database asked for its worker since the last call.
pub fn take_launch_request() -> bool {
    header().is_some_and(|h| h.launch_requested.swap(false, Ordering::SeqCst))
}

/// Whether this database has a worker that announces commits with NOTIFY.
pub fn has_worker() -> bool {
    header().and_then(own_worker).is_some()
}

/// Asks this database's worker to NOTIFY that events up to `position` committed; false when
/// it has no worker (then the caller notifies itself).
pub fn announce(position: i64) -> bool {
    let Some(w) = header().and_then(own_worker) else {
        return false;
    };
    w.notify.fetch_max(position, Ordering::SeqCst);
    w.commits.fetch_add(1, Ordering::SeqCst);
    set_latch(w.procno.load(Ordering::SeqCst) - 1);
    true
}

/// For the worker: whether a projection pass was asked for since the last call.
pub fn take_wanted() -> bool {
    header()
        .and_then(own_worker)
        .is_some_and(|w| w.wanted.swap(false, Ordering::SeqCst))
}

/// For the worker: how many commits asked it to NOTIFY, and the highest position they
/// committed.
pub fn to_announce() -> (u64, i64) {
    header().and_then(own_worker).map_or((0, 0), |w| {
        let commits = w.commits.load(Ordering::SeqCst);
        (commits, w.notify.load(Ordering::SeqCst))
    })
}

/// Held while an append takes a block of positions; released when dropped, also when an
/// error unwinds through it (and by PostgreSQL's abort, which releases every LWLock).
pub enum PositionLock {
    Shared(*mut pg_sys::LWLock),
    /// Not preloaded: a session advisory lock of its own class, which any role could also
    /// take (docs/security.md), held only for the allocation.
    Advisory,
}

impl PositionLock {
    pub fn acquire() -> PositionLock {
        let lock = POSITIONS.load(Ordering::Relaxed);
        if !lock.is_null() {
            // SAFETY: an LWLock of our tranche in shared memory, set up at startup.
            unsafe { pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
            return PositionLock::Shared(lock);
        }
        advisory(pg_sys::pg_advisory_lock_int4);
        PositionLock::Advisory
    }
}

fn advisory(f: unsafe fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum) {
    use pgrx::IntoDatum;
    let class = event_store_core::read::feed::POSITIONS_LOCK_CLASS as i32;
    // SAFETY: PostgreSQL's advisory-lock functions, called with two int4 arguments.
    unsafe {
        pgrx::direct_function_call_as_datum(f, &[class.into_datum(), 0i32.into_datum()]);
    }
}

impl Drop for PositionLock {
    fn drop(&mut self) {
        match *self {
            // SAFETY: acquired above by this process.
            PositionLock::Shared(lock) => unsafe { pg_sys::LWLockRelease(lock) },
            PositionLock::Advisory => advisory(pg_sys::pg_advisory_unlock_int4),
        }
    }
}
