//! The rule language of declarative reducers and upcasts: the operations that fold an event
//! into a stream's state. Rules are checked when defined, so folding itself never fails: every
//! operation has a defined result for missing paths and unexpected shapes. (Past 500 lines
//! with its tests: each operation's parsing, checking and effect belong together.)
use crate::json::pointer::{lookup, parse_pointer, Data, Pointer};
use crate::json::state::{add, same, Map, State};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Event(Pointer),
    Value(Value),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Merge {
        path: Pointer,
        from: Pointer,
    },
    Set {
        path: Pointer,
        source: Source,
    },
    Remove {
        path: Pointer,
    },
    Increment {
        path: Pointer,
        source: Source,
    },
    Append {
        path: Pointer,
        source: Source,
    },
    RemoveValue {
        path: Pointer,
        source: Source,
    },
    Replace {
        source: Source,
    },
    /// Upcasts only: moves the value at `from` to `path` within the event being upcast.
    Rename {
        from: Pointer,
        path: Pointer,
    },
    Ignore,
}

pub type Rule = Vec<Op>;

/// What happens to an event whose type has no rule: RFC 7396 merge of its data.
pub fn default_rule() -> &'static Rule {
    static MERGE: std::sync::OnceLock<Rule> = std::sync::OnceLock::new();
    MERGE.get_or_init(|| {
        vec![Op::Merge {
            path: vec![],
            from: vec![],
        }]
    })
}

const OPS: &str = "merge, set, remove, increment, append, remove_value, replace, ignore";

/// Reducers fold events into a state; upcasts rewrite an event, which may also rename paths.
#[derive(Clone, Copy, PartialEq)]
enum Language {
    Reducer,
    Upcast,
}

fn parse_op(v: &Value, language: Language) -> Result<Op, String> {
    let Value::Object(o) = v else {
        return Err(format!("an operation must be a JSON object, not {v}"));
    };
    let Some(Value::String(name)) = o.get("op") else {
        return Err(format!("{v}: \"op\" must name one of {OPS}"));
    };
    let allowed: &[&str] = match name.as_str() {
        "merge" => &["op", "path", "from"],
        "set" | "increment" | "append" | "remove_value" => &["op", "path", "from", "value"],
        "remove" => &["op", "path"],
        "replace" => &["op", "from", "value"],
        "ignore" => &["op"],
        "rename" if language == Language::Upcast => &["op", "from", "path"],
        "rename" => {
            return Err("op \"rename\" is for upcasts (es_define_upcast), not reducers".into())
        }
        _ if language == Language::Upcast => {
            return Err(format!("unknown op \"{name}\": use one of {OPS}, rename"))
        }
        _ => return Err(format!("unknown op \"{name}\": use one of {OPS}")),
    };
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "op \"{name}\" takes {} but not \"{k}\"",
            allowed[1..].join(", ")
        ));
    }
    let pointer = |key: &str| -> Result<Option<Pointer>, String> {
        match o.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => parse_pointer(s).map(Some),
            Some(other) => Err(format!(
                "op \"{name}\": \"{key}\" must be a JSON pointer string, not {other}"
            )),
        }
    };
    let path = pointer("path")?;
    let required_path = || {
        path.clone()
            .ok_or_else(|| format!("op \"{name}\" needs a \"path\""))
    };
    // Exactly one of "from" (a pointer into the event data) and "value" (a constant).
    let source = || -> Result<Source, String> {
        match (pointer("from")?, o.get("value")) {
            (Some(_), Some(_)) => Err(format!(
                "op \"{name}\" takes \"from\" or \"value\", not both"
            )),
            (Some(p), None) => Ok(Source::Event(p)),
            (None, Some(v)) => Ok(Source::Value(v.clone())),
            (None, None) => Err(format!("op \"{name}\" needs \"from\" or \"value\"")),
        }
    };
    Ok(match name.as_str() {
        "merge" => Op::Merge {
            path: path.unwrap_or_default(),
            from: pointer("from")?.unwrap_or_default(),
        },
        "set" => Op::Set {
            path: required_path()?,
            source: source()?,
        },
        "remove" => {
            let path = required_path()?;
            if path.is_empty() {
                return Err(
                    "op \"remove\" needs a non-empty \"path\"; to clear the state use replace with a value"
                        .into(),
                );
            }
            Op::Remove { path }
        }
        "increment" => {
            let source = source()?;
            if let Source::Value(v) = &source {
                if !v.is_number() {
                    return Err(format!(
                        "op \"increment\": \"value\" must be a number, not {v}"
                    ));
                }
            }
            Op::Increment {
                path: required_path()?,
                source,
            }
        }
        "append" => Op::Append {
            path: required_path()?,
            source: source()?,
        },
        "remove_value" => Op::RemoveValue {
            path: required_path()?,
            source: source()?,
        },
        "replace" => Op::Replace {
            source: if o.contains_key("from") || o.contains_key("value") {
                source()?
            } else {
                Source::Event(vec![])
            },
        },
        "rename" => {
            let (Some(from), Some(path)) = (pointer("from")?, path) else {
                return Err("op \"rename\" needs \"from\" and \"path\"".into());
            };
            if from.is_empty() || path.is_empty() {
                return Err(
                    "op \"rename\" moves a member: \"from\" and \"path\" must not be \"\"".into(),
                );
            }
            Op::Rename { from, path }
        }
        _ => Op::Ignore,
    })
}

/// Parses and checks a reducer's rule: one operation object or a non-empty array of them.
pub fn parse_rule(rule: &Value) -> Result<Rule, String> {
    parse_ops(rule, Language::Reducer)
}

/// Parses and checks an upcast's rule: a reducer's operations plus `rename`.
pub fn parse_upcast_rule(rule: &Value) -> Result<Rule, String> {
    parse_ops(rule, Language::Upcast)
}

fn parse_ops(rule: &Value, language: Language) -> Result<Rule, String> {
    let ops = match rule {
        Value::Array(items) if items.is_empty() => {
            return Err(
                "a rule needs at least one operation; use {\"op\": \"ignore\"} to skip events"
                    .into(),
            )
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| parse_op(v, language).map_err(|e| format!("operation {}: {e}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?,
        other => vec![parse_op(other, language)?],
    };
    if ops.len() > 1 && ops.contains(&Op::Ignore) {
        return Err("\"ignore\" must be the rule's only operation".into());
    }
    Ok(ops)
}

/// Applies `patch` to `target` as RFC 7396 says: objects merge key by key, `null` removes a
/// key, anything else replaces.
pub fn merge_patch<'a>(target: &mut State, patch: impl Data<'a>) {
    crate::json::state::check_stack();
    if !patch.is_object() {
        return assign(target, patch);
    }
    let t = as_object(target);
    patch.each_member(|k, v| {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry_ref(k).or_default(), v);
        }
    });
}

/// `*target = v`, reusing the target's buffer when both are strings: most events overwrite
/// a string with a string.
fn assign<'a>(target: &mut State, v: impl Data<'a>) {
    match (target, v.as_str()) {
        (State::String(s), Some(new)) => {
            s.clear();
            s.push_str(new);
        }
        (target, _) => *target = v.to_state(),
    }
}

/// `v` as an object, replacing whatever else it was.
fn as_object(v: &mut State) -> &mut Map {
    if !v.is_object() {
        *v = State::Object(Map::new());
    }
    match v {
        State::Object(m) => m,
        _ => unreachable!(),
    }
}

/// The slot at `path` in the state, creating objects on the way (a value of another type in
/// the way is replaced by an object).
fn slot<'a>(state: &'a mut State, path: &[String]) -> &'a mut State {
    path.iter().fold(state, |v, token| {
        as_object(v).entry_ref(token.as_str()).or_default()
    })
}

/// The existing slot at `path`, without creating anything.
fn existing<'a>(state: &'a mut State, path: &[String]) -> Option<&'a mut State> {
    path.iter().try_fold(state, |v, token| match v {
        State::Object(m) => m.get_mut(token.as_str()),
        _ => None,
    })
}

/// The value a source names, copied out of the rule or the event.
fn resolve<'a>(source: &Source, data: impl Data<'a>) -> Option<State> {
    match source {
        Source::Value(v) => Some(v.to_state()),
        Source::Event(p) => lookup(data, p).map(Data::to_state),
    }
}

/// Folds one event's data into the state. An operation whose source is absent or of the
/// wrong type does nothing; a target of the wrong type starts over from the operation's
/// empty value (an object, 0, an empty array).
pub fn apply<'a>(rule: &Rule, state: &mut State, data: impl Data<'a>) {
    for op in rule {
        match op {
            Op::Merge { path, from } => {
                if let Some(patch) = lookup(data, from) {
                    merge_patch(slot(state, path), patch);
                }
            }
            Op::Set {
                path,
                source: Source::Event(from),
            } => {
                if let Some(v) = lookup(data, from) {
                    assign(slot(state, path), v);
                }
            }
            Op::Set {
                path,
                source: Source::Value(v),
            } => assign(slot(state, path), v),
            Op::Remove { path } => {
                let (last, parent) = path.split_last().expect("checked non-empty");
                if let Some(State::Object(m)) = existing(state, parent) {
                    m.remove(last.as_str());
                }
            }
            Op::Increment { path, source } => {
                if let Some(n) = resolve(source, data).filter(State::is_number) {
                    let target = slot(state, path);
                    *target = add(target, &n).unwrap_or(n);
                }
            }
            Op::Append { path, source } => {
                if let Some(v) = resolve(source, data) {
                    let target = slot(state, path);
                    match target {
                        State::Array(a) => a.push(v),
                        _ => *target = State::Array(vec![v]),
                    }
                }
            }
            Op::RemoveValue { path, source } => {
                if let (Some(v), Some(State::Array(a))) =
                    (resolve(source, data), existing(state, path))
                {
                    a.retain(|x| !same(x, &v));
                }
            }
            Op::Replace { source } => {
                if let Some(v) = resolve(source, data) {
                    *state = v;
                }
            }
            Op::Rename { from, path } => {
                let (last, parent) = from.split_last().expect("checked non-empty");
                if let Some(v) = existing(state, parent).and_then(|p| match p {
                    State::Object(m) => m.remove(last.as_str()),
                    _ => None,
                }) {
                    *slot(state, path) = v;
                }
            }
            Op::Ignore => {}
        }
    }
}

/// Every state starts as an empty object.
pub fn initial_state() -> State {
    State::Object(Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> Rule {
        parse_rule(&v).unwrap()
    }

    /// `apply` on a serde_json state.
    fn run(rule: &Rule, s: &mut Value, data: &Value) {
        let mut state = State::from(s.clone());
        apply(rule, &mut state, data);
        *s = Value::from(&state);
    }

    #[test]
    fn rfc7396_examples() {
        // The table in RFC 7396, appendix A.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut t = State::from(target.clone());
            merge_patch(&mut t, &patch);
            assert_eq!(Value::from(&t), want, "{target} + {patch}");
        }
    }

    #[test]
    fn bad_rules_are_refused_with_a_reason() {
        let cases = [
            (json!([]), "at least one operation"),
            (json!("merge"), "must be a JSON object"),
            (json!({"op": "upsert"}), "unknown op \"upsert\""),
            (
                json!({"op": "set", "path": "/a"}),
                "needs \"from\" or \"value\"",
            ),
            (json!({"op": "set", "from": "/a"}), "needs a \"path\""),
            (
                json!({"op": "set", "path": "/a", "from": "/b", "value": 1}),
                "not both",
            ),
            (
                json!({"op": "set", "path": "a", "value": 1}),
                "not a JSON pointer",
            ),
            (
                json!({"op": "set", "path": 3, "value": 1}),
                "must be a JSON pointer string",
            ),
            (json!({"op": "remove", "path": ""}), "non-empty"),
            (
                json!({"op": "increment", "path": "/n", "value": "1"}),
                "must be a number",
            ),
            (json!({"op": "ignore", "path": "/a"}), "not \"path\""),
            (json!([{"op": "ignore"}, {"op": "merge"}]), "only operation"),
            (
                json!([{"op": "merge"}, {"op": "nope"}]),
                "operation 2: unknown op",
            ),
        ];
        for (r, want) in cases {
            let err = parse_rule(&r).unwrap_err();
            assert!(err.contains(want), "{r}: {err}");
        }
    }

    #[test]
    fn operations_and_their_defined_edge_cases() {
        let mut s = json!({"n": 1, "tags": ["a", "b", "a"], "x": "scalar"});
        run(
            &rule(json!({"op": "increment", "path": "/n", "from": "/by"})),
            &mut s,
            &json!({"by": 2.5}),
        );
        assert_eq!(s["n"], json!(3.5));
        // Source of the wrong type or absent: nothing happens.
        run(
            &rule(json!({"op": "increment", "path": "/n", "from": "/by"})),
            &mut s,
            &json!({"by": "2"}),
        );
        run(
            &rule(json!({"op": "set", "path": "/n", "from": "/missing"})),
            &mut s,
            &json!({}),
        );
        assert_eq!(s["n"], json!(3.5));
        // Target of the wrong type: starts from the op's empty value.
        run(
            &rule(json!({"op": "increment", "path": "/x", "value": 1})),
            &mut s,
            &json!({}),
        );
        assert_eq!(s["x"], json!(1));
        run(
            &rule(json!({"op": "remove_value", "path": "/tags", "value": "a"})),
            &mut s,
            &json!({}),
        );
        assert_eq!(s["tags"], json!(["b"]));
        run(
            &rule(json!({"op": "append", "path": "/tags", "from": "/t"})),
            &mut s,
            &json!({"t": {"k": 1}}),
        );
        assert_eq!(s["tags"], json!(["b", {"k": 1}]));
        run(
            &rule(json!({"op": "append", "path": "/x", "value": 0})),
            &mut s,
            &json!({}),
        );
        assert_eq!(s["x"], json!([0]));
        // Missing intermediate objects are created, scalars in the way replaced.
        run(
            &rule(json!({"op": "set", "path": "/n/deep/er", "value": true})),
            &mut s,
            &json!({}),
        );
        assert_eq!(s["n"], json!({"deep": {"er": true}}));
        run(
            &rule(json!({"op": "remove", "path": "/nope/deeper"})),
            &mut s,
            &json!({}),
        );
        run(
            &rule(
                json!([{"op": "remove", "path": "/n"}, {"op": "merge", "path": "/m", "from": "/p"}]),
            ),
            &mut s,
            &json!({"p": {"q": 1}}),
        );
        assert_eq!(s, json!({"tags": ["b", {"k": 1}], "x": [0], "m": {"q": 1}}));
        run(
            &rule(json!({"op": "replace", "value": {"reset": true}})),
            &mut s,
            &json!({}),
        );
        assert_eq!(s, json!({"reset": true}));
        run(&rule(json!({"op": "replace"})), &mut s, &json!([1]));
        assert_eq!(s, json!([1]));
        run(&rule(json!({"op": "ignore"})), &mut s, &json!({"a": 1}));
        assert_eq!(s, json!([1]));
    }
}
