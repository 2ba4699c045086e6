//! Event ids: the SQL face of the core crate's UUIDv7 generator.
use event_store_core::append::ids::next_v7;
use pgrx::prelude::*;

/// A new time-ordered UUIDv7 (PostgreSQL 15 has no built-in generator).
#[pg_extern(sql = false)] // declared in sql/schema.sql
fn es_uuidv7() -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(next_v7())
}
