//! The tag keys' watermarks in shared memory, when the library is preloaded (the rule and why
//! it is sound: `event_store_core::dcb`, "Watermarks"). Appends raise them; a condition's check
//! skips reading an item whose watermark settles it.
use crate::pg::shmem::Area;
use event_store_core::dcb::{self, Locks, Mode, WATERMARK_BUCKETS};
use pgrx::pg_sys;
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicPtr, Ordering::SeqCst};

static MARKS: AtomicPtr<AtomicI64> = AtomicPtr::new(std::ptr::null_mut());

pub const AREA: Area = Area {
    name: c"event_store dcb watermarks",
    size: || WATERMARK_BUCKETS * size_of::<AtomicI64>(),
    attach: |p| MARKS.store(p.cast(), SeqCst),
};

fn marks() -> Option<&'static [AtomicI64]> {
    let p = MARKS.load(SeqCst);
    // SAFETY: set at startup to WATERMARK_BUCKETS zeroed atomics that live as long as the server.
    (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p, WATERMARK_BUCKETS) })
}

fn mark(key: u64) -> Option<&'static AtomicI64> {
    // SAFETY: the backend's database, set once it connected.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    marks().map(|m| &m[dcb::watermark_bucket(database, key)])
}

thread_local! {
    /// The session's floor and the sequence it was read from (a new one, after the extension
    /// was dropped and created again, is read again).
    static FLOOR: Cell<Option<(pg_sys::Oid, i64)>> = const { Cell::new(None) };
}

/// Raises the watermark of every key `locks` writes to `last`, the last position the append
/// took. Called with those keys locked, before the append commits.
pub fn raise(locks: &Locks, last: i64) {
    for &(key, mode) in &locks.keys {
        if mode != Mode::Check {
            if let Some(m) = mark(key) {
                m.fetch_max(last, SeqCst);
            }
        }
    }
}

/// Whether no event carrying `tag` came after `after`, as its watermark says (false: it may
/// have, or the library was not preloaded). Called with a key that conflicts with every writer
/// of the events in question locked.
pub fn settled(tag: &str, after: i64) -> bool {
    let Some(m) = mark(dcb::tag_key(tag)) else {
        return false;
    };
    let seq = crate::pg::schema::relation(c"es_global_position_seq");
    let floor = match FLOOR.get() {
        Some((s, floor)) if s == seq => floor,
        _ => {
            let floor = crate::read::feed::seq_last();
            FLOOR.set(Some((seq, floor)));
            floor
        }
    };
    dcb::settled(after, floor, m.load(SeqCst))
}
