//! Settings under `event_store.*`.
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Upper bound on `octet_length(event_data::text) + octet_length(metadata::text)` per event.
pub static MAX_EVENT_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);

pub fn register() {
    GucRegistry::define_int_guc(
        c"event_store.max_event_bytes",
        c"Largest event accepted by es_append, in bytes of event_data plus metadata as text.",
        c"Appends over the limit fail with SQLSTATE 54000 and write nothing.",
        &MAX_EVENT_BYTES,
        1024,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_BYTE,
    );
}
