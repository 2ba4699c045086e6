//! `NOTIFY event_store` after appends commit, payload the highest position committed.
//!
//! A notifying commit holds PostgreSQL's cluster-wide notify-queue lock across its WAL flush,
//! so notifying appends stop sharing group commit. When the library is preloaded and the
//! database has its worker, an append only records its highest position; its commit hands
//! that to the worker, which sends one NOTIFY for every commit since its last one
//! (src/projections/worker.rs). Otherwise each append notifies at its own commit.
use crate::pg::{settings, shmem};
use pgrx::{pg_sys, register_xact_callback, IntoDatum, PgXactCallbackEvent};
use std::cell::Cell;

thread_local! {
    /// The highest position this transaction appended, while the worker is to announce it.
    static PENDING: Cell<Option<i64>> = const { Cell::new(None) };
}

/// Called once per append with its highest position.
pub fn appended(last_position: i64) {
    if !settings::NOTIFY.get() {
        return;
    }
    if shmem::has_worker() {
        let pending = PENDING.get();
        PENDING.set(Some(
            pending.map_or(last_position, |p| p.max(last_position)),
        ));
        if pending.is_none() {
            register_xact_callback(PgXactCallbackEvent::Commit, || {
                // Runs once the commit is visible. Should the worker be gone meanwhile (the
                // server stopping), a listener learns of these events at the next commit.
                if let Some(p) = PENDING.take() {
                    shmem::announce(p);
                }
            });
            register_xact_callback(PgXactCallbackEvent::Abort, || PENDING.set(None));
        }
        return;
    }
    send(last_position);
}

/// `pg_notify('event_store', position)`: delivered when the calling transaction commits.
pub fn send(position: i64) {
    // SAFETY: PostgreSQL's pg_notify(text, text); it copies both into its own memory.
    unsafe {
        pgrx::direct_function_call::<()>(
            pg_sys::pg_notify,
            &[
                "event_store".into_datum(),
                position.to_string().into_datum(),
            ],
        );
    }
}
