//! Personal data: sealed per subject at append, revealed per reader, erased with its key.
pub mod sealing;
