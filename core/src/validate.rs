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
/// Returns the name.
pub fn check_name<'a>(
    what: &str,
    value: Option<&'a str>,
    ordinal: Option<i32>,
) -> Result<&'a str, Invalid> {
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
    Ok(v)
}

/// A JSON document that must be an object: `value` with its `jsonb_typeof` as `kind`
/// (`"null"` for SQL NULL, `"missing"` when a batch element lacks the key). Returns the value.
pub fn check_object<T>(
    what: &str,
    value: Option<T>,
    kind: &str,
    ordinal: Option<i32>,
) -> Result<T, Invalid> {
    let p = at(ordinal);
    match (value, kind) {
        (Some(v), "object") => Ok(v),
        (_, "missing") => Err(Invalid::Value(format!("{p}\"{what}\" is missing"))),
        (_, "null" | "object") => Err(Invalid::Null(format!("{p}{what} must not be NULL"))),
        (_, other) => Err(Invalid::Value(format!(
            "{p}{what} must be a JSON object, not {other}"
        ))),
    }
}

/// One event: its type, data and metadata (each with its `jsonb_typeof`, as for
/// [`check_object`]), version and size, in that order. Returns the type, data and metadata.
#[allow(clippy::too_many_arguments)]
pub fn check_event<'a, T>(
    event_type: Option<&'a str>,
    data: (Option<T>, &str),
    metadata: (Option<T>, &str),
    event_version: Option<i32>,
    size_bytes: i64,
    max_bytes: i64,
    ordinal: Option<i32>,
) -> Result<(&'a str, T, T), Invalid> {
    let event_type = check_name("event_type", event_type, ordinal)?;
    let data = check_object("event_data", data.0, data.1, ordinal)?;
    let metadata = check_object("metadata", metadata.0, metadata.1, ordinal)?;
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
    Ok((event_type, data, metadata))
}

/// The parts of an append that do not depend on each event: the stream, the expected version
/// and the events (a JSON array: the value with its `jsonb_typeof` and length). Returns the
/// stream id and the events.
pub fn check_append<'a, T>(
    stream_id: Option<&'a str>,
    expected_version: Option<i64>,
    events: (Option<T>, &str, i32),
) -> Result<(&'a str, T), Invalid> {
    let stream_id = check_name("stream_id", stream_id, None)?;
    if let Some(v) = expected_version.filter(|v| *v < 0) {
        return Err(Invalid::Value(format!(
            "expected_version must be NULL (any), 0 (no stream) or a version, got {v}"
        )));
    }
    let events = check_array("events", events.0, events.1, events.2)?;
    Ok((stream_id, events))
}

/// A non-empty JSON array argument: the value, its `jsonb_typeof` ("null" for SQL NULL) and
/// its length. Returns the value.
fn check_array<T>(what: &str, value: Option<T>, kind: &str, len: i32) -> Result<T, Invalid> {
    match (value, kind) {
        (Some(v), "array") if len > 0 => Ok(v),
        (Some(_), "array") => Err(Invalid::Value(format!("{what} must not be an empty array"))),
        (_, "null" | "array") => Err(Invalid::Null(format!("{what} must not be NULL"))),
        (_, other) => Err(Invalid::Value(format!(
            "{what} must be a JSON array, not {other}"
        ))),
    }
}

/// es_append_multi's argument: a non-empty JSON array (`kind` is its `jsonb_typeof`).
pub fn check_multi<T>(appends: Option<T>, kind: &str, len: i32) -> Result<T, Invalid> {
    check_array("appends", appends, kind, len)
}

/// Names the event (1-based) of a batch that an error is about; nothing for a single append.
pub fn in_event(ordinal: Option<i32>, e: Invalid) -> Invalid {
    let p = at(ordinal);
    match e {
        Invalid::Null(m) => Invalid::Null(format!("{p}{m}")),
        Invalid::Value(m) => Invalid::Value(format!("{p}{m}")),
        Invalid::TooLarge(m) => Invalid::TooLarge(format!("{p}{m}")),
    }
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
        assert_eq!(check_name("stream_id", Some("user-1"), None), Ok("user-1"));
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
        assert_eq!(
            check_name("x", Some(&"é".repeat(127)), None).map(str::len),
            Ok(254)
        );
        assert!(matches!(
            check_name("x", Some(&"é".repeat(128)), None),
            Err(Invalid::Value(_))
        ));
    }

    #[test]
    fn objects() {
        assert_eq!(check_object("event_data", Some(1), "object", None), Ok(1));
        assert!(matches!(
            check_object::<()>("event_data", None, "null", None),
            Err(Invalid::Null(_))
        ));
        assert!(matches!(
            check_object("event_data", Some(()), "null", None),
            Err(Invalid::Null(_))
        ));
        assert!(
            matches!(check_object::<()>("data", None, "missing", Some(2)), Err(Invalid::Value(m)) if m == "event 2: \"data\" is missing")
        );
        assert!(
            matches!(check_object("event_data", Some(()), "array", None), Err(Invalid::Value(m)) if m.ends_with("not array"))
        );
    }

    #[test]
    fn events() {
        let ok = |v, size| {
            check_event(
                Some("T"),
                (Some(1), "object"),
                (Some(2), "object"),
                v,
                size,
                100,
                None,
            )
        };
        assert_eq!(ok(Some(1), 100), Ok(("T", 1, 2)));
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
        assert_eq!(
            check_append(Some("s"), None, (Some(()), "array", 1)),
            Ok(("s", ()))
        );
        assert_eq!(
            check_append(Some("s"), Some(0), (Some(()), "array", 1)),
            Ok(("s", ()))
        );
        assert!(matches!(
            check_append(Some("s"), Some(-1), (Some(()), "array", 1)),
            Err(Invalid::Value(_))
        ));
        assert!(matches!(
            check_append(Some("s"), None, (Some(()), "array", 0)),
            Err(Invalid::Value(_))
        ));
        assert!(matches!(
            check_append(Some("s"), None, (Some(()), "object", 1)),
            Err(Invalid::Value(_))
        ));
        assert!(matches!(
            check_append::<()>(Some("s"), None, (None, "null", 0)),
            Err(Invalid::Null(_))
        ));
        assert!(matches!(
            check_append(None, None, (Some(()), "array", 1)),
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
        assert_eq!(check_multi(Some(()), "array", 2), Ok(()));
        assert!(matches!(
            check_multi(Some(()), "array", 0),
            Err(Invalid::Value(_))
        ));
        assert!(matches!(
            check_multi::<()>(None, "null", 0),
            Err(Invalid::Null(_))
        ));
        assert!(
            matches!(check_multi(Some(()), "object", 0), Err(Invalid::Value(m)) if m.contains("object"))
        );
        assert_eq!(
            in_entry(3, Invalid::Null("stream_id must not be NULL".into())),
            Invalid::Null("append 3: stream_id must not be NULL".into())
        );
    }
}
