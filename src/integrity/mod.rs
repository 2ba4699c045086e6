//! Tamper evidence: `es_verify` over the hash chains, and digests kept outside the database.
pub mod digest;
pub mod verify;
