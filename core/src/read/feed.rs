//! Feed arithmetic: the horizon below which every position is settled, the advisory-lock key
//! an append in flight registers under when the library is not preloaded, and consumer
//! groups' stream hash.

/// Advisory lock class appends register under ("ESFD").
pub const FEED_LOCK_CLASS: u32 = 0x4553_4644;

/// Advisory lock class of the lock a block of positions is taken under when the library is
/// not preloaded ("ESPA").
pub const POSITIONS_LOCK_CLASS: u32 = 0x4553_5041;

/// Rebuilds a registered lower bound from the 32 bits kept in the lock key, knowing it lies
/// within 2^31 of the sequence's current value.
pub fn registered_bound(seq_last: i64, key: u32) -> i64 {
    let low = (key ^ 0x8000_0000) as i64; // undo the int4 offset applied when registering
    let delta = (low - seq_last).rem_euclid(1 << 32);
    let delta = if delta >= 1 << 31 {
        delta - (1 << 32)
    } else {
        delta
    };
    seq_last + delta
}

/// Every position up to the result is settled: `seq_last` bounds what was handed out, and each
/// in-flight append may still commit positions above its registered bound only.
pub fn horizon(seq_last: i64, bounds: impl IntoIterator<Item = i64>) -> i64 {
    bounds.into_iter().fold(seq_last, i64::min)
}

/// The int4 half of the advisory lock key that registers `bound` (its low 32 bits, offset
/// to fit an int4); `registered_bound` reads it back.
pub fn lock_key(bound: i64) -> i32 {
    (bound.rem_euclid(1 << 32) - (1 << 31)) as i32
}

/// FNV-1a, 64 bits, over the stream id's UTF-8 bytes: simple enough to reimplement in any
/// client, and independent of PostgreSQL's internal hash functions.
pub fn stream_hash(stream_id: &str) -> u64 {
    stream_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bound: i64) -> u32 {
        lock_key(bound) as u32 // read back as an oid
    }

    #[test]
    fn bounds_round_trip_across_the_32_bit_boundary() {
        for seq in [
            0i64,
            1,
            99,
            (1 << 31) - 1,
            1 << 31,
            (1 << 32) - 1,
            1 << 32,
            (1 << 32) + 5,
            1 << 40,
        ] {
            for bound in [seq, seq - 1, seq - 1000, seq + 1] {
                if bound >= 0 {
                    assert_eq!(
                        registered_bound(seq, key(bound)),
                        bound,
                        "seq {seq} bound {bound}"
                    );
                }
            }
        }
    }

    #[test]
    fn horizon_stops_below_the_lowest_in_flight_append() {
        assert_eq!(horizon(100, []), 100);
        let bounds = |keys: &[u32]| {
            keys.iter()
                .map(|k| registered_bound(100, *k))
                .collect::<Vec<_>>()
        };
        assert_eq!(horizon(100, bounds(&[key(90), key(95)])), 90);
        // An append that registered after the sequence was read cannot lower the horizon.
        assert_eq!(horizon(100, bounds(&[key(101)])), 100);
    }

    #[test]
    fn consumer_groups_are_stable_and_cover_every_member() {
        assert_eq!(stream_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stream_hash("a"), 0xaf63_dc4c_8601_ec8c); // FNV-1a test vector
        let mut seen = [0; 4];
        for i in 0..1000 {
            seen[(stream_hash(&format!("user-{i}")) % 4) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
    }
}
