//! Tamper evidence: hash chains and digests.
pub mod chain;
pub mod digest;
