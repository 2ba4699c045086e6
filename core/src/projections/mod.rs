//! Projections: how the cluster-wide pool of workers is shared between databases.
pub mod pool;
