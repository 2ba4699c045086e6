//! Folding a stream's events into its state: the rule language, the rule set of a category,
//! upcasts, which events and snapshot a fold starts from, and diffs between states.
pub mod diff;
pub mod plan;
pub mod reducers;
pub mod rules;
pub mod upcasts;
