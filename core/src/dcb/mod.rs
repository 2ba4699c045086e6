//! Dynamic Consistency Boundary (<https://dcb.events>): events carry tags, and an append can be
//! conditioned on a query ("fail if any event matching it was stored after position P").
//!
//! A query is a list of items; an event matches an item when the item names no types or the
//! event's type is one of them, and the event carries every tag of the item. A query matches an
//! event when any item does, and a query without items matches every event.
//!
//! # The locking rule (`locks`)
//! A conditional append checks its query and writes in one transaction. Two of them must never
//! both commit when either's query matches an event of the other, and an append must not wait
//! for one whose events and query it cannot meet. Every append, conditional or not, takes
//! before its stream locks:
//! - for every tag of every event it writes, the tag's key in a mode writers share
//!   (`Mode::Write`, PostgreSQL's RowExclusiveLock on an advisory lock tag);
//! - for every item of its query that names tags, the key of one of them (the least) in a
//!   mode checkers share and writers do not (`Mode::Check`, ShareLock), or both at once
//!   (`Mode::Both`, ShareRowExclusiveLock, which conflicts with itself) when it also writes
//!   that tag;
//! - for an item naming no tags (or a query without items), the event table itself in
//!   ShareRowExclusiveLock, which every append's RowExclusiveLock on it conflicts with.
//!
//! Complete: an event matching an item with tags carries each of them, so its writer holds
//! the key the checker takes, in a conflicting mode; an item without tags conflicts with every
//! append through the table. Keys are taken in one order (sorted), so checkers never deadlock
//! one another. Appends whose events and items share no tag take no common key and never wait
//! for each other; the price of a query without tags is that it waits for every append in
//! flight and holds the others off until it commits.
use crate::validate::{check_name, Invalid};
use serde_json::Value;

/// Most tags an event may carry.
pub const MAX_TAGS: usize = 64;

/// The `field4` of the advisory lock tags DCB keys use: SQL's advisory locks use 1 and 2,
/// so no `pg_advisory_lock` call can take or block one.
pub const LOCK_CLASS: u16 = 0x4443;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Item {
    pub types: Vec<String>,
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub query: Query,
    pub after: Option<i64>,
}

impl Item {
    pub fn matches(&self, event_type: &str, tags: &[String]) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
            && self.tags.iter().all(|t| tags.contains(t))
    }
}

impl Query {
    pub fn matches(&self, event_type: &str, tags: &[String]) -> bool {
        self.items.is_empty() || self.items.iter().any(|i| i.matches(event_type, tags))
    }

    /// The items that narrow what the query matches, each to be looked for; `None` when it
    /// matches every event (no items, or an item naming neither types nor tags).
    pub fn narrowing(&self) -> Option<&[Item]> {
        let everything = self.items.is_empty()
            || self
                .items
                .iter()
                .any(|i| i.types.is_empty() && i.tags.is_empty());
        (!everything).then_some(&self.items)
    }
}

fn invalid(what: &str, message: impl std::fmt::Display) -> Invalid {
    Invalid::Value(format!("{what}: {message}"))
}

/// A JSON array of strings (absent or null: none).
fn strings(what: &str, v: Option<&Value>) -> Result<Vec<String>, Invalid> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(vec![]);
    };
    let Value::Array(a) = v else {
        return Err(invalid(what, "must be a JSON array of strings"));
    };
    a.iter()
        .map(|e| match e {
            Value::String(s) => Ok(s.clone()),
            _ => Err(invalid(what, "must hold strings only")),
        })
        .collect()
}

/// An array of names (a query item's types or tags): at most `limit`, each as `check_name`
/// wants it.
fn names(what: &str, v: Option<&Value>, limit: usize) -> Result<Vec<String>, Invalid> {
    let names = strings(what, v)?;
    if names.len() > limit {
        return Err(invalid(
            what,
            format!("has {} entries, the limit is {limit}", names.len()),
        ));
    }
    for n in &names {
        check_name(what, Some(n), None)?;
    }
    Ok(names)
}

/// An event's tags from JSON: an array of strings (or absent or null: none), in order, as
/// `check_tags` wants them.
pub fn tags(v: Option<&Value>) -> Result<Vec<String>, Invalid> {
    let tags = strings("tags", v)?;
    check_tags(&tags)?;
    Ok(tags)
}

/// An event's tags: at most `MAX_TAGS`, each a name as `check_name` wants it, none twice.
pub fn check_tags(tags: &[String]) -> Result<(), Invalid> {
    if tags.len() > MAX_TAGS {
        return Err(invalid(
            "tags",
            format!("has {} entries, the limit is {MAX_TAGS}", tags.len()),
        ));
    }
    for (i, t) in tags.iter().enumerate() {
        check_name("tags", Some(t), None)?;
        if tags[..i].contains(t) {
            return Err(invalid("tags", format!("tag {t} is given twice")));
        }
    }
    Ok(())
}

/// A query, `{"items": [{"types": [...], "tags": [...]}, ...]}`.
pub fn query(v: &Value) -> Result<Query, Invalid> {
    let Value::Object(o) = v else {
        return Err(invalid("query", "must be a JSON object with the key items"));
    };
    if let Some(k) = o.keys().find(|k| *k != "items") {
        return Err(invalid("query", format!("unknown key {k}")));
    }
    let items = match o.get("items") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|i| {
                let Value::Object(io) = i else {
                    return Err(invalid("query item", "must be a JSON object"));
                };
                if let Some(k) = io.keys().find(|k| *k != "types" && *k != "tags") {
                    return Err(invalid("query item", format!("unknown key {k}")));
                }
                Ok(Item {
                    types: names("types", io.get("types"), 1024)?,
                    tags: names("tags", io.get("tags"), MAX_TAGS)?,
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("query", "items must be a JSON array")),
    };
    Ok(Query { items })
}

/// A condition, `{"fail_if_events_match": <query>, "after": <position or null>}`.
pub fn condition(v: &Value) -> Result<Condition, Invalid> {
    let Value::Object(o) = v else {
        return Err(invalid("condition", "must be a JSON object"));
    };
    if let Some(k) = o
        .keys()
        .find(|k| *k != "fail_if_events_match" && *k != "after")
    {
        return Err(invalid("condition", format!("unknown key {k}")));
    }
    let query = match o.get("fail_if_events_match") {
        None | Some(Value::Null) => Query::default(),
        Some(q) => query(q)?,
    };
    let after =
        match o.get("after") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(n.as_i64().filter(|a| *a >= 0).ok_or_else(|| {
                invalid("condition", "after must be a position (an integer >= 0)")
            })?),
            Some(_) => return Err(invalid("condition", "after must be a number or null")),
        };
    Ok(Condition { query, after })
}

/// How a key is held (see the module's comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Write,
    Check,
    Both,
}

impl Mode {
    fn with(self, other: Mode) -> Mode {
        if self == other {
            self
        } else {
            Mode::Both
        }
    }

    /// Whether two transactions holding a key in these modes conflict.
    pub fn conflicts(self, other: Mode) -> bool {
        !(self == other && self != Mode::Both)
    }
}

/// What an append locks before its streams.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Locks {
    /// The event table in ShareRowExclusiveLock: the query has an item without tags.
    pub table: bool,
    /// Keys, sorted, each once.
    pub keys: Vec<(u64, Mode)>,
}

impl Locks {
    /// Whether two appends holding these could not run at once (every append also holds the
    /// event table in RowExclusiveLock).
    pub fn conflicts(&self, other: &Locks) -> bool {
        self.table
            || other.table
            || self.keys.iter().any(|(k, m)| {
                other
                    .keys
                    .iter()
                    .any(|(k2, m2)| k == k2 && m.conflicts(*m2))
            })
    }
}

/// A tag's lock key: FNV-1a, 64 bits, over its UTF-8 bytes.
pub fn tag_key(tag: &str) -> u64 {
    crate::read::feed::stream_hash(tag)
}

/// The locks of an append writing events with `written` tags under `condition`.
pub fn locks<'a>(
    condition: Option<&Query>,
    written: impl IntoIterator<Item = &'a [String]>,
) -> Locks {
    let mut keys: Vec<(u64, Mode)> = vec![];
    let mut add = |key: u64, mode: Mode| match keys.iter_mut().find(|(k, _)| *k == key) {
        Some((_, m)) => *m = m.with(mode),
        None => keys.push((key, mode)),
    };
    for tags in written {
        for t in tags {
            add(tag_key(t), Mode::Write);
        }
    }
    let mut table = false;
    if let Some(q) = condition {
        table = q.items.is_empty();
        for item in &q.items {
            match item.tags.iter().min() {
                Some(t) => add(tag_key(t), Mode::Check),
                None => table = true,
            }
        }
    }
    keys.sort_unstable();
    Locks { table, keys }
}

/// # Watermarks
/// Beside the locks, every append raises, for each tag key it writes, a watermark to the last
/// position it took, before it commits (shared memory, one per bucket of keys and databases).
/// A checker holding an item's key finds every writer of a matching event committed or rolled
/// back, and its mark raised: a matching event carries every tag of the item, so the
/// watermark of any of them at or below the condition's position says that no matching event
/// came after it, without reading. Marks only go up and buckets are shared (a collision, or a
/// writer that rolled back, leaves a mark too high): a mark above the position says nothing,
/// and the check reads. Marks are kept since the server started: they speak for positions above
/// the `floor` a session read when it first checked (the last position handed out then),
/// every one of which an append took since.
pub const WATERMARK_BUCKETS: usize = 1 << 16;

/// The bucket of a tag key's watermark in a database.
pub fn watermark_bucket(database: u32, key: u64) -> usize {
    let mixed = key ^ u64::from(database).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((mixed ^ (mixed >> 32)) as usize) & (WATERMARK_BUCKETS - 1)
}

/// Whether a watermark says that no event of its key came after `after`: the position is at or
/// above the session's floor, and the mark at or below the position.
pub fn settled(after: i64, floor: i64, watermark: i64) -> bool {
    after >= floor && watermark <= after
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn matching_follows_the_specification() {
        let item = |types: &[&str], tags: &[&str]| Item {
            types: s(types),
            tags: s(tags),
        };
        let tags = s(&["course:1", "student:2"]);
        assert!(item(&[], &["course:1"]).matches("Joined", &tags));
        assert!(item(&["Joined", "Left"], &["course:1", "student:2"]).matches("Joined", &tags));
        assert!(!item(&["Left"], &["course:1"]).matches("Joined", &tags));
        assert!(!item(&[], &["course:1", "student:3"]).matches("Joined", &tags));
        assert!(item(&["Joined"], &[]).matches("Joined", &[]));
        assert!(item(&[], &[]).matches("Anything", &[]));
        assert!(Query::default().matches("Anything", &tags));
        let q = Query {
            items: vec![item(&[], &["x"]), item(&[], &["course:1"])],
        };
        assert!(q.matches("Joined", &tags));
        assert_eq!(q.narrowing(), Some(&q.items[..]));
        assert_eq!(Query::default().narrowing(), None);
        let everything = Query {
            items: vec![item(&[], &["x"]), item(&[], &[])],
        };
        assert_eq!(everything.narrowing(), None);
    }

    #[test]
    fn conditions_and_tags_are_read_or_refused() {
        let c = condition(&json!({"fail_if_events_match": {"items": [{"types": ["A"], "tags": ["t"]}]}, "after": 5})).unwrap();
        assert_eq!(c.after, Some(5));
        assert_eq!(
            c.query.items,
            vec![Item {
                types: s(&["A"]),
                tags: s(&["t"])
            }]
        );
        let c = condition(&json!({"fail_if_events_match": {"items": []}, "after": null})).unwrap();
        assert_eq!(
            c,
            Condition {
                query: Query::default(),
                after: None
            }
        );
        for bad in [
            json!([]),
            json!({"after": -1}),
            json!({"after": "5"}),
            json!({"after": 1.5}),
            json!({"fail_if_events_match": {"items": [{"tags": [""]}]}}),
            json!({"fail_if_events_match": {"items": [{"tags": [1]}]}}),
            json!({"fail_if_events_match": {"items": [{"tag": ["x"]}]}}),
            json!({"fail_if_events_match": {"items": {}}}),
            json!({"fail_if_events_match": {"items": []}, "before": 1}),
        ] {
            assert!(matches!(condition(&bad), Err(Invalid::Value(_))), "{bad}");
        }
        assert_eq!(tags(None).unwrap(), Vec::<String>::new());
        assert_eq!(tags(Some(&json!(["b", "a"]))).unwrap(), s(&["b", "a"]));
        assert!(tags(Some(&json!(["a", "a"]))).is_err());
        assert!(tags(Some(&json!(["a\u{1}"]))).is_err());
        assert!(tags(Some(&json!("a"))).is_err());
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| i.to_string()).collect();
        assert!(tags(Some(&json!(many))).is_err());
    }

    /// Every subset of `of`.
    fn subsets(of: &[&str]) -> Vec<Vec<String>> {
        (0..1u32 << of.len())
            .map(|m| {
                (0..of.len())
                    .filter(|i| m & (1 << i) != 0)
                    .map(|i| of[i].to_string())
                    .collect()
            })
            .collect()
    }

    /// The rule is complete: over every item and every event of a small universe, an
    /// append whose event matches a conditional append's item conflicts with it, whether or
    /// not it is conditional itself.
    #[test]
    fn an_append_a_query_could_match_always_conflicts_with_it() {
        let types = ["A", "B"];
        let tag_sets = subsets(&["x", "y", "z"]);
        let mut items = vec![];
        for ts in subsets(&types) {
            for tags in &tag_sets {
                items.push(Item {
                    types: ts.clone(),
                    tags: tags.clone(),
                });
            }
        }
        let mut checked = 0;
        for item in &items {
            let query = Query {
                items: vec![item.clone()],
            };
            // The checker writes an untagged event (its own writes only add conflicts).
            let checker = locks(Some(&query), [&[][..]]);
            for event_type in types {
                for tags in &tag_sets {
                    if !item.matches(event_type, tags) {
                        continue;
                    }
                    let writer = locks(None, [tags.as_slice()]);
                    assert!(
                        checker.conflicts(&writer),
                        "{item:?} vs {event_type} {tags:?}"
                    );
                    for other in &items {
                        let q = Query {
                            items: vec![other.clone()],
                        };
                        let both = locks(Some(&q), [tags.as_slice()]);
                        assert!(checker.conflicts(&both), "{item:?} vs {other:?} {tags:?}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 50);
        assert!(locks(Some(&Query::default()), []).table);
    }

    #[test]
    fn appends_on_disjoint_tags_take_no_common_key() {
        let q = |t: &str| Query {
            items: vec![Item {
                types: s(&["Joined"]),
                tags: s(&[t, "z"]),
            }],
        };
        let a = locks(Some(&q("a")), [s(&["a", "z"]).as_slice()]);
        let b = locks(Some(&q("b")), [s(&["b", "y"]).as_slice()]);
        assert!(!a.conflicts(&b));
        // Two writers of one tag without conditions share it.
        let w = locks(None, [s(&["a"]).as_slice()]);
        assert!(!w.conflicts(&locks(None, [s(&["a"]).as_slice()])));
        // Two checkers of one tag that also write it queue.
        let c = locks(Some(&q("a")), [s(&["a"]).as_slice()]);
        assert!(c.conflicts(&c));
        assert!(c.keys.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn a_watermark_settles_only_positions_it_speaks_for() {
        assert!(settled(10, 5, 10));
        assert!(settled(10, 10, 0));
        assert!(!settled(10, 5, 11), "a mark above the position");
        assert!(
            !settled(4, 5, 0),
            "a position below the floor: events from before the marks"
        );
        let b = watermark_bucket(1, tag_key("course:1"));
        assert!(b < WATERMARK_BUCKETS);
        assert_eq!(b, watermark_bucket(1, tag_key("course:1")));
        assert_ne!(b, watermark_bucket(2, tag_key("course:1")));
        // About 8 collisions expected of 1,000 random keys in 65,536 buckets.
        let spread: std::collections::HashSet<usize> = (0..1000)
            .map(|i| watermark_bucket(16384, tag_key(&format!("tag-{i}"))))
            .collect();
        assert!(spread.len() > 980, "{} buckets for 1000 tags", spread.len());
    }
}
