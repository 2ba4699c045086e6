//! The feed stops at what synchronous replication guarantees (core/src/read/replication.rs):
//! with `synchronous_standby_names` set, `_es_feed_horizon` serves no position whose commit
//! the synchronous standbys have not confirmed at the level `synchronous_commit` is configured
//! for, whatever the committing session set. An append whose wait for the standbys was
//! cancelled, or that committed with `synchronous_commit = local`, is visible on the primary
//! at once; a failover would erase it and hand its position out again, so no reader may see
//! it first. Preloaded, the marks live in shared memory and the latest commit is known from
//! the appends' own records; otherwise each session keeps its own marks against the WAL
//! insert position (a new session then starts from the published horizon).
use crate::pg::schema;
use crate::pg::shmem::{self, Area};
use event_store_core::read::replication::{wait_mode, Marks};
use pgrx::pg_sys;
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::SeqCst};

const DATABASES: usize = 64;

#[repr(C)]
struct Entry {
    /// The database and its position sequence (a new one after DROP and CREATE EXTENSION).
    database: u32,
    sequence: u32,
    marks: Marks,
}

#[repr(C)]
struct Shared {
    /// A WAL position at or after the end of recovery (the server's start or promotion): any
    /// commit before it may be unconfirmed, and nothing in memory says which.
    recovered: AtomicU64,
    lock: AtomicBool,
    entries: UnsafeCell<[Entry; DATABASES]>,
}

static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());

pub const AREA: Area = Area {
    name: c"event_store replication",
    size: size_of::<Shared>,
    attach: |p| SHARED.store(p.cast(), SeqCst),
};

/// Holds the entries' lock: a spin lock, held for a few comparisons only (no allocation, no
/// error, no call into PostgreSQL while held).
struct Locked(&'static Shared);

impl Locked {
    fn new(s: &'static Shared) -> Locked {
        while s
            .lock
            .compare_exchange_weak(false, true, SeqCst, SeqCst)
            .is_err()
        {
            std::hint::spin_loop();
        }
        Locked(s)
    }

    fn entry(&mut self, database: u32, sequence: u32) -> Option<&mut Entry> {
        // SAFETY: the lock is held; the memory lives as long as the server.
        let entries = unsafe { &mut *self.0.entries.get() };
        entries
            .iter_mut()
            .find(|e| e.database == database && e.sequence == sequence)
    }

    /// The entry of `database`'s `sequence`, made from `confirmed` where there is none yet (in
    /// a free entry, or one of a sequence dropped since); `None` when every entry is taken.
    fn entry_or_new(&mut self, database: u32, sequence: u32, confirmed: i64) -> Option<&mut Entry> {
        if self.entry(database, sequence).is_none() {
            // SAFETY: as above.
            let entries = unsafe { &mut *self.0.entries.get() };
            *entries
                .iter_mut()
                .find(|e| e.database == 0 || e.database == database)? = Entry {
                database,
                sequence,
                marks: Marks::from(confirmed),
            };
        }
        self.entry(database, sequence)
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        self.0.lock.store(false, SeqCst);
    }
}

fn shared() -> Option<&'static Shared> {
    // SAFETY: set at startup to zeroed shared memory that lives as long as the server.
    unsafe { SHARED.load(SeqCst).as_ref() }
}

thread_local! {
    /// Not preloaded: this session's marks, for the position sequence they were made for.
    static OWN: Cell<Option<(u32, Marks)>> = const { Cell::new(None) };
}

/// Whether synchronous standbys are configured.
pub fn active() -> bool {
    // SAFETY: reads a GUC's string, valid for the backend's life or until the next reload.
    unsafe {
        let names = pg_sys::SyncRepStandbyNames;
        !names.is_null() && *names != 0 && pg_sys::max_wal_senders > 0
    }
}

/// The WAL position the synchronous standbys confirmed at the configured level, as the
/// primary released its waiting commits (0 before any confirmed since the server started).
fn synced() -> u64 {
    // SAFETY: the configured value of a GUC (not a session's SET), copied before the next call.
    let level = unsafe {
        let s = pg_sys::GetConfigOptionResetString(c"synchronous_commit".as_ptr());
        std::ffi::CStr::from_ptr(s).to_str().unwrap_or("on")
    };
    let mode = wait_mode(level);
    // SAFETY: WalSndCtl is set up with shared memory; the LSNs are aligned 64-bit words,
    // written under SyncRepLock and read whole here (a stale value only holds the feed back).
    unsafe {
        let ctl = pg_sys::WalSndCtl;
        if ctl.is_null() {
            return 0;
        }
        std::ptr::read_volatile(&raw const (*ctl).lsn[mode])
    }
}

/// Notes where this server's WAL stood when it began to take writes (the launcher calls it
/// as it starts after recovery or promotion; the first horizon does if it came first).
pub fn started() {
    if let Some(s) = shared() {
        recovered(s);
    }
}

fn recovered(s: &Shared) -> u64 {
    if s.recovered.load(SeqCst) == 0 {
        // SAFETY: reads the WAL insert position.
        let now = unsafe { pg_sys::GetXLogInsertRecPtr() };
        let _ = s.recovered.compare_exchange(0, now, SeqCst, SeqCst);
    }
    s.recovered.load(SeqCst)
}

/// How far the feed may be served, given `horizon`, where it is settled. Call on a primary.
pub fn bound(horizon: i64) -> i64 {
    if !active() {
        return horizon;
    }
    let synced = synced();
    let sequence: u32 = schema::relation(c"es_global_position_seq").into();
    let Some(s) = shared() else {
        // SAFETY: reads the WAL insert position, which every commit below the horizon precedes.
        let latest = unsafe { pg_sys::GetXLogInsertRecPtr() };
        let mut marks = match OWN.get() {
            Some((seq, marks)) if seq == sequence => marks,
            _ => Marks::from(published()),
        };
        let bound = marks.observe(horizon, latest, synced);
        OWN.set(Some((sequence, marks)));
        return bound;
    };
    // Read after the horizon: every append up to it released its registration, so its
    // commit's end is among these.
    let latest = shmem::latest_commit().max(recovered(s));
    // SAFETY: the backend's database.
    let database: u32 = unsafe { pg_sys::MyDatabaseId }.into();
    if let Some(e) = Locked::new(s).entry(database, sequence) {
        return e.marks.observe(horizon, latest, synced);
    }
    // First use since the server started here: start from the horizon last published, which
    // this bound produced.
    let published = published();
    Locked::new(s)
        .entry_or_new(database, sequence, published)
        .map_or(published.min(horizon), |e| {
            e.marks.observe(horizon, latest, synced)
        })
}

/// The horizon the primary last published (es_publish_feed_horizon). On a standby it is the
/// horizon: the primary's appends in flight are invisible there, and this row's commit follows
/// every commit below it in the WAL, so the standby has replayed them all once it sees it. On a
/// primary it is where the bound starts after a restart or promotion (it was bounded itself).
pub fn published() -> i64 {
    schema::select_one::<i64>(schema::qualified(
        "SELECT horizon FROM _event_store.es_feed_published",
    ))
    .unwrap_or(0)
}
