//! event_store's logic without PostgreSQL: the reducers' rule engine and the fold state,
//! state diffs, the hash chain recipe and its checker, digests over stream heads, feed arithmetic, input validation and
//! event ids, and an append's decisions (lock order, retries). Plain Rust with plain tests; the extension crate (`src/`) is the pgrx layer.
pub mod append;
pub mod catalog;
pub mod chain;
pub mod diff;
pub mod digest;
pub mod feed;
pub mod ids;
pub mod personal;
pub mod plan;
pub mod reducer;
pub mod state;
pub mod stream;
pub mod time;
pub mod validate;
