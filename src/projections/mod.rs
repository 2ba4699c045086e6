//! Projections: the background worker that runs passes, and running a handler as its
//! projection's owner in a sandbox.
pub mod handlers;
pub mod worker;
