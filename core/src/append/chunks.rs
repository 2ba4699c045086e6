//! Which TimescaleDB chunk holds an instant: the time ranges of the chunks an append has
//! written to, as TimescaleDB's catalog gave them, so that the next append finds its chunk
//! without asking the catalog again. Forgotten whenever that catalog changes (the caller's
//! invalidation callback).

/// One chunk: the relation and its range `[start, end)` in PostgreSQL microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub relid: u32,
    pub start: i64,
    pub end: i64,
}

/// The chunks known so far, at most `CAPACITY` (appends write to the newest few).
#[derive(Debug, Default)]
pub struct Chunks {
    known: Vec<Chunk>,
}

impl Chunks {
    pub const CAPACITY: usize = 16;

    pub const fn new() -> Chunks {
        Chunks { known: Vec::new() }
    }

    /// The chunk whose range holds `at`.
    pub fn find(&self, at: i64) -> Option<u32> {
        self.known
            .iter()
            .find(|c| c.start <= at && at < c.end)
            .map(|c| c.relid)
    }

    /// Remembers a chunk, forgetting the oldest one learnt when full. A range that overlaps a
    /// known one replaces it: the catalog's answer is the newer.
    pub fn learn(&mut self, chunk: Chunk) {
        self.known
            .retain(|c| c.end <= chunk.start || chunk.end <= c.start);
        if self.known.len() == Self::CAPACITY {
            self.known.remove(0);
        }
        self.known.push(chunk);
    }

    pub fn forget(&mut self) {
        self.known.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(relid: u32, start: i64, end: i64) -> Chunk {
        Chunk { relid, start, end }
    }

    #[test]
    fn finds_the_chunk_whose_range_holds_the_instant() {
        let mut chunks = Chunks::default();
        chunks.learn(chunk(1, 0, 10));
        chunks.learn(chunk(2, 10, 20));
        assert_eq!(chunks.find(0), Some(1));
        assert_eq!(chunks.find(9), Some(1));
        assert_eq!(chunks.find(10), Some(2), "ranges end before their end");
        assert_eq!(chunks.find(20), None);
        assert_eq!(chunks.find(-1), None);
        chunks.forget();
        assert_eq!(chunks.find(5), None);
    }

    #[test]
    fn an_overlapping_range_replaces_the_old_one() {
        let mut chunks = Chunks::default();
        chunks.learn(chunk(1, 0, 10));
        chunks.learn(chunk(2, 5, 15));
        assert_eq!(chunks.find(1), None);
        assert_eq!(chunks.find(5), Some(2));
    }

    #[test]
    fn the_oldest_is_forgotten_when_full() {
        let mut chunks = Chunks::default();
        for i in 0..=Chunks::CAPACITY as i64 {
            chunks.learn(chunk(i as u32 + 1, i * 10, i * 10 + 10));
        }
        assert_eq!(chunks.find(0), None);
        assert_eq!(chunks.find(10), Some(2));
        assert_eq!(
            chunks.find(Chunks::CAPACITY as i64 * 10),
            Some(Chunks::CAPACITY as u32 + 1)
        );
    }
}
