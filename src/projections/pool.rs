//! The projection workers' pool in shared memory, when the library is preloaded: one entry per
//! database (whether it has event_store, what work waits there, announcements owed to its
//! listeners, when it was last served) and one per pool slot (the worker's database, whether it
//! is inside a batch, whether it was asked to give its slot back). Appending backends write
//! what their commits owe and set a latch; the launcher (launcher.rs) plans from it; workers
//! (worker.rs) take their work from it. Every field is an atomic: no lock is held by a commit.
use crate::pg::settings;
use crate::pg::shmem::Area;
use event_store_core::projections::pool as plan;
use pgrx::prelude::*;
use pgrx::{pg_sys, register_xact_callback, PgXactCallbackEvent};
use std::cell::Cell;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64};

const MAX_WORKERS: usize = settings::MAX_WORKERS_BOUND;
/// Databases tracked at once; a database beyond them notifies at its own commits and is served
/// by no worker (the launcher warns).
pub const MAX_DATABASES: usize = 512;
/// A worker inside one batch for longer than this counts as busy: its database gets another
/// worker for the work that arrives meanwhile.
pub const BUSY_AFTER: i64 = 100_000;

const UNKNOWN: u32 = 0;
const ABSENT: u32 = 1;
const PRESENT: u32 = 2;

#[repr(C)]
struct Database {
    /// Written by the launcher only (0 = free entry).
    oid: AtomicU32,
    known: AtomicU32,
    /// Whether it has projections to run: commits ask for a pass only then.
    active: AtomicBool,
    /// A pass was asked for (a commit, a new, resumed or rebuilt projection, a policy set).
    wanted: AtomicBool,
    /// Projection management asked for it: the retention policy may be due too.
    fresh: AtomicBool,
    /// The highest position committed appends asked to be announced with NOTIFY.
    notify: AtomicI64,
    /// How many commits asked, and how many a worker has announced: a commit below the highest
    /// position (it took its position before another that committed first) still needs its
    /// own NOTIFY, since a listener woken earlier stopped below it.
    commits: AtomicU64,
    announced: AtomicU64,
    /// When a pass is due without any commit (a retry, the retention policy); 0 = none.
    next_due: AtomicI64,
    /// Since when it has waited for a worker; 0 = not waiting.
    waiting_since: AtomicI64,
    /// The launcher could not start a worker for it: max_worker_processes is used up.
    no_slot: AtomicBool,
    /// ... and said so in the log, once until it is served.
    warned: AtomicBool,
    last_pass: AtomicI64,
}

#[repr(C)]
struct Worker {
    database: AtomicU32,
    /// PGPROC number + 1; 0 while the slot is free.
    procno: AtomicI32,
    since: AtomicI64,
    /// When its current batch began; 0 between batches.
    busy_since: AtomicI64,
    /// Asked to give its slot back after its current batch.
    leave: AtomicBool,
    /// Its last pass applied events: more may wait, for whoever comes next.
    more: AtomicBool,
}

#[repr(C)]
struct Pool {
    launcher_procno: AtomicI32,
    /// A backend found no entry for its database: the launcher reads pg_database now.
    rescan: AtomicBool,
    databases: [Database; MAX_DATABASES],
    workers: [Worker; MAX_WORKERS],
}

static POOL: AtomicPtr<Pool> = AtomicPtr::new(std::ptr::null_mut());

pub const AREA: Area = Area {
    name: c"event_store pool",
    size: size_of::<Pool>,
    attach: |p| POOL.store(p.cast(), SeqCst),
};

fn pool() -> Option<&'static Pool> {
    // SAFETY: set at startup to shared memory that lives as long as the server, zeroed then.
    unsafe { POOL.load(SeqCst).as_ref() }
}

/// Whether the library was preloaded: then workers serve the databases.
pub fn available() -> bool {
    pool().is_some()
}

pub fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn own_database_id() -> u32 {
    // SAFETY: the backend's database, set once it connected.
    unsafe { pg_sys::MyDatabaseId }.into()
}

fn own_procno() -> i32 {
    // SAFETY: MyProc is set for every process that uses the pool.
    unsafe { (*pg_sys::MyProc).pgprocno }
}

/// Sets the latch of the process with PGPROC number + 1 `procno` (0: nobody).
fn set_latch(procno: i32) {
    if procno <= 0 {
        return;
    }
    // SAFETY: ProcGlobal->allProcs has an entry per PGPROC number, and latches in PGPROC are
    // shared: any process may set another's.
    unsafe {
        let proc = (*pg_sys::ProcGlobal).allProcs.add(procno as usize - 1);
        pg_sys::SetLatch(&raw mut (*proc).procLatch);
    }
}

thread_local! {
    /// Where this backend's database was last found in the pool.
    static OWN: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn database(p: &'static Pool, oid: u32) -> Option<(usize, &'static Database)> {
    let cached = OWN.get();
    if let Some(d) = p
        .databases
        .get(cached)
        .filter(|d| d.oid.load(SeqCst) == oid)
    {
        return Some((cached, d));
    }
    let i = p.databases.iter().position(|d| d.oid.load(SeqCst) == oid)?;
    OWN.set(i);
    Some((i, &p.databases[i]))
}

fn own_database() -> Option<&'static Database> {
    let p = pool()?;
    database(p, own_database_id()).map(|(_, d)| d)
}

fn wake_launcher(p: &Pool) {
    set_latch(p.launcher_procno.load(SeqCst));
}

/// The workers connected to database `db`.
fn connected(p: &Pool, db: u32) -> impl Iterator<Item = &Worker> {
    p.workers
        .iter()
        .filter(move |w| w.database.load(SeqCst) == db && w.procno.load(SeqCst) > 0)
}

/// Wakes a worker of `db` that is between batches, or else the launcher (which starts one).
fn wake(p: &Pool, db: u32) {
    match connected(p, db).find(|w| w.busy_since.load(SeqCst) == 0) {
        Some(w) => set_latch(w.procno.load(SeqCst)),
        None => wake_launcher(p),
    }
}

// ---- Backends: what a commit owes.

#[derive(Clone, Copy, Default)]
struct Owed {
    /// The highest position to announce with NOTIFY.
    announce: Option<i64>,
    /// A pass is wanted even if the database has no projection running yet.
    fresh: bool,
    /// An append: a pass is wanted if the database has projections running.
    appended: bool,
}

thread_local! {
    static OWED: Cell<Option<Owed>> = const { Cell::new(None) };
}

/// Records what this transaction's commit owes the pool; handed over when it commits.
fn owe(update: impl FnOnce(&mut Owed)) {
    let pending = OWED.get();
    let mut owed = pending.unwrap_or_default();
    update(&mut owed);
    OWED.set(Some(owed));
    if pending.is_none() {
        register_xact_callback(PgXactCallbackEvent::Commit, || {
            if let Some(owed) = OWED.take() {
                committed(owed);
            }
        });
        register_xact_callback(PgXactCallbackEvent::Abort, || OWED.set(None));
    }
}

/// Runs once the commit is visible.
fn committed(owed: Owed) {
    let Some(p) = pool() else { return };
    let oid = own_database_id();
    let Some((_, d)) = database(p, oid) else {
        p.rescan.store(true, SeqCst);
        wake_launcher(p);
        return;
    };
    d.known.store(PRESENT, SeqCst);
    if let Some(position) = owed.announce {
        d.notify.fetch_max(position, SeqCst);
        d.commits.fetch_add(1, SeqCst);
    }
    let pass = owed.fresh || (owed.appended && d.active.load(SeqCst));
    if owed.fresh {
        d.fresh.store(true, SeqCst);
    }
    if pass {
        d.wanted.store(true, SeqCst);
    }
    if pass || owed.announce.is_some() {
        wake(p, oid);
    }
}

/// Called once per append with its highest position. With the library preloaded, its commit
/// hands the announcement to this database's workers, which send one NOTIFY for every commit
/// since their last (a notifying commit would hold PostgreSQL's cluster-wide notify-queue lock
/// across its WAL flush), and asks for a projection pass. Otherwise, or for a database the pool
/// has not seen yet, the append notifies at its own commit.
pub fn appended(last_position: i64) {
    let notify = settings::NOTIFY.get();
    if own_database().is_none() {
        if notify {
            crate::read::notify::send(last_position);
        }
        if let Some(p) = pool() {
            p.rescan.store(true, SeqCst);
            wake_launcher(p);
        }
        return;
    }
    owe(|o| {
        o.appended = true;
        if notify {
            o.announce = Some(o.announce.map_or(last_position, |p| p.max(last_position)));
        }
    });
}

/// Asks for a projection pass in this database when the transaction commits: projection
/// management calls it so that a new, resumed or rebuilt projection (or a retention policy)
/// starts at once, whether or not a worker is connected.
#[pg_extern(volatile, parallel_unsafe, schema = "_event_store")]
pub fn _es_wake_projections(fresh: default!(bool, false)) {
    if available() {
        owe(|o| o.fresh |= fresh);
    }
}

/// This database's worker state, for es_projections and the metrics: `serving` (a worker is
/// connected), `idle` (no work waits; a worker starts when some comes), `waiting` (work
/// waits for a pool slot), `no worker slot` (max_worker_processes is used up), `standby`
/// (projections run on the primary) or `not preloaded` (no worker: call es_run_projections
/// from a scheduler). `since`: when that state began (for `idle`, the last pass).
#[pg_extern(volatile, parallel_safe, schema = "_event_store")]
fn _es_worker_state() -> TableIterator<
    'static,
    (
        name!(state, String),
        name!(since, Option<TimestampWithTimeZone>),
        name!(last_pass, Option<TimestampWithTimeZone>),
        name!(workers, i32),
    ),
> {
    let at = |t: i64| {
        (t != 0)
            .then(|| TimestampWithTimeZone::try_from(t).ok())
            .flatten()
    };
    // SAFETY: reads this server's recovery state.
    let row = if unsafe { pg_sys::RecoveryInProgress() } {
        ("standby".into(), None, None, 0)
    } else if let Some(p) = pool() {
        let oid = own_database_id();
        let serving: Vec<i64> = connected(p, oid).map(|w| w.since.load(SeqCst)).collect();
        let (waiting, no_slot, last) = database(p, oid).map_or((0, false, 0), |(_, d)| {
            (
                d.waiting_since.load(SeqCst),
                d.no_slot.load(SeqCst),
                d.last_pass.load(SeqCst),
            )
        });
        let (state, since) = if let Some(first) = serving.iter().min() {
            ("serving", *first)
        } else if no_slot {
            ("no worker slot", waiting)
        } else if waiting != 0 {
            ("waiting", waiting)
        } else {
            ("idle", last)
        };
        (state.into(), at(since), at(last), serving.len() as i32)
    } else {
        ("not preloaded".into(), None, None, 0)
    };
    TableIterator::once(row)
}

// ---- The launcher.

pub fn register_launcher() {
    if let Some(p) = pool() {
        p.launcher_procno.store(own_procno() + 1, SeqCst);
    }
}

/// Whether a backend asked for pg_database to be read again.
pub fn take_rescan() -> bool {
    pool().is_some_and(|p| p.rescan.swap(false, SeqCst))
}

/// Keeps one entry per database in `oids` (new ones start unknown); frees the others. Returns
/// the databases that got no entry (the pool is full).
pub fn track(oids: &[u32]) -> Vec<u32> {
    let Some(p) = pool() else { return vec![] };
    for d in &p.databases {
        let oid = d.oid.load(SeqCst);
        if oid != 0 && !oids.contains(&oid) {
            d.oid.store(0, SeqCst);
        }
    }
    let mut untracked = vec![];
    for &oid in oids {
        if p.databases.iter().any(|d| d.oid.load(SeqCst) == oid) {
            continue;
        }
        match p.databases.iter().find(|d| d.oid.load(SeqCst) == 0) {
            Some(d) => {
                d.known.store(UNKNOWN, SeqCst);
                d.active.store(true, SeqCst);
                d.wanted.store(false, SeqCst);
                d.fresh.store(false, SeqCst);
                d.notify.store(0, SeqCst);
                d.commits.store(0, SeqCst);
                d.announced.store(0, SeqCst);
                d.next_due.store(0, SeqCst);
                d.waiting_since.store(0, SeqCst);
                d.no_slot.store(false, SeqCst);
                d.warned.store(false, SeqCst);
                d.last_pass.store(0, SeqCst);
                d.oid.store(oid, SeqCst);
            }
            None => untracked.push(oid),
        }
    }
    untracked
}

/// Whether commits wait to be announced.
fn owed(d: &Database) -> bool {
    d.commits.load(SeqCst) != d.announced.load(SeqCst)
}

fn demand(d: &Database, now: i64) -> bool {
    let due = d.next_due.load(SeqCst);
    d.wanted.load(SeqCst) || owed(d) || (due != 0 && due <= now)
}

/// The pool as the planner sees it. `started(db)`: workers the launcher started for the
/// database that have not exited (some may not have connected yet).
pub fn snapshot(
    now: i64,
    started: impl Fn(u32) -> usize,
) -> (Vec<plan::Database>, Vec<plan::Worker>) {
    let Some(p) = pool() else {
        return (vec![], vec![]);
    };
    let workers: Vec<plan::Worker> = p
        .workers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.procno.load(SeqCst) > 0)
        .map(|(slot, w)| {
            let busy = w.busy_since.load(SeqCst);
            plan::Worker {
                slot,
                database: w.database.load(SeqCst),
                tenure: now - w.since.load(SeqCst),
                idle: busy == 0,
                leaving: w.leave.load(SeqCst),
            }
        })
        .collect();
    let databases = p
        .databases
        .iter()
        .filter(|d| d.oid.load(SeqCst) != 0)
        .map(|d| {
            let id = d.oid.load(SeqCst);
            let busy = connected(p, id)
                .filter(|w| {
                    let b = w.busy_since.load(SeqCst);
                    b != 0 && now - b >= BUSY_AFTER
                })
                .count();
            let waiting = d.waiting_since.load(SeqCst);
            plan::Database {
                id,
                known: match d.known.load(SeqCst) {
                    PRESENT => plan::Known::Present,
                    ABSENT => plan::Known::Absent,
                    _ => plan::Known::Unknown,
                },
                demand: demand(d, now),
                workers: started(id),
                busy,
                waiting_since: (waiting != 0).then_some(waiting),
            }
        })
        .collect();
    (databases, workers)
}

/// Marks the databases of `waiting` as waiting since `now` (unless they already were), and
/// every other as not waiting.
pub fn set_waiting(waiting: &[u32], now: i64) {
    let Some(p) = pool() else { return };
    for d in &p.databases {
        let oid = d.oid.load(SeqCst);
        if oid == 0 {
            continue;
        }
        if waiting.contains(&oid) {
            let _ = d.waiting_since.compare_exchange(0, now, SeqCst, SeqCst);
        } else if connected(p, oid).next().is_some() || !demand(d, now) {
            d.waiting_since.store(0, SeqCst);
            d.no_slot.store(false, SeqCst);
            d.warned.store(false, SeqCst);
        }
    }
}

/// The launcher could not start a worker for `db`. True when it should warn: the first time
/// since the database was last served that it has event_store and no worker at all.
pub fn no_slot(db: u32, now: i64, unserved: bool) -> bool {
    let Some(d) = pool().and_then(|p| database(p, db)).map(|(_, d)| d) else {
        return false;
    };
    let _ = d.waiting_since.compare_exchange(0, now, SeqCst, SeqCst);
    d.no_slot.store(true, SeqCst);
    unserved && d.known.load(SeqCst) == PRESENT && !d.warned.swap(true, SeqCst)
}

pub fn ask_to_leave(slot: usize) {
    if let Some(w) = pool().map(|p| &p.workers[slot]) {
        w.leave.store(true, SeqCst);
        set_latch(w.procno.load(SeqCst));
    }
}

/// The earliest time any database has a pass due without a commit (0: none).
pub fn next_due() -> i64 {
    pool().map_or(0, |p| {
        p.databases
            .iter()
            .filter(|d| d.oid.load(SeqCst) != 0)
            .map(|d| d.next_due.load(SeqCst))
            .filter(|t| *t != 0)
            .min()
            .unwrap_or(0)
    })
}

// ---- Workers.

/// The pool entry of a connected worker: its slot, freed when the process exits.
pub struct Slot {
    worker: &'static Worker,
    db: &'static Database,
}

/// Records whether the worker's database has event_store.
pub fn set_known(present: bool) {
    if let Some(d) = own_database() {
        d.known
            .store(if present { PRESENT } else { ABSENT }, SeqCst);
    }
}

/// Takes a pool slot for this worker (None when its database has no entry or every slot is
/// taken, which the launcher's bound prevents).
pub fn register_worker() -> Option<Slot> {
    let p = pool()?;
    let db = own_database()?;
    let oid = own_database_id();
    let index = p.workers.iter().position(|w| {
        w.procno.load(SeqCst) == 0 && w.database.compare_exchange(0, oid, SeqCst, SeqCst).is_ok()
    })?;
    let w = &p.workers[index];
    w.since.store(now(), SeqCst);
    w.busy_since.store(0, SeqCst);
    w.leave.store(false, SeqCst);
    w.more.store(false, SeqCst);
    w.procno.store(own_procno() + 1, SeqCst);
    db.waiting_since.store(0, SeqCst);
    db.no_slot.store(false, SeqCst);
    db.warned.store(false, SeqCst);
    // SAFETY: a callback run at process exit, before shared memory is detached.
    unsafe { pg_sys::before_shmem_exit(Some(unregister_worker), pg_sys::Datum::from(index)) };
    Some(Slot { worker: w, db })
}

/// # Safety
/// Called by PostgreSQL at process exit, with the slot index registered above.
#[pg_guard]
unsafe extern "C-unwind" fn unregister_worker(_code: i32, slot: pg_sys::Datum) {
    if let Some(p) = pool() {
        let w = &p.workers[slot.value()];
        // Leaving inside a batch (terminated) or after one that applied events (asked to give
        // way): its database may still have work, which the next worker looks for.
        if w.busy_since.load(SeqCst) != 0 || w.more.load(SeqCst) {
            if let Some((_, d)) = database(p, w.database.load(SeqCst)) {
                d.wanted.store(true, SeqCst);
            }
        }
        w.procno.store(0, SeqCst);
        w.busy_since.store(0, SeqCst);
        w.database.store(0, SeqCst);
        // Work that came while it was leaving is the launcher's to hand on.
        wake_launcher(p);
    }
}

impl Slot {
    /// Whether a pass was asked for since the last call, and whether projection management
    /// (or es_set_retention) asked.
    pub fn take_wanted(&self) -> (bool, bool) {
        (
            self.db.wanted.swap(false, SeqCst),
            self.db.fresh.swap(false, SeqCst),
        )
    }

    /// Whether work waits (a pass asked for, announcements owed, a pass due).
    pub fn demand(&self) -> bool {
        demand(self.db, now())
    }

    /// Whether commits wait to be announced.
    pub fn announcement_owed(&self) -> bool {
        owed(self.db)
    }

    /// The announcement owed, claimed by this worker: the highest position committed. None
    /// when nothing is owed or another worker of the database claimed it.
    pub fn claim_announcement(&self) -> Option<i64> {
        let commits = self.db.commits.load(SeqCst);
        let announced = self.db.announced.load(SeqCst);
        let position = self.db.notify.load(SeqCst);
        (commits != announced
            && self
                .db
                .announced
                .compare_exchange(announced, commits, SeqCst, SeqCst)
                .is_ok())
        .then_some(position)
    }

    pub fn set_busy(&self, busy: bool) {
        self.worker
            .busy_since
            .store(if busy { now() } else { 0 }, SeqCst);
    }

    /// Whether the launcher asked this worker to give its slot to a database that waits.
    pub fn asked_to_leave(&self) -> bool {
        self.worker.leave.load(SeqCst)
    }

    /// Whether the pass under way or just ended applied events.
    pub fn applied(&self, more: bool) {
        self.worker.more.store(more, SeqCst);
    }

    /// After a pass: whether the database has projections to run, and when a pass is next due
    /// without a commit (0: only when one asks).
    pub fn passed(&self, active: bool, next_due: i64) {
        self.db.active.store(active, SeqCst);
        self.db.next_due.store(next_due, SeqCst);
        self.db.last_pass.store(now(), SeqCst);
    }
}
