//! A stream's state while it is folded: JSON whose objects are hash maps and whose integers
//! are machine integers. A fold looks up a key or two per event, and serde_json's ordered map
//! pays a string comparison per step of every lookup (its numbers, with exact decimals, a
//! string each); states go in and out as `serde_json::Value` once per fold.
use bigdecimal::BigDecimal;
use serde_json::{Number, Value};
use std::str::FromStr;

pub type Map = hashbrown::HashMap<String, State>;

/// Called at every level of every recursion over JSON (reading, folding, comparing, diffing):
/// events can nest deeper than the stack allows. The extension installs PostgreSQL's
/// `check_stack_depth`, which raises an error instead of letting the server crash.
static STACK_CHECK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

pub fn set_stack_check(check: fn()) {
    let _ = STACK_CHECK.set(check);
}

#[inline]
pub fn check_stack() {
    if let Some(check) = STACK_CHECK.get() {
        check();
    }
}

#[derive(Debug, Clone, Default)]
pub enum State {
    #[default]
    Null,
    Bool(bool),
    /// A number that is an integer in i64's range, written without a fraction or exponent.
    Int(i64),
    /// Any other number, exactly as written.
    Number(Number),
    String(String),
    Array(Vec<State>),
    Object(Map),
}

impl State {
    pub fn is_object(&self) -> bool {
        matches!(self, State::Object(_))
    }

    pub fn is_number(&self) -> bool {
        matches!(self, State::Int(_) | State::Number(_))
    }

    pub fn number(n: Number) -> Self {
        match n.as_i64() {
            // as_i64 also accepts forms such as 1e2; only the plain form round-trips.
            Some(i) if n.to_string() == i.to_string() => State::Int(i),
            _ => State::Number(n),
        }
    }

    /// The number as an exact decimal; `None` for anything else.
    fn decimal(&self) -> Option<BigDecimal> {
        match self {
            State::Int(i) => Some((*i).into()),
            State::Number(n) => {
                Some(BigDecimal::from_str(&n.to_string()).expect("JSON numbers are decimals"))
            }
            _ => None,
        }
    }
}

/// Exact decimal addition, as PostgreSQL's numeric does it; `None` unless both are numbers.
pub fn add(a: &State, b: &State) -> Option<State> {
    if let (State::Int(x), State::Int(y)) = (a, b) {
        if let Some(sum) = x.checked_add(*y) {
            return Some(State::Int(sum));
        }
    }
    let sum = a.decimal()? + b.decimal()?;
    Some(State::number(
        Number::from_str(&sum.to_plain_string()).expect("a decimal's plain form is a JSON number"),
    ))
}

impl From<Value> for State {
    fn from(v: Value) -> Self {
        check_stack();
        match v {
            Value::Null => State::Null,
            Value::Bool(b) => State::Bool(b),
            Value::Number(n) => State::number(n),
            Value::String(s) => State::String(s),
            Value::Array(a) => State::Array(a.into_iter().map(State::from).collect()),
            Value::Object(m) => State::Object(m.into_iter().map(|(k, v)| (k, v.into())).collect()),
        }
    }
}

impl From<&State> for Value {
    fn from(s: &State) -> Self {
        check_stack();
        match s {
            State::Null => Value::Null,
            State::Bool(b) => Value::Bool(*b),
            State::Int(i) => Value::Number((*i).into()),
            State::Number(n) => Value::Number(n.clone()),
            State::String(s) => Value::String(s.clone()),
            State::Array(a) => Value::Array(a.iter().map(Value::from).collect()),
            State::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), v.into())).collect())
            }
        }
    }
}

/// Equality as jsonb sees it: numbers compare by value (1.0 = 1).
pub fn same(a: &State, b: &State) -> bool {
    check_stack();
    match (a, b) {
        (State::Int(x), State::Int(y)) => x == y,
        (x, y) if x.is_number() && y.is_number() => x.decimal() == y.decimal(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sum(a: &str, b: &str) -> String {
        let n = |s: &str| State::from(Value::from_str(s).unwrap());
        Value::from(&add(&n(a), &n(b)).unwrap()).to_string()
    }

    #[test]
    fn numbers_stay_exact() {
        assert_eq!(sum("0.1", "0.2"), "0.3");
        assert_eq!(sum("2", "3"), "5");
        assert_eq!(sum("9223372036854775807", "1"), "9223372036854775808");
        assert_eq!(
            sum("123456789012345678901234567890.10", "-0.10"),
            "123456789012345678901234567890.00"
        );
        assert_eq!(sum("1.50", "1"), "2.50");
        assert!(add(&State::Int(1), &State::String("1".into())).is_none());
        assert!(same(
            &json!([1.0, {"a": 2}]).into(),
            &Value::from_str("[1, {\"a\": 2.00}]").unwrap().into()
        ));
        assert!(same(
            &State::Int(2),
            &Value::from_str("2.0").unwrap().into()
        ));
        assert!(!same(&json!(1).into(), &json!("1").into()));
    }

    #[test]
    fn values_round_trip() {
        for text in [
            "1",
            "-7",
            "1.0",
            "1e2",
            "12345678901234567890",
            "{\"a\":[1,2.5,null,true,\"s\"]}",
        ] {
            let v = Value::from_str(text).unwrap();
            assert_eq!(Value::from(&State::from(v.clone())), v, "{text}");
        }
        assert!(matches!(State::from(json!(3)), State::Int(3)));
        assert!(matches!(
            State::from(Value::from_str("3.0").unwrap()),
            State::Number(_)
        ));
    }
}
