//! The event catalog's rules: what a definition of an event type may say (a JSON Schema for
//! its data at a version, the paths that hold personal data and whose data it is), a
//! category's catalog mode, checking event data against a schema, and checking an upcast's
//! definition (fold/upcasts.rs applies them).
use crate::fold::rules::parse_upcast_rule;
use crate::json::pointer::{lookup, parse_pointer, Pointer};
use crate::stream::category;
use crate::validate::{check_name, Invalid};
use serde_json::Value;

/// How a category's appends use the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Types with a schema at the event's version are validated; others are accepted.
    Open,
    /// As open, and an event whose type has no definition at its version is refused.
    Strict,
    /// Nothing is checked.
    Off,
}

impl Mode {
    pub fn parse(mode: Option<&str>) -> Result<Mode, Invalid> {
        match mode {
            Some("open") => Ok(Mode::Open),
            Some("strict") => Ok(Mode::Strict),
            Some("off") => Ok(Mode::Off),
            None => Err(Invalid::Null("mode must not be NULL".into())),
            Some(other) => Err(Invalid::Value(format!(
                "catalog mode \"{other}\" is not one of open, strict, off"
            ))),
        }
    }
}

/// Whose personal data an event holds: a JSON Pointer into its data, or into its metadata
/// when written `metadata:/path`, or `stream`: the stream's id after its category (`user-789`
/// is 789's), for events that live in their subject's stream without naming them.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    Data(Pointer),
    Metadata(Pointer),
    Stream,
}

/// What a catalog entry says of personal data: the paths of `event_data` that hold it and
/// whose it is (`subject_text` as written, for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Personal {
    pub paths: Vec<Pointer>,
    pub subject: Subject,
    pub subject_text: String,
}

impl Personal {
    /// From a catalog row; None when it declares no personal data.
    pub fn parse(paths: &[String], subject: Option<&str>) -> Result<Option<Personal>, String> {
        if paths.is_empty() {
            return Ok(None);
        }
        let subject_text = subject.ok_or("personal data without a subject")?;
        Ok(Some(Personal {
            paths: paths
                .iter()
                .map(|p| parse_pointer(p))
                .collect::<Result<_, _>>()?,
            subject: parse_subject(subject_text)?,
            subject_text: subject_text.to_string(),
        }))
    }
}

impl Subject {
    /// The text naming an event's subject: a non-empty string or a number at the pointer, or
    /// the stream's id after its category's '-'; None when there is none. Sealing and the
    /// subject export both ask this, so they agree on whose an event is.
    pub fn of(&self, stream_id: &str, data: &Value, metadata: &Value) -> Option<String> {
        let v = match self {
            Subject::Data(p) => lookup(data, p),
            Subject::Metadata(p) => lookup(metadata, p),
            Subject::Stream => {
                let id = stream_id.get(category(stream_id).len() + 1..)?;
                return (!id.is_empty()).then(|| id.to_string());
            }
        }?;
        match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

pub fn parse_subject(s: &str) -> Result<Subject, String> {
    if s == "stream" {
        return Ok(Subject::Stream);
    }
    let (metadata, pointer) = match s.strip_prefix("metadata:") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let p = parse_pointer(pointer)?;
    if p.is_empty() {
        return Err(format!(
            "subject \"{s}\" must point at a member, not the whole document"
        ));
    }
    Ok(if metadata {
        Subject::Metadata(p)
    } else {
        Subject::Data(p)
    })
}

/// A compiled JSON Schema (draft 2020-12 unless the schema's `$schema` names another draft;
/// `format` is asserted; no remote references are fetched).
pub struct Schema(jsonschema::Validator);

/// The first way an event's data breaks its schema. The message never quotes the value: it
/// may be personal data, and errors end up in logs.
#[derive(Debug, PartialEq)]
pub struct Violation {
    /// A JSON Pointer into the event data; "" is the document itself.
    pub path: String,
    /// The schema keyword broken (type, required, pattern, ...).
    pub rule: String,
    pub message: String,
}

impl Schema {
    pub fn compile(schema: &Value) -> Result<Schema, String> {
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(schema)
            .map(Schema)
            .map_err(|e| format!("schema is not a valid JSON Schema: {e}"))
    }

    pub fn check(&self, data: &Value) -> Result<(), Violation> {
        self.0.validate(data).map_err(|e| Violation {
            path: e.instance_path().to_string(),
            rule: e.kind().keyword().to_string(),
            message: e.masked().to_string(),
        })
    }
}

/// Checks a definition for es_define_event_type and compiles its schema. A subject is needed
/// when personal data is declared: erasure works per subject.
pub fn check_definition(
    event_type: Option<&str>,
    version: Option<i32>,
    schema: Option<&Value>,
    personal_data: &[Option<&str>],
    subject: Option<&str>,
) -> Result<Option<Schema>, Invalid> {
    check_name("event_type", event_type, None)?;
    check_version(version)?;
    let compiled = schema
        .map(|s| match s {
            Value::Object(_) | Value::Bool(_) => Schema::compile(s).map_err(Invalid::Value),
            other => Err(Invalid::Value(format!(
                "schema must be a JSON Schema (an object or a boolean), not {other}"
            ))),
        })
        .transpose()?;
    let mut seen = Vec::new();
    for path in personal_data {
        let path = path.ok_or_else(|| Invalid::Null("personal_data must not hold NULL".into()))?;
        let p = parse_pointer(path).map_err(|e| Invalid::Value(format!("personal_data: {e}")))?;
        if p.is_empty() {
            return Err(Invalid::Value(
                "personal_data: \"\" would be the whole event; name the members that hold personal data".into(),
            ));
        }
        if seen.contains(&path) {
            return Err(Invalid::Value(format!(
                "personal_data names \"{path}\" twice"
            )));
        }
        seen.push(path);
    }
    match subject {
        Some(s) => {
            parse_subject(s).map_err(Invalid::Value)?;
        }
        None if !personal_data.is_empty() => {
            return Err(Invalid::Value(
                "personal_data needs a subject: the JSON Pointer naming whose data it is".into(),
            ))
        }
        None => {}
    }
    Ok(compiled)
}

pub fn check_version(version: Option<i32>) -> Result<i32, Invalid> {
    match version {
        None => Err(Invalid::Null("version must not be NULL".into())),
        Some(v) if v < 1 => Err(Invalid::Value(format!(
            "version must be 1 or more, got {v}"
        ))),
        Some(v) => Ok(v),
    }
}

/// Checks an upcast for es_define_upcast: its type, the version it starts from, its rule.
pub fn check_upcast(
    event_type: Option<&str>,
    from_version: Option<i32>,
    rule: Option<&Value>,
) -> Result<(), Invalid> {
    check_name("event_type", event_type, None)?;
    check_version(from_version)?;
    let rule = rule.ok_or_else(|| Invalid::Null("rule must not be NULL".into()))?;
    parse_upcast_rule(rule).map_err(|e| Invalid::Value(format!("invalid upcast: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn modes() {
        assert_eq!(Mode::parse(Some("strict")), Ok(Mode::Strict));
        assert!(matches!(Mode::parse(None), Err(Invalid::Null(_))));
        assert!(matches!(
            Mode::parse(Some("Strict")),
            Err(Invalid::Value(_))
        ));
    }

    #[test]
    fn subjects() {
        assert_eq!(
            parse_subject("/userId"),
            Ok(Subject::Data(vec!["userId".into()]))
        );
        assert_eq!(
            parse_subject("metadata:/actor/id"),
            Ok(Subject::Metadata(vec!["actor".into(), "id".into()]))
        );
        assert!(parse_subject("").is_err());
        assert!(parse_subject("metadata:").is_err());
        assert!(parse_subject("userId").is_err());
        assert_eq!(
            parse_subject("metadata:/a~1b/c"),
            Ok(Subject::Metadata(vec!["a/b".into(), "c".into()]))
        );
        assert_eq!(parse_subject("stream"), Ok(Subject::Stream));
    }

    #[test]
    fn whose_an_event_is() {
        let data = json!({"userId": "u-1", "n": 7, "empty": "", "flag": true, "o": {"id": 3}});
        let meta = json!({"actor": {"id": "a-9"}});
        let of = |s: &str, stream: &str| parse_subject(s).unwrap().of(stream, &data, &meta);
        assert_eq!(of("/userId", "user-1"), Some("u-1".into()));
        assert_eq!(of("/n", "user-1"), Some("7".into()));
        assert_eq!(of("/o/id", "user-1"), Some("3".into()));
        assert_eq!(of("metadata:/actor/id", "user-1"), Some("a-9".into()));
        // Nothing, an empty string, a boolean or an object names nobody.
        for none in ["/missing", "/empty", "/flag", "/o"] {
            assert_eq!(of(none, "user-1"), None, "{none}");
        }
        assert_eq!(of("stream", "user-42-b"), Some("42-b".into()));
        assert_eq!(of("stream", "user"), None);
        assert_eq!(of("stream", "user-"), None);
    }

    #[test]
    fn definitions() {
        let s = json!({"type": "object"});
        assert!(check_definition(Some("T"), Some(1), Some(&s), &[], None)
            .unwrap()
            .is_some());
        assert!(check_definition(Some("T"), Some(1), None, &[], None)
            .unwrap()
            .is_none());
        let bad = |schema: Option<&Value>, pd: &[Option<&str>], subject: Option<&str>| {
            check_definition(Some("T"), Some(1), schema, pd, subject).err()
        };
        assert!(matches!(
            bad(Some(&json!(3)), &[], None),
            Some(Invalid::Value(_))
        ));
        assert!(matches!(
            bad(Some(&json!({"type": "no-such-type"})), &[], None),
            Some(Invalid::Value(_))
        ));
        assert!(matches!(
            bad(None, &[Some("/email")], None),
            Some(Invalid::Value(_))
        ));
        assert!(matches!(
            bad(None, &[None], Some("/id")),
            Some(Invalid::Null(_))
        ));
        assert!(matches!(
            bad(None, &[Some("email")], Some("/id")),
            Some(Invalid::Value(_))
        ));
        assert!(matches!(
            bad(None, &[Some("")], Some("/id")),
            Some(Invalid::Value(_))
        ));
        assert!(matches!(
            bad(None, &[Some("/a"), Some("/a")], Some("/id")),
            Some(Invalid::Value(_))
        ));
        assert!(bad(None, &[Some("/email")], Some("/id")).is_none());
        assert!(matches!(
            check_definition(None, Some(1), None, &[], None),
            Err(Invalid::Null(_))
        ));
        assert!(matches!(
            check_definition(Some("T"), Some(0), None, &[], None),
            Err(Invalid::Value(_))
        ));
    }

    #[test]
    fn violations_name_the_path_and_rule_and_hide_the_value() {
        let schema = Schema::compile(&json!({
            "type": "object",
            "required": ["email", "address"],
            "properties": {
                "email": {"type": "string", "pattern": "^[^@]+@[^@]+$"},
                "role": {"enum": ["admin", "user"]},
                "address": {"type": "object", "properties": {"zip": {"type": "string", "format": "ipv4"}}}
            }
        }))
        .unwrap();
        let ok = json!({"email": "a@b", "address": {}});
        assert_eq!(schema.check(&ok), Ok(()));
        let v = schema
            .check(&json!({"email": "secret-address", "address": {}}))
            .unwrap_err();
        assert_eq!((v.path.as_str(), v.rule.as_str()), ("/email", "pattern"));
        assert!(!v.message.contains("secret-address"), "{}", v.message);
        let v = schema.check(&json!({"email": "a@b"})).unwrap_err();
        assert_eq!((v.path.as_str(), v.rule.as_str()), ("", "required"));
        let v = schema
            .check(&json!({"email": "a@b", "address": {}, "role": "root"}))
            .unwrap_err();
        assert_eq!((v.path.as_str(), v.rule.as_str()), ("/role", "enum"));
        let v = schema
            .check(&json!({"email": "a@b", "address": {"zip": 7}}))
            .unwrap_err();
        assert_eq!((v.path.as_str(), v.rule.as_str()), ("/address/zip", "type"));
        let v = schema
            .check(&json!({"email": "a@b", "address": {"zip": "not-an-ip"}}))
            .unwrap_err();
        assert_eq!(
            (v.path.as_str(), v.rule.as_str()),
            ("/address/zip", "format")
        );
    }

    #[test]
    fn numbers_are_checked_exactly() {
        let schema = Schema::compile(&json!({
            "properties": {
                "qty": {"type": "integer", "minimum": 1},
                "price": {"type": "number", "multipleOf": 0.01, "maximum": 1e6}
            }
        }))
        .unwrap();
        let check = |v: Value| schema.check(&v).map_err(|v| v.rule);
        assert_eq!(check(json!({"qty": 3, "price": 19.99})), Ok(()));
        assert_eq!(check(json!({"qty": 1.5})), Err("type".into()));
        assert_eq!(check(json!({"qty": 0})), Err("minimum".into()));
        assert_eq!(check(json!({"price": 19.999})), Err("multipleOf".into()));
        assert_eq!(check(json!({"price": 2e6})), Err("maximum".into()));
        let big: Value =
            serde_json::from_str(r#"{"qty": 123456789012345678901234567890}"#).unwrap();
        assert_eq!(check(big), Ok(()));
    }

    #[test]
    fn remote_references_are_not_fetched() {
        assert!(Schema::compile(&json!({"$ref": "http://127.0.0.1:9/schema.json"})).is_err());
    }

    #[test]
    fn upcast_rules_are_checked() {
        assert!(check_upcast(
            Some("T"),
            Some(1),
            Some(&json!({"op": "rename", "from": "/a"}))
        )
        .is_err());
        assert!(check_upcast(
            Some("T"),
            Some(1),
            Some(&json!({"op": "rename", "from": "", "path": "/a"}))
        )
        .is_err());
        assert!(check_upcast(Some("T"), Some(1), Some(&json!({"op": "frobnicate"}))).is_err());
        assert!(matches!(
            check_upcast(Some("T"), Some(1), None),
            Err(Invalid::Null(_))
        ));
        assert!(check_upcast(Some("T"), Some(1), Some(&json!([{"op": "rename", "from": "/a", "path": "/b"}, {"op": "remove", "path": "/c"}]))).is_ok());
        // Reducers cannot rename.
        assert!(crate::fold::rules::parse_rule(
            &json!({"op": "rename", "from": "/a", "path": "/b"})
        )
        .is_err());
    }
}
