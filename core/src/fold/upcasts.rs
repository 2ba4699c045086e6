//! Upcasts: per event type, the rules that take a stored event from its version to its type's
//! latest, applied before reducers, folds, diffs and reads with `upcast => true` see it.
use crate::fold::rules::{apply, parse_upcast_rule, Rule};
use crate::json::pointer::Data;
use crate::json::state::State;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// Every upcast in the catalog: per event type, the rule taking version N to N + 1.
#[derive(Debug, Default)]
pub struct Upcasts {
    chains: HashMap<String, BTreeMap<i32, Rule>>,
    fingerprint: Vec<u8>,
}

impl Upcasts {
    /// `defs` are (event_type, from_version, rule) rows; rules were checked when defined, so
    /// one that fails to parse means a hand-edited table.
    pub fn new(mut defs: Vec<(String, i32, Value)>) -> Result<Self, String> {
        defs.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut hash = Sha256::new();
        hash.update("event_store upcasts 1");
        let mut chains: HashMap<String, BTreeMap<i32, Rule>> = HashMap::new();
        for (event_type, from, rule) in defs {
            let text = rule.to_string();
            for part in [event_type.as_bytes(), &from.to_be_bytes(), text.as_bytes()] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part);
            }
            let parsed = parse_upcast_rule(&rule)
                .map_err(|e| format!("upcast ({event_type}, {from}) is invalid: {e}"))?;
            chains.entry(event_type).or_default().insert(from, parsed);
        }
        Ok(Upcasts {
            chains,
            fingerprint: hash.finalize().to_vec(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// Identifies the upcasts: folds under other upcasts are never reused.
    pub fn fingerprint(&self) -> &[u8] {
        &self.fingerprint
    }

    /// Whether an upcast starts at this type and version.
    pub fn applies(&self, event_type: &str, version: i32) -> bool {
        self.chains
            .get(event_type)
            .is_some_and(|c| c.contains_key(&version))
    }

    /// The event's data and version after every upcast from its version on, in order; `None`
    /// when none applies (the event is at its type's latest version). Each step starts from
    /// the data it receives and reads its sources from that data too.
    pub fn upcast<'a>(
        &self,
        event_type: &str,
        version: i32,
        data: impl Data<'a>,
    ) -> Option<(Value, i32)> {
        let chain = self
            .chains
            .get(event_type)
            .filter(|c| c.contains_key(&version))?;
        let mut version = version;
        let mut current: Option<Value> = None;
        while let Some(rule) = chain.get(&version) {
            let mut next: State;
            match &current {
                Some(v) => {
                    next = v.to_state();
                    apply(rule, &mut next, v);
                }
                None => {
                    next = data.to_state();
                    apply(rule, &mut next, data);
                }
            }
            current = Some(Value::from(&next));
            version += 1;
        }
        current.map(|v| (v, version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn upcasts_chain_in_order_from_the_stored_version() {
        let up = Upcasts::new(vec![
            (
                "Registered".into(),
                2,
                json!({"op": "set", "path": "/plan", "value": "free"}),
            ),
            (
                "Registered".into(),
                1,
                json!({"op": "rename", "from": "/mail", "path": "/contact/email"}),
            ),
        ])
        .unwrap();
        let v1 = json!({"mail": "a@b", "name": "Ann"});
        assert_eq!(
            up.upcast("Registered", 1, &v1),
            Some((
                json!({"contact": {"email": "a@b"}, "name": "Ann", "plan": "free"}),
                3
            ))
        );
        let v2 = json!({"contact": {"email": "a@b"}});
        assert_eq!(
            up.upcast("Registered", 2, &v2).unwrap().0,
            json!({"contact": {"email": "a@b"}, "plan": "free"})
        );
        assert_eq!(up.upcast("Registered", 3, &v2), None);
        assert_eq!(up.upcast("Other", 1, &v1), None);
        // A rename of an absent member does nothing.
        assert_eq!(
            up.upcast("Registered", 1, &json!({})).unwrap().0,
            json!({"plan": "free"})
        );
    }

    #[test]
    fn upcasts_are_fingerprinted() {
        let a = Upcasts::new(vec![("T".into(), 1, json!({"op": "remove", "path": "/a"}))]).unwrap();
        let b = Upcasts::new(vec![("T".into(), 1, json!({"op": "remove", "path": "/b"}))]).unwrap();
        let c = Upcasts::new(vec![("T".into(), 2, json!({"op": "remove", "path": "/a"}))]).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
