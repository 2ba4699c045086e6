//! Event ids: RFC 9562 UUIDv7, time-ordered so that ids sort roughly by append time and
//! index inserts stay at the right edge of the B-tree.
use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Lays out a UUIDv7: 48 bits of Unix milliseconds, version 7, 12 bits `seq`, variant 10,
/// then 62 random bits.
pub fn uuid_v7(unix_ms: u64, seq: u16, random: [u8; 8]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
    b[6] = 0x70 | ((seq >> 8) as u8 & 0x0f);
    b[7] = seq as u8;
    b[8..].copy_from_slice(&random);
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

thread_local! {
    // (last millisecond used, counter within it): keeps ids from one backend strictly increasing.
    static LAST: Cell<(u64, u16)> = const { Cell::new((0, 0)) };
}

/// Next id for this backend: monotonic even when several are made in one millisecond or
/// the clock steps back.
pub fn next_v7() -> [u8; 16] {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let (ms, seq) = LAST.with(|last| {
        let (prev_ms, prev_seq) = last.get();
        let next = if now > prev_ms {
            (now, rand::random::<u16>() & 0x01ff)
        } else if prev_seq < 0x0fff {
            (prev_ms, prev_seq + 1)
        } else {
            (prev_ms + 1, 0)
        };
        last.set(next);
        next
    });
    uuid_v7(ms, seq, rand::random())
}

/// An id's canonical text (8-4-4-4-12 lowercase hex digits), as PostgreSQL's uuid_out writes
/// it, without an allocation.
pub struct UuidText([u8; 36]);

impl UuidText {
    pub fn new(id: &[u8; 16]) -> UuidText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'-'; 36];
        let mut at = 0;
        for (i, b) in id.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                at += 1;
            }
            out[at] = HEX[(b >> 4) as usize];
            out[at + 1] = HEX[(b & 0x0f) as usize];
            at += 2;
        }
        UuidText(out)
    }

    pub fn as_str(&self) -> &str {
        // Hex digits and dashes only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_is_the_canonical_form() {
        let id = [
            0x01, 0x8f, 0x3a, 0x4b, 0x5c, 0x6d, 0x7e, 0x8f, 0x90, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5,
            0xf6, 0x07,
        ];
        assert_eq!(
            UuidText::new(&id).as_str(),
            "018f3a4b-5c6d-7e8f-90a1-b2c3d4e5f607"
        );
        assert_eq!(
            UuidText::new(&[0xff; 16]).as_str(),
            "ffffffff-ffff-ffff-ffff-ffffffffffff"
        );
    }

    #[test]
    fn layout_has_version_and_variant() {
        let id = uuid_v7(0x0123_4567_89ab, 0x0abc, [0xff; 8]);
        assert_eq!(&id[..6], &[0x01, 0x23, 0x45, 0x67, 0x89, 0xab]);
        assert_eq!(id[6] >> 4, 7);
        assert_eq!(((id[6] as u16 & 0x0f) << 8) | id[7] as u16, 0x0abc);
        assert_eq!(id[8] >> 6, 0b10);
    }

    #[test]
    fn ids_from_one_backend_increase() {
        let mut prev = next_v7();
        for _ in 0..10_000 {
            let id = next_v7();
            assert!(id > prev, "{id:?} <= {prev:?}");
            prev = id;
        }
    }
}
