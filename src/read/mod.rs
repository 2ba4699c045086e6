//! Reading: a stream's events from its index, the global feed and its horizon, and the
//! announcement of new events (NOTIFY).
pub mod feed;
pub mod notify;
pub mod stream_scan;
