//! Reading: the global feed's arithmetic, and its bound under synchronous replication.
pub mod feed;
pub mod replication;
