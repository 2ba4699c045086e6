//! Reading: a stream's events from its index, events by tag from the tag index, the global
//! feed and its horizon, and the announcement of new events (NOTIFY), the feed's bound under
//! synchronous replication.
pub mod feed;
pub mod notify;
pub mod replication;
pub mod stream_scan;
pub mod tag_scan;
