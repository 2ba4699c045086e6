//! The global feed's horizon: the highest position below which every event has either
//! committed or rolled back for good (see sql/feed.sql for the registration side).
use pgrx::prelude::*;

/// Advisory lock class appends register under ("ESFD").
pub const FEED_LOCK_CLASS: u32 = 0x4553_4644;

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
pub fn horizon(seq_last: i64, keys: impl IntoIterator<Item = u32>) -> i64 {
    keys.into_iter()
        .map(|k| registered_bound(seq_last, k))
        .fold(seq_last, |h, bound| h.min(bound))
}

/// The last position handed out so far (what `nextval` returned last).
fn seq_last(client: &pgrx::spi::SpiClient) -> i64 {
    client
        .select(
            "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM es_global_position_seq",
            None,
            &[],
        )
        .expect("reading the position sequence")
        .first()
        .get(1)
        .unwrap()
        .unwrap()
}

/// (positions handed out, horizon). Reads the sequence before the locks: an append that
/// registers after the sequence was read only takes positions above it.
fn read_horizon() -> (i64, i64) {
    Spi::connect(|client| {
        let seq_last = seq_last(client);
        let keys = client
            .select(
                "SELECT objid::bigint FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND objsubid = 2 \
                 AND classid = $1::bigint::oid AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                None,
                &[(FEED_LOCK_CLASS as i64).into()],
            )
            .expect("reading pg_locks");
        (
            seq_last,
            horizon(
                seq_last,
                keys.map(|r| r.get::<i64>(1).unwrap().unwrap() as u32),
            ),
        )
    })
}

/// Highest position a feed reader may go up to now.
#[pg_extern(volatile, parallel_unsafe)]
fn _es_feed_horizon() -> i64 {
    read_horizon().1
}

/// Whether appends are in flight, holding the horizon below the positions handed out.
#[pg_extern(volatile, parallel_unsafe)]
fn _es_feed_in_flight() -> bool {
    let (seq_last, horizon) = read_horizon();
    horizon < seq_last
}

/// FNV-1a, 64 bits, over the stream id's UTF-8 bytes: simple enough to reimplement in any
/// client, and independent of PostgreSQL's internal hash functions.
pub fn stream_hash(stream_id: &str) -> u64 {
    stream_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The consumer group member (0-based) that receives a stream's events.
#[pg_extern(immutable, strict, parallel_safe)]
fn _es_consumer_group_member(stream_id: &str, size: i32) -> i32 {
    (stream_hash(stream_id) % size.max(1) as u64) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bound: i64) -> u32 {
        // What sql/feed.sql computes: (bound % 2^32 - 2^31)::int, read back as an oid.
        ((bound.rem_euclid(1 << 32)) - (1 << 31)) as i32 as u32
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
        assert_eq!(horizon(100, [key(90), key(95)]), 90);
        // An append that registered after the sequence was read cannot lower the horizon.
        assert_eq!(horizon(100, [key(101)]), 100);
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
