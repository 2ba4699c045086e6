//! Input rules for appends, reducers and feed reads. Each returns an [`Invalid`] carrying the
//! SQLSTATE we document; the extension only raises it.

/// Longest accepted `stream_id` or `event_type`, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    /// SQLSTATE 22004
    Null(String),
    /// SQLSTATE 22023
    Value(String),
    /// SQLSTATE 54000
    TooLarge(String),
}

/// Names a batch element in messages: "event 3: ..." (1-based), nothing for a single append.
fn at(ordinal: Option<i32>) -> String {
    ordinal.map(|n| format!("event {n}: ")).unwrap_or_default()
}

/// `stream_id` and `event_type`: present, non-empty, at most 255 bytes, no control characters
/// (they would make psql output and log lines lie about what was stored).
pub fn check_name(what: &str, value: Option<&str>, ordinal: Option<i32>) -> Result<(), Invalid> {
    let p = at(ordinal);
    let v = value.ok_or_else(|| Invalid::Null(format!("{p}{what} must not be NULL")))?;
    if v.is_empty() {
        return Err(Invalid::Value(format!("{p}{what} must not be empty")));
    }
    if v.len() > MAX_NAME_BYTES {
        return Err(Invalid::Value(format!(
            "{p}{what} is {} bytes long, the limit is {MAX_NAME_BYTES}",
            v.len()
        )));
    }
    if let Some(c) = v.chars().find(|c| c.is_control()) {
        return Err(Invalid::Value(format!(
            "{p}{what} contains the control character U+{:04X}",
            c as u32
        )));
    }
    Ok(())
}

/// A JSON document that must be an object; `kind` is `jsonb_typeof` of it (NULL for SQL NULL,
/// `"missing"` when a batch element lacks the key).
pub fn check_object(what: &str, kind: Option<&str>, ordinal: Option<i32>) -> Result<(), Invalid> {
    let p = at(ordinal);
    match kind {
        Some("object") => Ok(()),
        None | Some("null") => Err(Invalid::Null(format!("{p}{what} must not be NULL"))),
        Some("missing") => Err(Invalid::Value(format!("{p}\"{what}\" is missing"))),
        Some(other) => Err(Invalid::Value(format!(
            "{p}{what} must be a JSON object, not {other}"
        ))),
    }
}

pub fn check_event(
    event_type: Option<&str>,
    data_kind: Option<&str>,
    metadata_kind: Option<&str>,
    event_version: Option<i32>,
    size_bytes: i64,
    max_bytes: i64,
    ordinal: Option<i32>,
) -> Result<(), Invalid> {
    check_name("event_type", event_type, ordinal)?;
    check_object("event_data", data_kind, ordinal)?;
    check_object("metadata", metadata_kind, ordinal)?;
    match event_version {
        None => {
            return Err(Invalid::Null(format!(
                "{}event_version must not be NULL",
                at(ordinal)
            )))
        }
        Some(v) if v < 1 => {
            return Err(Invalid::Value(format!(
                "{}event_version must be 1 or more, got {v}",
                at(ordinal)
            )))
        }
        _ => {}
    }
    if size_bytes > max_bytes {
        return Err(Invalid::TooLarge(format!(
            "{}event is {size_bytes} bytes, over event_store.max_event_bytes ({max_bytes})",
            at(ordinal)
        )));
    }
    Ok(())
}

/// The parts of an append that do not depend on each event.
pub fn check_append(
    stream_id: Option<&str>,
    expected_version: Option<i64>,
    batch_kind: &str,
    batch_len: i32,
) -> Result<(), Invalid> {
    check_name("stream_id", stream_id, None)?;
    if let Some(v) = expected_version.filter(|v| *v < 0) {
        return Err(Invalid::Value(format!(
            "expected_version must be NULL (any), 0 (no stream) or a version, got {v}"
        )));
    }
    check_array("events", batch_kind, batch_len)
}

/// A non-empty JSON array argument; `kind` is its `jsonb_typeof` ("null" for SQL NULL).
fn check_array(what: &str, kind: &str, len: i32) -> Result<(), Invalid> {
    match kind {
        "array" if len > 0 => Ok(()),
        "array" => Err(Invalid::Value(format!("{what} must not be an empty array"))),
        "null" => Err(Invalid::Null(format!("{what} must not be NULL"))),
        other => Err(Invalid::Value(format!(
            "{what} must be a JSON array, not {other}"
        ))),
    }
}

/// es_append_multi's argument: a non-empty JSON array (`kind` is its `jsonb_typeof`).
pub fn check_multi(kind: &str, len: i32) -> Result<(), Invalid> {
    check_array("appends", kind, len)
}

/// Names the element of es_append_multi's array (1-based) that an error is about.
pub fn in_entry(ordinal: i32, e: Invalid) -> Invalid {
    let at = |m: String| format!("append {ordinal}: {m}");
    match e {
        Invalid::Null(m) => Invalid::Null(at(m)),
        Invalid::Value(m) => Invalid::Value(at(m)),
        Invalid::TooLarge(m) => Invalid::TooLarge(at(m)),
    }
}

/// Feed reads: a non-negative page size, and a consumer group given whole or not at all.
pub fn check_feed_read(
    max_count: Option<i32>,
    member: Option<i32>,
    size: Option<i32>,
) -> Result<(), Invalid> {
    if let Some(n) = max_count.filter(|n| *n < 0) {
        return Err(Invalid::Value(format!(
            "max_count must not be negative, got {n}"
        )));
    }
    match (member, size) {
        (None, None) => Ok(()),
        (Some(m), Some(s)) if s >= 1 && (0..s).contains(&m) => Ok(()),
        (Some(m), Some(s)) => Err(Invalid::Value(format!(
            "consumer_group_member must be in 0..{s} and consumer_group_size at least 1, got member {m} of {s}"
        ))),
        _ => Err(Invalid::Value(
            "consumer_group_member and consumer_group_size go together: give both or neither".into(),
        )),
    }
}

/// A reducer definition: category `*` or a category name without `-` (stream ids are
/// `category-id`), event type `*` or a valid name, and a rule that parses.
pub fn check_reducer(
    category: Option<&str>,
    event_type: Option<&str>,
    rule: Option<&serde_json::Value>,
) -> Result<(), Invalid> {
    check_name("category", category, None)?;
    if category.is_some_and(|c| c.contains('-')) {
        return Err(Invalid::Value(
            "category must not contain \"-\": a stream's category is its id up to the first \"-\""
                .into(),
        ));
    }
    check_name("event_type", event_type, None)?;
    let rule = rule.ok_or_else(|| Invalid::Null("rule must not be NULL".into()))?;
    crate::fold::rules::parse_rule(rule)
        .map(drop)
        .map_err(|e| Invalid::Value(format!("invalid reducer rule: {e}")))
}

/// Nesting beyond the limit is refused: a fold recurses once per level.
pub fn check_depth(
    what: &str,
    depth: usize,
    limit: usize,
    ordinal: Option<i32>,
) -> Result<(), Invalid> {
    if depth > limit {
        return Err(Invalid::TooLarge(format!(
            "{}{what} nests arrays and objects more than {limit} levels deep, over event_store.max_event_depth",
            at(ordinal)
        )));
    }
    Ok(())
}

/// A batch element's `version` as JSON text: an integer out of `integer`'s range is refused
/// here (22023, as a version below 1 is) rather than by the cast (22003). Anything that is not
/// an integer at all is left to the cast, which says so (22P02).
pub fn check_version_range(text: &str, ordinal: Option<i32>) -> Result<(), Invalid> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    let fits = digits.trim_start_matches('0').len() <= 10
        && text.parse::<i64>().is_ok_and(|v| i32::try_from(v).is_ok());
    if fits {
        return Ok(());
    }
    let shown: String = text.chars().take(20).collect();
    let more = if shown.len() < text.len() { "..." } else { "" };
    Err(Invalid::Value(format!(
        "{}version {shown}{more} is out of range: an event version is from 1 to {}",
        at(ordinal),
        i32::MAX
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_out_of_integer_range() {
        for ok in [
            "1",
            "2147483647",
            "-2147483648",
            "0",
            "1.5",
            "x",
            "",
            "-",
            "1e3",
            "00000000001",
            " 7 ",
            "+3",
        ] {
            assert_eq!(check_version_range(ok, Some(1)), Ok(()), "{ok}");
        }
        for bad in [
            "2147483648",
            "-2147483649",
            "99999999999999999999999",
            "00000000002147483648",
            " 2147483648 ",
        ] {
            assert!(
                matches!(check_version_range(bad, Some(2)), Err(Invalid::Value(m)) if m.starts_with("event 2: version")),
                "{bad}"
            );
        }
    }

    #[test]
    fn names() {
        assert_eq!(check_name("stream_id", Some("user-1"), None), Ok(()));
        assert!(matches!(
            check_name("stream_id", None, None),
            Err(Invalid::Null(_))
        ));
        assert!(matches!(
            check_name("stream_id", Some(""), None),
            Err(Invalid::Value(_))
        ));
        assert!(
            matches!(check_name("x", Some("a\u{7}b"), None), Err(Invalid::Value(m)) if m.contains("U+0007"))
        );
        assert!(matches!(
            check_name("x", Some("a\nb"), None),
            Err(Invalid::Value(_))
        ));
        assert_eq!(check_name("x", Some(&"é".repeat(127)), None), Ok(()));
        assert!(matches!(
            check_name("x", Some(&"é".repeat(128)), None),
            Err(Invalid::Value(_))
        ));
    }

    #[test]
    fn objects() {
        assert_eq!(check_object("event_data", Some("object"), None), Ok(()));
        assert!(matches!(
            check_object("event_data", None, None),
            Err(Invalid::Null(_))
        ));
        assert!(matches!(
            check_object("event_data", Some("null"), None),
            Err(Invalid::Null(_))
        ));
        assert!(
            matches!(check_object("data", Some("missing"), Some(2)), Err(Invalid::Value(m)) if m == "event 2: \"data\" is missing")
        );
        assert!(
            matches!(check_object("event_data", Some("array"), None), Err(Invalid::Value(m)) if m.ends_with("not array"))
        );
    }

    #[test]
    fn events() {
        let ok = |v, size| {
            check_event(
                Some("T"),
                Some("object"),
                Some("object"),
                v,
                size,
                100,
                None,
            )
        };
        assert_eq!(ok(Some(1), 100), Ok(()));
        assert!(matches!(ok(Some(0), 10), Err(Invalid::Value(_))));
        assert!(matches!(ok(None, 10), Err(Invalid::Null(_))));
        assert!(matches!(ok(Some(1), 101), Err(Invalid::TooLarge(_))));
    }

    #[test]
    fn depths() {
        assert_eq!(check_depth("event_data", 64, 64, None), Ok(()));
        assert!(
            matches!(check_depth("event_data", 65, 64, Some(2)), Err(Invalid::TooLarge(m)) if m.starts_with("event 2: event_data nests"))
        );
    }

    #[test]
    fn feed_reads() {
        assert_eq!(check_feed_read(Some(10), None, None), Ok(()));
        assert_eq!(check_feed_read(None, Some(0), Some(1)), Ok(()));
        assert_eq!(check_feed_read(Some(0), Some(3), Some(4)), Ok(()));
        assert!(check_feed_read(Some(-1), None, None).is_err());
        assert!(check_feed_read(None, Some(4), Some(4)).is_err());
        assert!(check_feed_read(None, Some(-1), Some(4)).is_err());
        assert!(check_feed_read(None, Some(0), Some(0)).is_err());
        assert!(check_feed_read(None, Some(0), None).is_err());
        assert!(check_feed_read(None, None, Some(2)).is_err());
    }

    #[test]
    fn appends() {
        assert_eq!(check_append(Some("s"), None, "array", 1), Ok(()));
        assert_eq!(check_append(Some("s"), Some(0), "array", 1), Ok(()));
        assert!(matches!(
            check_append(Some("s"), Some(-1), "array", 1),
            Err(Invalid::Value(_))
        ));
        assert!(matches!(
            check_append(Some("s"), None, "array", 0),
            Err(Invalid::Value(_))
        ));
        assert!(matches!(
            check_append(Some("s"), None, "object", 1),
            Err(Invalid::Value(_))
        ));
        assert!(matches!(
            check_append(Some("s"), None, "null", 0),
            Err(Invalid::Null(_))
        ));
        assert!(matches!(
            check_append(None, None, "array", 1),
            Err(Invalid::Null(_))
        ));
    }

    #[test]
    fn reducers() {
        let rule = serde_json::json!({"op": "set", "path": "/email", "from": "/newEmail"});
        assert_eq!(
            check_reducer(Some("user"), Some("UserEmailChanged"), Some(&rule)),
            Ok(())
        );
        assert_eq!(check_reducer(Some("*"), Some("*"), Some(&rule)), Ok(()));
        assert!(matches!(
            check_reducer(Some("user-1"), Some("T"), Some(&rule)),
            Err(Invalid::Value(_))
        ));
        assert!(matches!(
            check_reducer(None, Some("T"), Some(&rule)),
            Err(Invalid::Null(_))
        ));
        assert!(matches!(
            check_reducer(Some("user"), Some("T"), None),
            Err(Invalid::Null(_))
        ));
        let bad = serde_json::json!({"op": "set"});
        assert!(
            matches!(check_reducer(Some("user"), Some("T"), Some(&bad)), Err(Invalid::Value(m)) if m.contains("needs a \"path\""))
        );
    }

    #[test]
    fn multi_appends() {
        assert_eq!(check_multi("array", 2), Ok(()));
        assert!(matches!(check_multi("array", 0), Err(Invalid::Value(_))));
        assert!(matches!(check_multi("null", 0), Err(Invalid::Null(_))));
        assert!(matches!(check_multi("object", 0), Err(Invalid::Value(m)) if m.contains("object")));
        assert_eq!(
            in_entry(3, Invalid::Null("stream_id must not be NULL".into())),
            Invalid::Null("append 3: stream_id must not be NULL".into())
        );
    }
}
