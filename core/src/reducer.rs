//! Declarative reducers: per category and event type, the operations that fold an event into
//! a stream's state. Rules are checked when defined, so folding itself never fails: every
//! operation has a defined result for missing paths and unexpected shapes.
use crate::catalog::Upcasts;
use crate::state::{add, same, Map, State};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::rc::Rc;

/// Changing what a rule means must change every fingerprint, so no snapshot outlives it.
const ENGINE_VERSION: &str = "event_store fold 1";

/// A parsed RFC 6901 JSON Pointer; empty means the whole document.
pub type Pointer = Vec<String>;

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
fn default_rule() -> &'static Rule {
    static MERGE: std::sync::OnceLock<Rule> = std::sync::OnceLock::new();
    MERGE.get_or_init(|| {
        vec![Op::Merge {
            path: vec![],
            from: vec![],
        }]
    })
}

pub fn parse_pointer(s: &str) -> Result<Pointer, String> {
    if s.is_empty() {
        return Ok(vec![]);
    }
    let Some(rest) = s.strip_prefix('/') else {
        return Err(format!(
            "\"{s}\" is not a JSON pointer: it must be \"\" or start with \"/\""
        ));
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => out.push('~'),
                    Some('1') => out.push('/'),
                    _ => return Err(format!("\"{s}\": \"~\" must be followed by 0 or 1")),
                }
            }
            Ok(out)
        })
        .collect()
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

/// The rules that apply to one category: its own and those of category `*`.
#[derive(Debug, Default)]
pub struct RuleSet {
    // A handful of rules each: a scan beats hashing the event type.
    own: Vec<(String, Rule)>,
    everywhere: Vec<(String, Rule)>,
    /// Events are upcast to their type's latest version before a rule sees them.
    upcasts: Rc<Upcasts>,
    /// Identifies the definitions, upcasts included: snapshots made under other rules are
    /// never used.
    pub fingerprint: Vec<u8>,
}

impl RuleSet {
    /// `defs` are (category, event_type, rule) rows for one category and `*`; rules were
    /// checked when defined, so a rule that fails to parse here means a hand-edited table.
    pub fn new(category: &str, mut defs: Vec<(String, String, Value)>) -> Result<Self, String> {
        defs.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut hash = Sha256::new();
        hash.update(ENGINE_VERSION);
        let mut set = RuleSet::default();
        for (cat, event_type, rule) in defs {
            let text = rule.to_string();
            for part in [&cat, &event_type, &text] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part);
            }
            let parsed = parse_rule(&rule)
                .map_err(|e| format!("reducer ({cat}, {event_type}) is invalid: {e}"))?;
            let map = if cat == category {
                &mut set.own
            } else {
                &mut set.everywhere
            };
            map.push((event_type, parsed));
        }
        set.fingerprint = hash.finalize().to_vec();
        Ok(set)
    }

    /// Folds events upcast by `upcasts`; the fingerprint then covers them too (and stays as it
    /// was without any, so snapshots taken before the catalog existed stay valid).
    pub fn with_upcasts(mut self, upcasts: Rc<Upcasts>) -> Self {
        if !upcasts.is_empty() {
            let mut hash = Sha256::new();
            hash.update(&self.fingerprint);
            hash.update(upcasts.fingerprint());
            self.fingerprint = hash.finalize().to_vec();
        }
        self.upcasts = upcasts;
        self
    }

    /// Most specific first: the category's rule for the type, its `*` rule, the `*` category's
    /// rule for the type, its `*` rule, then merge.
    pub fn rule_for(&self, event_type: &str) -> &Rule {
        fn find<'a>(rules: &'a [(String, Rule)], t: &str) -> Option<&'a Rule> {
            rules.iter().find(|(name, _)| name == t).map(|(_, r)| r)
        }
        find(&self.own, event_type)
            .or_else(|| find(&self.own, "*"))
            .or_else(|| find(&self.everywhere, event_type))
            .or_else(|| find(&self.everywhere, "*"))
            .unwrap_or_else(|| default_rule())
    }

    /// Folds one event, stored at `event_version` of its type, into the state.
    pub fn apply<'a>(
        &self,
        state: &mut State,
        event_type: &str,
        event_version: i32,
        data: impl Data<'a>,
    ) {
        let rule = self.rule_for(event_type);
        match self.upcasts.upcast(event_type, event_version, data) {
            Some((upcast, _)) => apply(rule, state, &upcast),
            None => apply(rule, state, data),
        }
    }
}

/// An event's data as the fold reads it: a `serde_json::Value`, or in the database the
/// stored jsonb itself (src/jsonb.rs), so that folding builds no tree per event and copies
/// only what lands in the state.
pub trait Data<'a>: Copy {
    /// An object's member, or an array's element at that index.
    fn get(self, token: &str) -> Option<Self>;
    fn is_object(self) -> bool;
    /// Calls `f` with each member of an object, in order; nothing for anything else.
    fn each_member(self, f: impl FnMut(&'a str, Self));
    fn is_null(self) -> bool;
    fn as_str(self) -> Option<&'a str>;
    fn to_state(self) -> State;
}

impl<'a> Data<'a> for &'a Value {
    fn get(self, token: &str) -> Option<Self> {
        match self {
            Value::Object(m) => m.get(token),
            Value::Array(a) => token.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
    }
    fn is_object(self) -> bool {
        self.is_object()
    }
    fn each_member(self, mut f: impl FnMut(&'a str, Self)) {
        if let Value::Object(m) = self {
            m.iter().for_each(|(k, v)| f(k, v));
        }
    }
    fn is_null(self) -> bool {
        self.is_null()
    }
    fn as_str(self) -> Option<&'a str> {
        self.as_str()
    }
    fn to_state(self) -> State {
        self.clone().into()
    }
}

/// Reads a pointer through objects and (by index) arrays; `None` when absent.
pub fn lookup<'a, D: Data<'a>>(v: D, path: &[String]) -> Option<D> {
    path.iter().try_fold(v, |v, token| v.get(token))
}

/// Applies `patch` to `target` as RFC 7396 says: objects merge key by key, `null` removes a
/// key, anything else replaces.
pub fn merge_patch<'a>(target: &mut State, patch: impl Data<'a>) {
    crate::state::check_stack();
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
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use serde_json::json;

    fn rule(v: Value) -> Rule {
        parse_rule(&v).unwrap()
    }

    fn fold(set: &RuleSet, events: &[(&str, Value)]) -> Value {
        let mut state = initial_state();
        for (t, d) in events {
            set.apply(&mut state, t, 1, d);
        }
        Value::from(&state)
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
    fn pointers() {
        assert_eq!(parse_pointer("").unwrap(), Vec::<String>::new());
        assert_eq!(parse_pointer("/a/b").unwrap(), vec!["a", "b"]);
        assert_eq!(parse_pointer("/a~1b/~0c").unwrap(), vec!["a/b", "~c"]);
        assert_eq!(parse_pointer("/").unwrap(), vec![""]);
        assert!(parse_pointer("a").is_err());
        assert!(parse_pointer("/a~2").is_err());
        assert_eq!(
            lookup(&json!({"a":[10, 20]}), &parse_pointer("/a/1").unwrap()),
            Some(&json!(20))
        );
        assert_eq!(
            lookup(&json!({"a":"x"}), &parse_pointer("/a/b").unwrap()),
            None
        );
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
    fn the_handed_user_stream() {
        let set = RuleSet::new(
            "user",
            vec![
                (
                    "user".into(),
                    "UserEmailChanged".into(),
                    json!({"op": "set", "path": "/email", "from": "/newEmail"}),
                ),
                (
                    "user".into(),
                    "UserRoleChanged".into(),
                    json!({"op": "set", "path": "/role", "from": "/newRole"}),
                ),
            ],
        )
        .unwrap();
        let state = fold(
            &set,
            &[
                (
                    "UserRegistered",
                    json!({"email": "a@x", "role": "user", "name": "Ann"}),
                ),
                ("UserEmailChanged", json!({"newEmail": "b@x"})),
                ("UserRoleChanged", json!({"newRole": "admin"})),
            ],
        );
        assert_eq!(
            state,
            json!({"email": "b@x", "role": "admin", "name": "Ann"})
        );
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

    #[test]
    fn precedence_and_fingerprints() {
        let defs = |extra: Option<(&str, &str, Value)>| {
            let mut d = vec![
                (
                    "*".to_string(),
                    "Deleted".to_string(),
                    json!({"op": "replace", "value": {"deleted": true}}),
                ),
                ("*".to_string(), "*".to_string(), json!({"op": "ignore"})),
                (
                    "order".to_string(),
                    "Placed".to_string(),
                    json!({"op": "set", "path": "/placed", "value": true}),
                ),
            ];
            if let Some((c, t, r)) = extra {
                d.push((c.into(), t.into(), r));
            }
            d
        };
        let set = RuleSet::new("order", defs(None)).unwrap();
        assert_eq!(
            fold(&set, &[("Placed", json!({}))]),
            json!({"placed": true})
        );
        assert_eq!(fold(&set, &[("Other", json!({"a": 1}))]), json!({}));
        assert_eq!(
            fold(&set, &[("Deleted", json!({}))]),
            json!({"deleted": true})
        );
        let with_any =
            RuleSet::new("order", defs(Some(("order", "*", json!({"op": "merge"}))))).unwrap();
        assert_eq!(
            fold(&with_any, &[("Other", json!({"a": 1}))]),
            json!({"a": 1})
        );
        // The category's own "*" rule comes before the "*" category's rule for the type.
        assert_eq!(fold(&with_any, &[("Deleted", json!({}))]), json!({}));
        assert_ne!(set.fingerprint, with_any.fingerprint);
        // Order of definition does not matter; content does.
        let mut reversed = defs(None);
        reversed.reverse();
        assert_eq!(
            RuleSet::new("order", reversed).unwrap().fingerprint,
            set.fingerprint
        );
        assert_eq!(
            RuleSet::new("x", vec![]).unwrap().rule_for("Any"),
            default_rule()
        );
    }

    fn random_value(rng: &mut StdRng, depth: u32) -> Value {
        match rng.gen_range(0..if depth == 0 { 4 } else { 6 }) {
            0 => Value::Null,
            1 => json!(rng.gen_range(-5..5)),
            2 => json!(["a", "b", "c"][rng.gen_range(0..3)]),
            3 => json!(rng.gen_range(0..100) as f64 / 10.0),
            4 => Value::Array(
                (0..rng.gen_range(0..3))
                    .map(|_| random_value(rng, depth - 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.gen_range(0..4))
                    .map(|_| {
                        (
                            ["a", "b", "c", "d"][rng.gen_range(0..4)].to_string(),
                            random_value(rng, depth - 1),
                        )
                    })
                    .collect(),
            ),
        }
    }

    /// What snapshots rely on: folding a prefix, then the rest from that state, equals
    /// folding everything; and folding never panics whatever the shapes.
    #[test]
    fn folding_resumes_from_any_prefix() {
        let paths = ["/a", "/b", "/a/b", "/c/d", ""];
        for seed in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let pick = |rng: &mut StdRng| paths[rng.gen_range(0..paths.len())].to_string();
            let mut defs = vec![];
            for t in ["A", "B", "C"] {
                let op = match rng.gen_range(0..8) {
                    0 => json!({"op": "merge", "path": pick(&mut rng), "from": pick(&mut rng)}),
                    1 => {
                        json!({"op": "set", "path": pick(&mut rng).replace("", "/z"), "from": pick(&mut rng)})
                    }
                    2 => json!({"op": "remove", "path": "/a"}),
                    3 => json!({"op": "increment", "path": "/n", "from": pick(&mut rng)}),
                    4 => json!({"op": "append", "path": "/l", "from": pick(&mut rng)}),
                    5 => json!({"op": "remove_value", "path": "/l", "from": pick(&mut rng)}),
                    6 => json!({"op": "replace", "from": pick(&mut rng)}),
                    _ => json!({"op": "ignore"}),
                };
                defs.push(("cat".to_string(), t.to_string(), op));
            }
            let set = RuleSet::new("cat", defs).unwrap();
            let events: Vec<(&str, Value)> = (0..rng.gen_range(1..30))
                .map(|_| {
                    (
                        ["A", "B", "C", "D"][rng.gen_range(0..4)],
                        random_value(&mut rng, 3),
                    )
                })
                .collect();
            let whole = fold(&set, &events);
            let cut = rng.gen_range(0..=events.len());
            let mut resumed = State::from(fold(&set, &events[..cut]));
            for (t, d) in &events[cut..] {
                set.apply(&mut resumed, t, 1, d);
            }
            assert_eq!(whole, Value::from(&resumed), "seed {seed}");
        }
    }
}
