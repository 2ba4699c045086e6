//! The store's own records (an export, an erasure) in its own streams, which no caller may
//! append to.
use crate::pg::schema::OrRaise;
use event_store_core::stream::system_stream;
use pgrx::prelude::*;

thread_local! {
    /// Set by `_es_record` for the one append it makes: the store's own streams take no other.
    static SYSTEM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Allows the next append into the store's own streams; cleared when dropped, also by an error.
struct SystemAppend;

impl SystemAppend {
    fn allow() -> SystemAppend {
        SYSTEM.set(true);
        SystemAppend
    }
}

impl Drop for SystemAppend {
    fn drop(&mut self) {
        SYSTEM.set(false);
    }
}

/// Appends the store's own record of `kind` (an export, an erasure) to its stream
/// `event_store-<kind>`, which no caller may append to; returns its global position. Granted
/// to nobody: the owner's functions call it.
#[pg_extern(volatile, schema = "_event_store")]
#[search_path(pg_catalog, pg_temp)]
fn _es_record(kind: &str, event_type: &str, event_data: pgrx::JsonB) -> i64 {
    let _allowed = SystemAppend::allow();
    Spi::get_one_with_args::<i64>(
        crate::pg::schema::qualified("SELECT global_position FROM _event_store._es_append($1, $2, $3, '{}'::pg_catalog.jsonb, NULL::pg_catalog.int8, NULL::pg_catalog.uuid, 1)"),
        &[
            system_stream(kind).into(),
            event_type.into(),
            event_data.into(),
        ],
    )
    .or_raise("recording in the store's own stream")
    .unwrap_or_default()
}

/// Whether this append is the one `_es_record` allowed (taken: a second append, by user code
/// running inside it, is not).
pub(super) fn take_system() -> bool {
    SYSTEM.take()
}
