//! Folding streams into states: the declarative reducers of a category, the fold as an
//! aggregate (`es_fold`), states at an instant or version with their snapshots, and diffs.
pub mod aggregate;
pub mod diff;
pub mod reducers;
pub mod time_travel;
