//! JSON Pointers (RFC 6901) and reading event data through them: the fold's rules, the
//! catalog's personal-data paths and upcasts all address an event's data this way.
use crate::json::state::State;
use serde_json::Value;

/// A parsed RFC 6901 JSON Pointer; empty means the whole document.
pub type Pointer = Vec<String>;

/// Parses a pointer: `""` is the whole document, anything else starts with `/`.
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

/// An event's data as the fold reads it: a `serde_json::Value`, or in the database the
/// stored jsonb itself (src/pg/jsonb/binary.rs), so that folding builds no tree per event and copies
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
