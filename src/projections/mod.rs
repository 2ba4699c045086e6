//! Projections: the launcher that shares a cluster-wide pool of workers between databases,
//! the pool's shared state, the workers that run passes and announce commits, and running a
//! handler as its projection's owner in a sandbox.
pub mod handlers;
pub mod launcher;
pub mod pool;
pub mod worker;
