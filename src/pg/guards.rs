//! RAII guards for PostgreSQL resources held across Rust code: released when dropped, also
//! when an error unwinds through them.
use pgrx::pg_sys;

/// A relation (table or index) opened with a lock; closing keeps the lock to the end of the
/// transaction, as a query does.
pub struct Opened(pub pg_sys::Relation);

impl Opened {
    /// # Safety
    /// Inside a transaction; `relid` names a table.
    pub unsafe fn table(relid: pg_sys::Oid, lock: u32) -> Opened {
        // SAFETY: as the caller promises; table_open raises when the relation is gone.
        Opened(unsafe { pg_sys::table_open(relid, lock as i32) })
    }

    /// # Safety
    /// Inside a transaction; `relid` names an index.
    pub unsafe fn index(relid: pg_sys::Oid, lock: u32) -> Opened {
        // SAFETY: as the caller promises.
        Opened(unsafe { pg_sys::index_open(relid, lock as i32) })
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        // SAFETY: opened by `table` or `index`, closed once; relation_close closes both kinds.
        unsafe { pg_sys::relation_close(self.0, pg_sys::NoLock as i32) };
    }
}

/// A heap page pinned (0: none), released when dropped. Whoever locks it unlocks it before
/// any call that can fail.
pub struct Pinned(pub pg_sys::Buffer);

impl Drop for Pinned {
    fn drop(&mut self) {
        if self.0 != 0 {
            // SAFETY: pinned by its owner (ReleaseAndReadBuffer, heap_fetch), released once.
            unsafe { pg_sys::ReleaseBuffer(self.0) };
        }
    }
}

/// A registered snapshot, unregistered when dropped.
pub struct Registered(pub pg_sys::Snapshot);

impl Registered {
    /// # Safety
    /// `snapshot` is a valid snapshot (from GetLatestSnapshot, GetTransactionSnapshot...).
    pub unsafe fn new(snapshot: pg_sys::Snapshot) -> Registered {
        // SAFETY: as the caller promises.
        Registered(unsafe { pg_sys::RegisterSnapshot(snapshot) })
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        // SAFETY: registered by `new`, unregistered once.
        unsafe { pg_sys::UnregisterSnapshot(self.0) };
    }
}

/// An index scan, ended when dropped.
pub struct IndexScan(pub pg_sys::IndexScanDesc);

impl Drop for IndexScan {
    fn drop(&mut self) {
        // SAFETY: begun with index_beginscan by the owner of this guard, ended once.
        unsafe { pg_sys::index_endscan(self.0) };
    }
}

/// A table scan, ended when dropped.
pub struct TableScan(pub pg_sys::TableScanDesc);

impl Drop for TableScan {
    fn drop(&mut self) {
        // SAFETY: begun with table_beginscan_catalog by the owner of this guard, ended once.
        unsafe { pg_sys::table_endscan(self.0) };
    }
}

/// A tuple slot of a table's row type, dropped (and its buffer pin released) when dropped.
pub struct Slot(pub *mut pg_sys::TupleTableSlot);

impl Slot {
    /// # Safety
    /// `rel` is an open table.
    pub unsafe fn of(rel: pg_sys::Relation) -> Slot {
        // SAFETY: as the caller promises; the slot lives in the current memory context.
        Slot(unsafe { pg_sys::table_slot_create(rel, std::ptr::null_mut()) })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: created by `of`, dropped once.
        unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.0) };
    }
}

/// `f`, its queries reading as of now rather than as of the statement's snapshot (a change
/// committed while the caller waited for a lock is seen; the transaction's own changes too).
/// In parallel mode no snapshot may be taken: `f` reads as of the active one.
pub fn as_of_now<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: reads a flag of the backend.
    if unsafe { pg_sys::IsInParallelMode() } {
        return f();
    }
    // SAFETY: the latest snapshot, active for `f` only. An error in `f` leaves it pushed: the
    // (sub)transaction's abort pops it.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot()) };
    let result = f();
    // SAFETY: pops the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    result
}

/// A memory context of the caller's own (a child of the current one), deleted when dropped.
pub struct OwnedContext(pub pg_sys::MemoryContext);

impl OwnedContext {
    pub fn new(name: &'static std::ffi::CStr) -> OwnedContext {
        // SAFETY: a child of the current context, with a static name; deleted on drop.
        OwnedContext(unsafe {
            pg_sys::AllocSetContextCreateInternal(
                pg_sys::CurrentMemoryContext,
                name.as_ptr(),
                0,
                8 * 1024,
                8 * 1024 * 1024,
            )
        })
    }

    /// Frees what was allocated in it.
    pub fn reset(&self) {
        // SAFETY: a context created by `new`, not deleted yet.
        unsafe {
            if !(*self.0).isReset {
                pg_sys::MemoryContextReset(self.0);
            }
        }
    }
}

impl Drop for OwnedContext {
    fn drop(&mut self) {
        // SAFETY: created by `new`, not current (a `Switched` into it is dropped first).
        unsafe { pg_sys::MemoryContextDelete(self.0) };
    }
}

/// Allocations go to `0` until dropped, then to the context that was current before.
pub struct Switched(pg_sys::MemoryContext);

impl Switched {
    pub fn to(context: &OwnedContext) -> Self {
        // SAFETY: a plain global PostgreSQL reads on every palloc; restored on drop.
        unsafe {
            let caller = pg_sys::CurrentMemoryContext;
            pg_sys::CurrentMemoryContext = context.0;
            Switched(caller)
        }
    }
}

impl Drop for Switched {
    fn drop(&mut self) {
        // SAFETY: see `to`.
        unsafe { pg_sys::CurrentMemoryContext = self.0 };
    }
}
