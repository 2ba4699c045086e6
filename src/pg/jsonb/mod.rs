//! jsonb datums: read in place (`binary`, what folding and the catalog read) or through
//! PostgreSQL's own functions (`functions`, what an append's arguments go through).
pub mod binary;
pub mod functions;

pub use binary::*;
