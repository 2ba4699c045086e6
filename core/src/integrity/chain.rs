//! Tamper evidence: every event carries SHA-256 over its content chained to the previous
//! event of its stream, and `es_verify` walks the chains.
//!
//! The recipe is plain enough to recompute with SQL alone (docs/integrity.md), so an auditor
//! does not have to trust this code:
//! `sha256(prev_hash || convert_to(concat_ws(chr(31), event_id, stream_id, stream_version,
//! global_position, event_type, event_version, created_at as epoch microseconds,
//! event_data::text, metadata::text, NULLIF(array_to_string(tags, chr(30)), '')), 'UTF8'))`,
//! with 32 zero bytes as the first `prev_hash`: an event without tags is hashed as before tags
//! existed. Separators cannot be ambiguous: names and tags reject control characters and jsonb
//! text escapes them.
use sha2::{Digest, Sha256};

/// The `prev_hash` of every stream's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// What the hash covers, every column of the row but the hash itself.
pub struct Content<'a> {
    pub event_id: &'a str,
    pub stream_id: &'a str,
    pub stream_version: i64,
    pub global_position: i64,
    pub event_type: &'a str,
    pub event_version: i32,
    pub created_at_unix_us: i64,
    pub event_data: &'a str,
    pub metadata: &'a str,
    /// In their stored order; none adds nothing to the hash.
    pub tags: &'a [String],
}

pub fn event_hash(prev: &[u8], c: &Content) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    let mut digits = [[0u8; 20]; 4];
    let [d0, d1, d2, d3] = &mut digits;
    let fields: [&[u8]; 9] = [
        c.event_id.as_bytes(),
        c.stream_id.as_bytes(),
        decimal(c.stream_version, d0),
        decimal(c.global_position, d1),
        c.event_type.as_bytes(),
        decimal(i64::from(c.event_version), d2),
        decimal(c.created_at_unix_us, d3),
        // Each field's text straight into the hash, never copied (event data can be a megabyte).
        c.event_data.as_bytes(),
        c.metadata.as_bytes(),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            h.update([0x1f]);
        }
        h.update(f);
    }
    for (i, t) in c.tags.iter().enumerate() {
        h.update([if i == 0 { 0x1f } else { 0x1e }]);
        h.update(t.as_bytes());
    }
    h.finalize().into()
}

/// `v` in decimal, as `to_string` writes it (without its formatting machinery, a third of
/// hashing a small event).
fn decimal(v: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = v.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    pub version: Option<i64>,
    pub problem: &'static str,
    pub detail: String,
}

/// What es_streams says of a stream: es_append keeps it, es_stream and the fold trust it.
#[derive(Debug, Clone, Default)]
pub struct Head {
    pub version: i64,
    pub hash: Vec<u8>,
    pub first_at: Option<i64>,
    pub last_at: Option<i64>,
    pub last_position: Option<i64>,
}

/// Where retention cut a stream (es_apply_retention): its first kept version, and the hash of
/// the last removed event, which the first kept one chains to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Anchor {
    pub first_version: i64,
    pub prev_hash: Vec<u8>,
}

/// Checks one stream's rows, fed in (stream_version, global_position) order.
pub struct StreamCheck {
    last_version: i64,
    chain: Vec<u8>,
    /// Whether the stream starts at a retention anchor instead of version 1.
    anchored: bool,
    first_at: Option<i64>,
    last_at: Option<i64>,
    last_position: Option<i64>,
    pub problems: Vec<Problem>,
}

impl Default for StreamCheck {
    fn default() -> Self {
        StreamCheck {
            last_version: 0,
            chain: GENESIS.to_vec(),
            anchored: false,
            first_at: None,
            last_at: None,
            last_position: None,
            problems: vec![],
        }
    }
}

impl StreamCheck {
    /// A check that starts where retention cut the stream (from version 1 without an anchor).
    pub fn from(anchor: Option<&Anchor>) -> StreamCheck {
        match anchor {
            Some(a) => StreamCheck {
                last_version: a.first_version - 1,
                chain: a.prev_hash.clone(),
                anchored: true,
                ..Default::default()
            },
            None => StreamCheck::default(),
        }
    }

    fn report(&mut self, version: Option<i64>, problem: &'static str, detail: String) {
        self.problems.push(Problem {
            version,
            problem,
            detail,
        });
    }

    pub fn push(&mut self, version: i64, stored: &[u8], content: &Content) {
        let expected = self.last_version + 1;
        if version < expected {
            self.report(
                Some(version),
                "inserted",
                format!(
                    "a second event claims version {version} (event {})",
                    content.event_id
                ),
            );
            return;
        }
        if version > expected {
            self.report(
                Some(expected),
                "deleted",
                format!("versions {expected} to {} are missing", version - 1),
            );
        } else if event_hash(&self.chain, content) != stored {
            self.report(
                Some(version),
                "modified",
                format!(
                    "event {} does not match its chained hash: it, or the hash of version {}, was changed after it was written",
                    content.event_id,
                    version - 1
                ),
            );
        }
        // Chain from what is stored, so one bad event is reported once, not at every later one.
        self.last_version = version;
        self.chain = stored.to_vec();
        self.first_at.get_or_insert(content.created_at_unix_us);
        self.last_at = Some(content.created_at_unix_us);
        self.last_position = Some(content.global_position);
    }

    /// The last version walked and its stored hash (the anchor's, or GENESIS, before any).
    pub fn head(&self) -> (i64, &[u8]) {
        (self.last_version, &self.chain)
    }

    /// Compares the walked chain with the registry's head: its version and hash, and the
    /// time bounds and last position that reads by stream rely on.
    pub fn finish(mut self, head: Option<Head>) -> Vec<Problem> {
        let last = self.last_version;
        match head {
            None if last > 0 => self.report(
                None,
                "registry",
                "events exist but es_streams has no row for the stream".into(),
            ),
            None => {}
            Some(h) if h.version > last => self.report(
                Some(last + 1),
                "deleted",
                format!(
                    "versions {} to {v} are missing (the registry says the stream is at {v})",
                    last + 1,
                    v = h.version
                ),
            ),
            Some(h) if h.version < last => self.report(
                Some(h.version + 1),
                "inserted",
                format!(
                    "versions {} to {last} are beyond the registered head {}",
                    h.version + 1,
                    h.version
                ),
            ),
            Some(h) if h.version > 0 && h.hash != self.chain => self.report(
                Some(h.version),
                "modified",
                "the last event's hash differs from the head hash in es_streams".into(),
            ),
            // Cut whole by retention: no event left to bound reads.
            Some(_) if self.anchored && self.first_at.is_none() => {}
            Some(h) if h.version > 0 => {
                // Retention leaves first_at at the removed first event: reads by stream then
                // start earlier than needed, never later.
                if self.anchored && h.first_at <= self.first_at {
                    self.first_at = h.first_at;
                }
                let bounds = [
                    ("first_at", h.first_at, self.first_at),
                    ("last_at", h.last_at, self.last_at),
                    ("last_position", h.last_position, self.last_position),
                ];
                for (column, registered, walked) in bounds {
                    if registered != walked {
                        self.report(
                            None,
                            "registry",
                            format!(
                                "es_streams.{column} is {} but the events say {}: reads of the stream would miss events",
                                show(registered),
                                show(walked)
                            ),
                        );
                    }
                }
            }
            Some(_) => {}
        }
        self.problems
    }
}

fn show(v: Option<i64>) -> String {
    v.map_or("NULL".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(id: &str, v: i64, data: &str) -> Content<'static> {
        Content {
            event_id: Box::leak(id.to_string().into_boxed_str()),
            stream_id: "user-1",
            stream_version: v,
            global_position: v * 10,
            event_type: "T",
            event_version: 1,
            created_at_unix_us: 1_700_000_000_000_000 + v,
            event_data: Box::leak(data.to_string().into_boxed_str()),
            metadata: "{}",
            tags: &[],
        }
    }

    /// A valid chain of `n` events, as (version, hash, content).
    fn chain(n: i64) -> Vec<(i64, Vec<u8>, Content<'static>)> {
        let mut prev = GENESIS.to_vec();
        (1..=n)
            .map(|v| {
                let c = content(&format!("id{v}"), v, &format!("{{\"n\": {v}}}"));
                let h = event_hash(&prev, &c).to_vec();
                prev = h.clone();
                (v, h, c)
            })
            .collect()
    }

    fn check(
        rows: &[(i64, Vec<u8>, Content)],
        head: Option<Head>,
    ) -> Vec<(Option<i64>, &'static str)> {
        check_from(None, rows, head)
    }

    fn head(rows: &[(i64, Vec<u8>, Content)]) -> Option<Head> {
        rows.last().map(|(v, h, c)| Head {
            version: *v,
            hash: h.clone(),
            first_at: rows.first().map(|r| r.2.created_at_unix_us),
            last_at: Some(c.created_at_unix_us),
            last_position: Some(c.global_position),
        })
    }

    #[test]
    fn decimals_are_written_as_to_string_writes_them() {
        for v in [
            0,
            7,
            -7,
            10,
            99,
            100,
            -100,
            1_234_567,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ] {
            assert_eq!(super::decimal(v, &mut [0u8; 20]), v.to_string().as_bytes());
        }
    }

    #[test]
    fn recipe_is_stable() {
        // Pinned so that a change to the recipe, which would orphan every stored hash, fails here.
        let h = event_hash(&GENESIS, &content("id1", 1, "{\"n\": 1}"));
        let sql_equivalent = {
            let mut bytes = GENESIS.to_vec();
            bytes.extend_from_slice(
                "id1\x1fuser-1\x1f1\x1f10\x1fT\x1f1\x1f1700000000000001\x1f{\"n\": 1}\x1f{}"
                    .as_bytes(),
            );
            Sha256::digest(&bytes).to_vec()
        };
        assert_eq!(h.to_vec(), sql_equivalent);
        // Tags follow the metadata, joined by record separators.
        let tags = ["course:1".to_string(), "student:2".to_string()];
        let tagged = Content {
            tags: &tags,
            ..content("id1", 1, "{\"n\": 1}")
        };
        let mut bytes = GENESIS.to_vec();
        bytes.extend_from_slice(
            "id1\x1fuser-1\x1f1\x1f10\x1fT\x1f1\x1f1700000000000001\x1f{\"n\": 1}\x1f{}\x1fcourse:1\x1estudent:2"
                .as_bytes(),
        );
        assert_eq!(
            event_hash(&GENESIS, &tagged).to_vec(),
            Sha256::digest(&bytes).to_vec()
        );
    }

    #[test]
    fn intact_chain_has_no_problems() {
        let rows = chain(5);
        assert_eq!(check(&rows, head(&rows)), vec![]);
        assert_eq!(check(&[], None), vec![]);
    }

    #[test]
    fn modified_content_is_found_once() {
        let mut rows = chain(5);
        let h = head(&rows);
        rows[2].2.event_data = "{\"n\": 99}";
        assert_eq!(check(&rows, h), vec![(Some(3), "modified")]);
    }

    #[test]
    fn rewritten_hash_breaks_the_next_link() {
        let mut rows = chain(5);
        let h = head(&rows);
        rows[2].2.event_data = "{\"n\": 99}";
        rows[2].1 = event_hash(&rows[1].1, &rows[2].2).to_vec();
        assert_eq!(check(&rows, h), vec![(Some(4), "modified")]);
    }

    #[test]
    fn deleted_in_the_middle_and_at_the_end() {
        let rows = chain(5);
        let h = head(&rows);
        let mut gap: Vec<_> = chain(5);
        gap.remove(1);
        assert_eq!(check(&gap, h.clone()), vec![(Some(2), "deleted")]);
        let mut tail = chain(5);
        tail.pop();
        assert_eq!(check(&tail, h), vec![(Some(5), "deleted")]);
        assert_eq!(
            check(
                &[],
                Some(Head {
                    version: 2,
                    ..Default::default()
                })
            ),
            vec![(Some(1), "deleted")]
        );
    }

    #[test]
    fn inserted_duplicate_and_beyond_head() {
        let rows = chain(3);
        let h = head(&rows);
        let mut dup = chain(3);
        let forged = content("forged", 2, "{}");
        dup.insert(2, (2, vec![0; 32], forged));
        assert_eq!(check(&dup, h.clone()), vec![(Some(2), "inserted")]);
        let longer = chain(4);
        assert_eq!(check(&longer, h), vec![(Some(4), "inserted")]);
        assert_eq!(check(&rows, None), vec![(None, "registry")]);
    }

    #[test]
    fn registry_bounds_are_checked() {
        let rows = chain(3);
        let mut h = head(&rows).unwrap();
        assert_eq!(check(&rows, Some(h.clone())), vec![]);
        h.last_at = Some(h.last_at.unwrap() - 1);
        assert_eq!(check(&rows, Some(h.clone())), vec![(None, "registry")]);
        h = head(&rows).unwrap();
        h.last_position = Some(1);
        h.first_at = None;
        assert_eq!(
            check(&rows, Some(h)),
            vec![(None, "registry"), (None, "registry")]
        );
    }

    /// `rows` from version `first` on, checked from the anchor retention left before it.
    /// Checks `rows` from `anchor` (a stream retention cut), or from version 1 without one.
    fn check_from(
        anchor: Option<Anchor>,
        rows: &[(i64, Vec<u8>, Content)],
        head: Option<Head>,
    ) -> Vec<(Option<i64>, &'static str)> {
        let mut c = StreamCheck::from(anchor.as_ref());
        for (v, h, content) in rows {
            c.push(*v, h, content);
        }
        c.finish(head)
            .into_iter()
            .map(|p| (p.version, p.problem))
            .collect()
    }

    /// The anchor retention leaves when it keeps `rows` from version `first` on.
    fn cut(rows: &[(i64, Vec<u8>, Content)], first: usize) -> Anchor {
        Anchor {
            first_version: first as i64,
            prev_hash: rows[first - 2].1.clone(),
        }
    }

    #[test]
    fn a_stream_cut_by_retention_verifies_from_its_anchor() {
        let rows = chain(5);
        let h = head(&rows);
        assert_eq!(
            check_from(Some(cut(&rows, 3)), &rows[2..], h.clone()),
            vec![]
        );
        // Cut whole: the registry's head is the anchor.
        assert_eq!(check_from(Some(cut(&rows, 6)), &[], h.clone()), vec![]);
        // Without the anchor, the same rows are a deletion.
        assert_eq!(
            check(&rows[2..], h.clone()),
            vec![(Some(1), "deleted"), (None, "registry")]
        );
        // A forged anchor (the wrong hash) breaks the first kept link.
        let forged = Anchor {
            first_version: 3,
            prev_hash: vec![7; 32],
        };
        assert_eq!(
            check_from(Some(forged), &rows[2..], h.clone()),
            vec![(Some(3), "modified")]
        );
        // A first kept event deleted after the cut is still found.
        let mut gap = chain(5);
        gap.remove(2);
        assert_eq!(
            check_from(Some(cut(&rows, 3)), &gap[2..], h.clone()),
            vec![(Some(3), "deleted")]
        );
        // The registry's first_at may lie before the first kept event, never after it.
        let mut late = h.unwrap();
        late.first_at = Some(rows[4].2.created_at_unix_us);
        assert_eq!(
            check_from(Some(cut(&rows, 3)), &rows[2..], Some(late)),
            vec![(None, "registry")]
        );
    }

    #[test]
    fn swapped_versions_are_found() {
        let mut rows = chain(4);
        let h = head(&rows);
        rows[1].2.stream_version = 3;
        rows[2].2.stream_version = 2;
        rows.swap(1, 2);
        rows[1].0 = 2;
        rows[2].0 = 3;
        let found = check(&rows, h);
        assert!(found.contains(&(Some(2), "modified")), "{found:?}");
    }
}
