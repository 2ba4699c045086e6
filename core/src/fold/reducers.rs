//! Declarative reducers: per category and event type, the rule that folds an event into a
//! stream's state, with the catalog's upcasts applied first.
use crate::fold::rules::{apply, default_rule, parse_rule, Rule};
use crate::fold::upcasts::Upcasts;
use crate::json::pointer::Data;
use crate::json::state::State;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::rc::Rc;

/// Changing what a rule means must change every fingerprint, so no snapshot outlives it.
const ENGINE_VERSION: &str = "event_store fold 1";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold::rules::initial_state;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use serde_json::json;

    fn fold(set: &RuleSet, events: &[(&str, Value)]) -> Value {
        let mut state = initial_state();
        for (t, d) in events {
            set.apply(&mut state, t, 1, d);
        }
        Value::from(&state)
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
