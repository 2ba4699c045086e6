//! Per-backend caches over relations (the event catalog, which chunk holds an instant,
//! compiled constraints): a generation that moves whenever the relation cache entry of a
//! watched relation, or of every relation, is invalidated. A cache notes the generation it was
//! built at and starts over when it has moved.
use pgrx::pg_sys;
use std::cell::{Cell, RefCell};

thread_local! {
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    static WATCHED: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
}

/// Relation cache invalidation callback. Never raises.
unsafe extern "C-unwind" fn invalidated(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let hit = relid == pg_sys::InvalidOid
        || WATCHED.with(|w| w.try_borrow().map_or(true, |w| w.contains(&relid)));
    if hit {
        GENERATION.set(GENERATION.get().wrapping_add(1));
    }
}

/// Once per backend, when the library loads.
pub fn register() {
    // SAFETY: registers a callback that only counts, valid for the backend's life.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(invalidated), pg_sys::Datum::from(0)) }
}

/// The current generation.
pub fn generation() -> u64 {
    GENERATION.get()
}

/// Moves the generation when `relid`'s entry is invalidated from now on.
pub fn watch(relid: pg_sys::Oid) {
    WATCHED.with(|w| {
        let mut w = w.borrow_mut();
        if !w.contains(&relid) {
            w.push(relid);
        }
    });
}
