//! `NOTIFY event_store`, payload the highest position committed.
//!
//! A notifying commit holds PostgreSQL's cluster-wide notify-queue lock across its WAL flush,
//! so notifying appends stop sharing group commit. With the library preloaded, appends never
//! notify themselves: their commits hand the highest position to the database's projection
//! workers, which send one NOTIFY for every commit since their last
//! (src/projections/pool.rs). Otherwise each append notifies at its own commit.
use pgrx::{pg_sys, IntoDatum};

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
