//! The decisions of an append that need no database: the order streams are locked in, event
//! ids used twice, and what a retry carrying stored event ids amounts to.
pub mod chunks;
pub mod ids;

use std::collections::HashSet;

/// The order to lock the streams of one call in: by stream id, bytewise, so that two calls
/// over the same streams always lock them in the same order and never deadlock. A stream
/// named twice is refused (its events would have to go in one entry).
pub fn lock_order(streams: &[&str]) -> Result<Vec<usize>, String> {
    let mut order: Vec<usize> = (0..streams.len()).collect();
    order.sort_by(|&a, &b| streams[a].as_bytes().cmp(streams[b].as_bytes()));
    match order.windows(2).find(|w| streams[w[0]] == streams[w[1]]) {
        Some(w) => Err(streams[w[0]].to_string()),
        None => Ok(order),
    }
}

/// Whether an event id occurs twice among those given.
pub fn has_duplicate<T: std::hash::Hash + Eq>(ids: impl IntoIterator<Item = T>) -> bool {
    let mut seen = HashSet::new();
    ids.into_iter().any(|id| !seen.insert(id))
}

/// An event of the store whose id an entry of the append gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its global position.
    pub position: i64,
    /// Whether it has the entry's stream, and the event's type, data and version.
    pub same_content: bool,
}

/// What an entry (the events for one stream) is, given the stored events its ids name.
#[derive(Debug, PartialEq, Eq)]
pub enum Retry {
    /// None of its ids is stored: append it.
    New,
    /// It is a retry of an append that was stored whole: return what was stored.
    Replay,
    /// An id is stored with other content, or only some are: refuse (ES002). Holds the index
    /// in `stored` of the conflicting event with the lowest position.
    Conflict(usize),
}

/// `events`: the entry's number of events, all of which must carry an id for a replay.
/// `stored`: the stored events named by its ids (at most one per id).
pub fn classify(events: usize, ids_given: usize, stored: &[Stored]) -> Retry {
    if stored.is_empty() {
        return Retry::New;
    }
    if ids_given == events && stored.len() == events && stored.iter().all(|s| s.same_content) {
        return Retry::Replay;
    }
    let first = (0..stored.len())
        .min_by_key(|&i| stored[i].position)
        .expect("stored is not empty");
    Retry::Conflict(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_lock_in_byte_order_whatever_the_input_order() {
        assert_eq!(lock_order(&["b-1", "a-2", "a-10"]), Ok(vec![2, 1, 0]));
        assert_eq!(lock_order(&["a-10", "b-1", "a-2"]), Ok(vec![0, 2, 1]));
        // Bytewise, not by the database's collation: "B" sorts before "a".
        assert_eq!(lock_order(&["a-1", "B-1"]), Ok(vec![1, 0]));
        assert_eq!(lock_order(&[]), Ok(vec![]));
    }

    #[test]
    fn a_stream_named_twice_is_refused() {
        assert_eq!(lock_order(&["a-1", "b-1", "a-1"]), Err("a-1".into()));
    }

    #[test]
    fn duplicate_ids() {
        assert!(!has_duplicate([1, 2, 3]));
        assert!(has_duplicate([1, 2, 1]));
        assert!(!has_duplicate(Vec::<u8>::new()));
    }

    fn stored(position: i64, same_content: bool) -> Stored {
        Stored {
            position,
            same_content,
        }
    }

    #[test]
    fn retries() {
        assert_eq!(classify(2, 2, &[]), Retry::New);
        assert_eq!(classify(2, 0, &[]), Retry::New);
        assert_eq!(
            classify(2, 2, &[stored(5, true), stored(6, true)]),
            Retry::Replay
        );
        // One event of two stored: not the same append.
        assert_eq!(classify(2, 2, &[stored(5, true)]), Retry::Conflict(0));
        // An event without an id cannot be matched to a stored one.
        assert_eq!(classify(2, 1, &[stored(5, true)]), Retry::Conflict(0));
        // Other content: the lowest position is reported.
        assert_eq!(
            classify(2, 2, &[stored(9, true), stored(7, false)]),
            Retry::Conflict(1)
        );
    }
}
