//! Forensics: what changed in a stream's state between two instants, and which event
//! changed it.
use crate::fold::{category, fold_stream, in_stream_order, rules};
use crate::jsonb::Json;
use crate::reducer::initial_state;
use crate::state::{same, Map, State};
use pgrx::prelude::*;
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
    crate::state::check_stack();
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

const EVENTS_SQL: &str = "SELECT event_type, event_data, stream_version, created_at, event_id, \
            metadata ->> 'correlationId' \
       FROM @extschema@.event_store \
      WHERE stream_id = $1 AND created_at > $2 AND created_at <= $3 AND stream_version > $4 \
      ORDER BY stream_version";

/// One row per changed path per event, in stream order: the state at `from` is the
/// starting point, each event after it up to `to` is folded in turn.
#[pg_extern(stable, strict, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn es_diff(
    stream_id: &str,
    from: TimestampWithTimeZone,
    to: TimestampWithTimeZone,
) -> TableIterator<
    'static,
    (
        name!(stream_version, i64),
        name!(event_id, pgrx::Uuid),
        name!(event_type, String),
        name!(created_at, TimestampWithTimeZone),
        name!(correlation_id, Option<String>),
        name!(path, String),
        name!(before, Option<pgrx::JsonB>),
        name!(after, Option<pgrx::JsonB>),
    ),
> {
    if from.into_inner() > to.into_inner() {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "event_store: es_diff: \"from\" is later than \"to\""
        );
    }
    let rows = Spi::connect(|client| {
        let start = fold_stream(client, stream_id, Some(from), None);
        // Events up to `from` are filtered out by time; those in the snapshot by version.
        let (mut state, version, rules) = match start {
            Some(f) => (f.state, f.snapshot_version, f.rules),
            None => (initial_state(), 0, rules(category(stream_id))),
        };
        let mut rows = Vec::new();
        let args = [stream_id.into(), from.into(), to.into(), version.into()];
        let events =
            in_stream_order(|| client.select(crate::schema::qualified(EVENTS_SQL), None, &args))
                .expect("reading the stream");
        for e in events {
            let event_type: String = e.get(1).unwrap().unwrap();
            let data = e.get::<Json>(2).unwrap().unwrap().0;
            let before = state.clone();
            rules.apply(&mut state, &event_type, &data);
            let mut changed = Vec::new();
            changes(Some(&before), Some(&state), "", &mut changed);
            for c in changed {
                rows.push((
                    e.get::<i64>(3).unwrap().unwrap(),
                    e.get::<pgrx::Uuid>(5).unwrap().unwrap(),
                    event_type.clone(),
                    e.get::<TimestampWithTimeZone>(4).unwrap().unwrap(),
                    e.get::<String>(6).unwrap(),
                    c.path,
                    c.before.map(pgrx::JsonB),
                    c.after.map(pgrx::JsonB),
                ));
            }
        }
        rows
    });
    TableIterator::new(rows)
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
