//! A stream's state while it is folded: JSON whose objects are hash maps. A fold looks up a
//! key or two per event, and serde_json's ordered map pays a string comparison per step of
//! every lookup; states go in and out as `serde_json::Value` once per fold.
use bigdecimal::BigDecimal;
use serde_json::{Number, Value};
use std::str::FromStr;

pub type Map = hashbrown::HashMap<String, State>;

#[derive(Debug, Clone, Default)]
pub enum State {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<State>),
    Object(Map),
}

impl State {
    pub fn is_object(&self) -> bool {
        matches!(self, State::Object(_))
    }
}

impl From<Value> for State {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => State::Null,
            Value::Bool(b) => State::Bool(b),
            Value::Number(n) => State::Number(n),
            Value::String(s) => State::String(s),
            Value::Array(a) => State::Array(a.into_iter().map(State::from).collect()),
            Value::Object(m) => State::Object(m.into_iter().map(|(k, v)| (k, v.into())).collect()),
        }
    }
}

impl From<&State> for Value {
    fn from(s: &State) -> Self {
        match s {
            State::Null => Value::Null,
            State::Bool(b) => Value::Bool(*b),
            State::Number(n) => Value::Number(n.clone()),
            State::String(s) => Value::String(s.clone()),
            State::Array(a) => Value::Array(a.iter().map(Value::from).collect()),
            State::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), v.into())).collect()),
        }
    }
}

/// Equality as jsonb sees it: numbers compare by value (1.0 = 1).
pub fn same(a: &State, b: &State) -> bool {
    match (a, b) {
        (State::Number(x), State::Number(y)) => {
            x == y
                || BigDecimal::from_str(&x.to_string()).ok()
                    == BigDecimal::from_str(&y.to_string()).ok()
        }
        (State::Array(x), State::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (State::Object(x), State::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, a)| y.get(k).is_some_and(|b| same(a, b)))
        }
        (State::Null, State::Null) => true,
        (State::Bool(x), State::Bool(y)) => x == y,
        (State::String(x), State::String(y)) => x == y,
        _ => false,
    }
}
