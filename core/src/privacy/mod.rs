//! Personal data: sealing per subject for erasure by crypto-shredding.
pub mod sealing;
