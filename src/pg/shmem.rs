//! Shared memory, when the library is preloaded: the appends in flight that hold the feed's
//! horizon (one slot per backend, written only by its own backend through `es_append`, so no
//! role can fake one), the lock positions are taken under, and the areas other capabilities
//! ask for (the projection workers' pool, src/projections/pool.rs).
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::sync::atomic::{fence, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};

/// A named area of shared memory another module owns: `attach` receives its address in every
/// process, zeroed when the server started (so all-atomic structs start at 0).
pub struct Area {
    pub name: &'static std::ffi::CStr,
    pub size: fn() -> usize,
    pub attach: fn(*mut u8),
}

#[repr(C)]
struct Slot {
    /// The lowest position the backend's transaction may still commit, plus one; 0 = none.
    registered: AtomicI64,
    database: AtomicU32,
    pid: AtomicI32,
    since: AtomicI64,
    /// Where the WAL of the last commit that released this slot ends (src/read/replication.rs).
    committed: AtomicU64,
}

#[repr(C)]
struct Header {
    _reserved: AtomicI64,
    // followed by one Slot per backend id (1..=MaxBackends)
}

static SHARED: AtomicPtr<Header> = AtomicPtr::new(std::ptr::null_mut());
/// The lock under which an append takes a block of consecutive positions.
static POSITIONS: AtomicPtr<pg_sys::LWLock> = AtomicPtr::new(std::ptr::null_mut());
const POSITIONS_TRANCHE: &std::ffi::CStr = c"event_store positions";
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;
static AREAS: std::sync::OnceLock<&'static [Area]> = std::sync::OnceLock::new();

fn areas() -> &'static [Area] {
    AREAS.get().copied().unwrap_or_default()
}

fn size() -> usize {
    // SAFETY: MaxBackends is final when shared memory is requested.
    let backends = unsafe { pg_sys::MaxBackends } as usize;
    size_of::<Header>() + (backends + 1) * size_of::<Slot>()
}

/// Called from `_PG_init` while preloading, with the areas other modules own.
pub fn init(areas: &'static [Area]) {
    // SAFETY: hooks are chained once, in the postmaster, before any backend starts.
    unsafe {
        let _ = AREAS.set(areas);
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
        for area in areas() {
            pg_sys::RequestAddinShmemSpace((area.size)());
        }
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
        let zeroed = |name: &std::ffi::CStr, size: usize| {
            let mut found = false;
            let p = pg_sys::ShmemInitStruct(name.as_ptr(), size, &mut found);
            if !found {
                std::ptr::write_bytes(p.cast::<u8>(), 0, size);
            }
            p.cast::<u8>()
        };
        let p = zeroed(c"event_store", size());
        let addresses: Vec<*mut u8> = areas().iter().map(|a| zeroed(a.name, (a.size)())).collect();
        pg_sys::LWLockRelease(lock);
        SHARED.store(p.cast(), Ordering::SeqCst);
        for (area, p) in areas().iter().zip(addresses) {
            (area.attach)(p);
        }
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

/// Ends the registration; `commit_end` is where the WAL of its commit ends, when it committed
/// (kept first: a reader that finds the slot free then finds the commit too).
pub fn release(commit_end: Option<u64>) {
    if let Some(h) = header() {
        // SAFETY: the backend's own slot.
        let slot = unsafe { &slots(h)[pg_sys::MyBackendId as usize] };
        if let Some(lsn) = commit_end {
            slot.committed.fetch_max(lsn, Ordering::SeqCst);
        }
        slot.registered.store(0, Ordering::SeqCst);
    }
}

/// The latest end of a committed append's WAL since the server started, in any database.
pub fn latest_commit() -> u64 {
    let Some(h) = header() else { return 0 };
    slots(h)
        .iter()
        .map(|s| s.committed.load(Ordering::SeqCst))
        .max()
        .unwrap_or(0)
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
