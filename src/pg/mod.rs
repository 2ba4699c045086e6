//! PostgreSQL plumbing every capability uses: errors with our SQLSTATEs, RAII guards, kept SPI
//! plans, shared memory, settings, where the extension's objects live, who is calling, and
//! jsonb datums.
pub mod caller;
pub mod errors;
pub mod guards;
pub mod jsonb;
pub mod plans;
pub mod relcache;
pub mod schema;
pub mod settings;
pub mod shmem;
pub mod timescaledb;
