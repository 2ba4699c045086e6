//! Digests an auditor keeps outside the database: the feed position they cover, the number of
//! events up to it, and one root hash over every stream's head at that position.
//!
//! Each head's hash chains its stream's whole history, so the root commits to every event at
//! or below the position. The root is a Merkle tree (RFC 6962's shape: leaves and nodes hashed
//! with distinct prefixes, the left subtree the largest power of two) over the heads sorted by
//! stream id bytes: a flat hash would do for "did anything change", the tree lets a later
//! proof show one stream's head against a kept root without the others.
use crate::integrity::chain::Problem;
use sha2::{Digest as _, Sha256};

/// The version a digest document carries, so a later layout can be told apart.
pub const FORMAT: i64 = 1;

/// One stream's head at a digest's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub stream_id: String,
    pub version: i64,
    pub hash: Vec<u8>,
}

impl Leaf {
    /// `sha256(0x00 || stream_id || 0x1f || version || 0x1f || head hash)`: stream ids hold no
    /// control characters, so the separator is unambiguous.
    fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(self.stream_id.as_bytes());
        h.update([0x1f]);
        h.update(self.version.to_string().as_bytes());
        h.update([0x1f]);
        h.update(&self.hash);
        h.finalize().into()
    }
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn tree(hashes: &[[u8; 32]]) -> [u8; 32] {
    match hashes.len() {
        0 => Sha256::digest([]).into(),
        1 => hashes[0],
        n => {
            // The largest power of two below n.
            let split = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
            node(&tree(&hashes[..split]), &tree(&hashes[split..]))
        }
    }
}

/// Sorts the heads by stream id bytes (no collation can change the order) and returns the
/// Merkle root over them.
pub fn root(leaves: &mut [Leaf]) -> [u8; 32] {
    leaves.sort_by(|a, b| a.stream_id.as_bytes().cmp(b.stream_id.as_bytes()));
    let hashes: Vec<[u8; 32]> = leaves.iter().map(Leaf::hash).collect();
    tree(&hashes)
}

/// What an auditor keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub position: i64,
    pub events: i64,
    pub streams: i64,
    pub root: [u8; 32],
}

impl Digest {
    /// The document's fields (the caller adds when and by whom it was taken).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "format": FORMAT,
            "position": self.position,
            "events": self.events,
            "streams": self.streams,
            "root": hex(&self.root),
        })
    }

    /// Reads a document `to_json` made; other keys are ignored. Errors name the field.
    pub fn parse(doc: &serde_json::Value) -> Result<Digest, String> {
        let int = |key: &str| -> Result<i64, String> {
            doc.get(key)
                .and_then(serde_json::Value::as_i64)
                .filter(|v| *v >= 0)
                .ok_or_else(|| format!("\"{key}\" must be a non-negative integer"))
        };
        if !doc.is_object() {
            return Err("a digest is a JSON object, as es_digest() returns it".into());
        }
        if int("format")? != FORMAT {
            return Err(format!("\"format\" must be {FORMAT}"));
        }
        let root = doc
            .get("root")
            .and_then(serde_json::Value::as_str)
            .and_then(unhex)
            .ok_or("\"root\" must be 64 hexadecimal digits")?;
        Ok(Digest {
            position: int("position")?,
            events: int("events")?,
            streams: int("streams")?,
            root,
        })
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// How the heads recorded when a digest was taken differ from the heads the events give at
/// its position now, stream by stream (both sorted by `root`).
pub fn compare(recorded: &[Leaf], now: &[Leaf]) -> Vec<(String, Problem)> {
    let mut out = vec![];
    let mut report = |id: &str, version: i64, problem: &'static str, detail: String| {
        out.push((
            id.to_string(),
            Problem {
                version: Some(version),
                problem,
                detail,
            },
        ))
    };
    let (mut r, mut n) = (recorded.iter().peekable(), now.iter().peekable());
    loop {
        let order = match (r.peek(), n.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => a.stream_id.as_bytes().cmp(b.stream_id.as_bytes()),
        };
        match order {
            std::cmp::Ordering::Less => {
                let a = r.next().expect("peeked");
                report(
                    &a.stream_id,
                    1,
                    "deleted",
                    format!(
                        "the digest holds the stream at version {}; no event of it is left at or below the digest's position",
                        a.version
                    ),
                );
            }
            std::cmp::Ordering::Greater => {
                let b = n.next().expect("peeked");
                report(
                    &b.stream_id,
                    1,
                    "inserted",
                    format!(
                        "versions 1 to {} are at or below the digest's position, which did not hold the stream",
                        b.version
                    ),
                );
            }
            std::cmp::Ordering::Equal => {
                let (a, b) = (r.next().expect("peeked"), n.next().expect("peeked"));
                if b.version < a.version {
                    report(
                        &a.stream_id,
                        b.version + 1,
                        "deleted",
                        format!(
                            "the digest holds versions up to {}, the store up to {}",
                            a.version, b.version
                        ),
                    );
                } else if b.version > a.version {
                    report(
                        &a.stream_id,
                        a.version + 1,
                        "inserted",
                        format!(
                            "versions {} to {} are at or below the digest's position, which held the stream at {}",
                            a.version + 1,
                            b.version,
                            a.version
                        ),
                    );
                } else if a.hash != b.hash {
                    report(
                        &a.stream_id,
                        a.version,
                        "modified",
                        format!(
                            "the head at version {} hashes to {}, the digest recorded {}: the stream was rewritten and its hashes recomputed",
                            a.version,
                            hex(&b.hash),
                            hex(&a.hash)
                        ),
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(id: &str, version: i64, h: u8) -> Leaf {
        Leaf {
            stream_id: id.into(),
            version,
            hash: vec![h; 32],
        }
    }

    #[test]
    fn the_root_is_independent_of_input_order_and_covers_every_field() {
        let mut a = vec![leaf("b-1", 2, 7), leaf("a-1", 1, 3), leaf("c-1", 5, 9)];
        let mut b = vec![leaf("c-1", 5, 9), leaf("a-1", 1, 3), leaf("b-1", 2, 7)];
        let r = root(&mut a);
        assert_eq!(r, root(&mut b));
        for changed in [
            vec![leaf("b-1", 2, 7), leaf("a-1", 1, 3), leaf("c-1", 5, 8)],
            vec![leaf("b-1", 2, 7), leaf("a-1", 1, 3), leaf("c-1", 4, 9)],
            vec![leaf("b-1", 2, 7), leaf("a-1", 1, 3), leaf("c-2", 5, 9)],
            vec![leaf("b-1", 2, 7), leaf("a-1", 1, 3)],
        ] {
            assert_ne!(root(&mut changed.clone()), r);
        }
    }

    #[test]
    fn the_tree_has_rfc_6962_shape() {
        let h: Vec<[u8; 32]> = (0..5u8).map(|i| [i; 32]).collect();
        assert_eq!(tree(&[]), <[u8; 32]>::from(Sha256::digest([])));
        assert_eq!(tree(&h[..1]), h[0]);
        assert_eq!(tree(&h[..2]), node(&h[0], &h[1]));
        assert_eq!(tree(&h[..3]), node(&node(&h[0], &h[1]), &h[2]));
        let four = node(&node(&h[0], &h[1]), &node(&h[2], &h[3]));
        assert_eq!(tree(&h[..4]), four);
        assert_eq!(tree(&h), node(&four, &h[4]));
    }

    #[test]
    fn a_leaf_cannot_pass_for_a_node() {
        // Two leaves' node hash presented as one leaf's hash gives another root.
        let mut two = vec![leaf("a", 1, 1), leaf("b", 1, 2)];
        let r = root(&mut two);
        let mut one = vec![Leaf {
            stream_id: "a".into(),
            version: 1,
            hash: r.to_vec(),
        }];
        assert_ne!(root(&mut one), r);
    }

    #[test]
    fn documents_round_trip_and_bad_ones_name_the_field() {
        let d = Digest {
            position: 42,
            events: 40,
            streams: 3,
            root: [0xab; 32],
        };
        let mut doc = d.to_json();
        doc["taken_at"] = "2026-12-05T00:00:00Z".into();
        assert_eq!(Digest::parse(&doc), Ok(d));
        let broken = |key: &str, v: serde_json::Value| {
            let mut doc = doc.clone();
            doc[key] = v;
            Digest::parse(&doc).unwrap_err()
        };
        assert!(broken("position", (-1).into()).contains("\"position\""));
        assert!(broken("events", "1".into()).contains("\"events\""));
        assert!(broken("root", "ab".into()).contains("\"root\""));
        assert!(broken("root", "zz".repeat(32).into()).contains("\"root\""));
        assert!(broken("format", 2.into()).contains("\"format\""));
        assert!(Digest::parse(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn comparing_heads_names_each_stream_and_what_happened() {
        let recorded = vec![
            leaf("a", 3, 1),
            leaf("b", 2, 2),
            leaf("c", 4, 3),
            leaf("d", 1, 4),
        ];
        let now = vec![
            leaf("a", 3, 1), // intact
            leaf("b", 2, 9), // re-chained
            leaf("c", 2, 7), // cut
            leaf("e", 1, 5), // appeared below the position
        ];
        let found: Vec<(String, Option<i64>, &str)> = compare(&recorded, &now)
            .into_iter()
            .map(|(s, p)| (s, p.version, p.problem))
            .collect();
        assert_eq!(
            found,
            vec![
                ("b".into(), Some(2), "modified"),
                ("c".into(), Some(3), "deleted"),
                ("d".into(), Some(1), "deleted"),
                ("e".into(), Some(1), "inserted"),
            ]
        );
        let longer = vec![leaf("a", 5, 1)];
        assert_eq!(
            compare(&recorded[..1], &longer)[0].1.problem,
            "inserted",
            "versions beyond the recorded head"
        );
        assert!(compare(&recorded, &recorded).is_empty());
    }
}
