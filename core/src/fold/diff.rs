//! Forensics: what changed in a stream's state between two instants, and which event
//! changed it.
use crate::json::state::{check_stack, same, Map, State};
use serde_json::Value;

#[derive(Debug, PartialEq)]
pub struct Change {
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn sorted(m: &Map) -> Vec<&String> {
    let mut keys: Vec<_> = m.keys().collect();
    keys.sort();
    keys
}

/// What differs between two states, as JSON pointers: objects are compared key by key (in
/// key order), anything else as a whole. `None` is "absent".
pub fn changes(before: Option<&State>, after: Option<&State>, path: &str, out: &mut Vec<Change>) {
    check_stack();
    match (before, after) {
        (Some(State::Object(b)), Some(State::Object(a))) => {
            for k in sorted(b) {
                changes(b.get(k), a.get(k), &format!("{path}/{}", escape(k)), out);
            }
            for k in sorted(a).into_iter().filter(|k| !b.contains_key(*k)) {
                changes(None, a.get(k), &format!("{path}/{}", escape(k)), out);
            }
        }
        (Some(b), Some(a)) if same(b, a) => {}
        (None, None) => {}
        (b, a) => out.push(Change {
            path: path.to_string(),
            before: b.map(Value::from),
            after: a.map(Value::from),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn diff(b: Value, a: Value) -> Vec<(String, Option<Value>, Option<Value>)> {
        let mut out = Vec::new();
        changes(Some(&b.into()), Some(&a.into()), "", &mut out);
        out.into_iter()
            .map(|c| (c.path, c.before, c.after))
            .collect()
    }

    #[test]
    fn paths_of_what_changed() {
        assert_eq!(
            diff(
                json!({"email": "a@x", "role": "user", "n": 1, "o": {"k": [1], "j/~": 1}}),
                json!({"email": "b@x", "n": 1.0, "o": {"k": [1, 2], "j/~": 1}, "new": true})
            ),
            vec![
                ("/email".into(), Some(json!("a@x")), Some(json!("b@x"))),
                ("/o/k".into(), Some(json!([1])), Some(json!([1, 2]))),
                ("/role".into(), Some(json!("user")), None),
                ("/new".into(), None, Some(json!(true))),
            ]
        );
        assert_eq!(
            diff(json!({"a": 1}), json!([1])),
            vec![("".into(), Some(json!({"a": 1})), Some(json!([1])))]
        );
        assert_eq!(
            diff(json!({"a/b": 1}), json!({})),
            vec![("/a~1b".into(), Some(json!(1)), None)]
        );
        assert!(diff(json!({"a": {"b": 1}}), json!({"a": {"b": 1}})).is_empty());
    }
}
