//! JSON as the fold and the catalog handle it: the fold state and JSON Pointers.
pub mod pointer;
pub mod state;
