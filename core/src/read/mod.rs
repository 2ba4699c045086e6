//! Reading: the global feed's arithmetic.
pub mod feed;
