//! event_store's logic without PostgreSQL, one folder per capability as in the extension
//! crate (`src/`, its thin pgrx layer): plain Rust with plain tests.
//!
//! - `append`: an append's decisions (lock order, duplicate ids, retries) and event ids.
//! - `read`: the feed's arithmetic (horizon, lock keys, consumer groups).
//! - `fold`: the rule language of reducers and upcasts, rule sets, fold plans, state diffs.
//! - `integrity`: the hash chain recipe and its checker, digests over stream heads.
//! - `privacy`: sealing personal data per subject.
//! - `catalog`: event type definitions, JSON Schemas, category modes.
//! - `dcb`: tags, conditional appends' queries and the locking rule that makes them race-free.
//! - `projections`: sharing the cluster-wide pool of projection workers between databases.
//! - shared: `json` (fold state, JSON Pointers), `stream` (names), `time`, `validate` (input
//!   rules with their SQLSTATEs).
pub mod append;
pub mod catalog;
pub mod dcb;
pub mod fold;
pub mod integrity;
pub mod json;
pub mod privacy;
pub mod projections;
pub mod read;
pub mod stream;
pub mod time;
pub mod validate;
