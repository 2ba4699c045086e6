//! Time travel: a stream's state at an instant or version, folded from its events by
//! RFC 7396 JSON Merge Patch.
use pgrx::prelude::*;
use serde_json::{Map, Value};

/// Applies `patch` to `target` as RFC 7396 says: objects merge key by key, `null` removes a
/// key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Folds the event data in order; `None` when there were no events.
pub fn fold(events: impl IntoIterator<Item = Value>) -> Option<Value> {
    let mut state: Option<Value> = None;
    for e in events {
        merge_patch(state.get_or_insert(Value::Null), &e);
    }
    state
}

/// Folds the stream's events with created_at <= `at` and stream_version <= `version`.
/// Bounds the read by the stream's first and last times: on a hypertable, chunk exclusion
/// then skips every chunk the stream has no events in.
fn state(
    stream_id: &str,
    at: Option<TimestampWithTimeZone>,
    version: Option<i64>,
) -> Option<pgrx::JsonB> {
    Spi::connect(|client| {
        let bounds = client
            .select(
                "SELECT first_at, last_at FROM es_streams WHERE stream_id = $1",
                Some(1),
                &[stream_id.into()],
            )
            .expect("reading es_streams");
        let b = bounds.into_iter().next()?;
        let (Some(first), Some(last)) = (
            b.get::<TimestampWithTimeZone>(1).unwrap(),
            b.get::<TimestampWithTimeZone>(2).unwrap(),
        ) else {
            return None; // registered, no events yet
        };
        let upto = match at {
            Some(at) if at.into_inner() < last.into_inner() => at,
            _ => last,
        };
        let events = client
            .select(
                "SELECT event_data::text FROM event_store \
                 WHERE stream_id = $1 AND created_at BETWEEN $2 AND $3 \
                   AND ($4::bigint IS NULL OR stream_version <= $4) \
                 ORDER BY stream_version",
                None,
                &[stream_id.into(), first.into(), upto.into(), version.into()],
            )
            .expect("reading stream");
        fold(events.map(|row| {
            let text: String = row.get(1).unwrap().unwrap();
            serde_json::from_str(&text).expect("jsonb text is JSON")
        }))
        .map(pgrx::JsonB)
    })
}

/// The stream's state as it was at `at`: NULL when the stream had no events by then.
#[pg_extern(stable, strict, parallel_safe)]
fn es_state_at(stream_id: &str, at: TimestampWithTimeZone) -> Option<pgrx::JsonB> {
    state(stream_id, Some(at), None)
}

/// The stream's current state: NULL for a stream with no events.
#[pg_extern(stable, strict, parallel_safe)]
fn es_state(stream_id: &str) -> Option<pgrx::JsonB> {
    state(stream_id, None, None)
}

/// The stream's state right after `version`: NULL when version < 1 or the stream is empty.
#[pg_extern(stable, strict, parallel_safe)]
fn es_state_at_version(stream_id: &str, version: i64) -> Option<pgrx::JsonB> {
    state(stream_id, None, Some(version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patched(target: Value, patch: Value) -> Value {
        let mut t = target;
        merge_patch(&mut t, &patch);
        t
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
            assert_eq!(
                patched(target.clone(), patch.clone()),
                want,
                "{target} + {patch}"
            );
        }
    }

    #[test]
    fn fold_in_order() {
        let events = [
            json!({"email":"a@x","role":"user"}),
            json!({"email":"b@x"}),
            json!({"role":null}),
        ];
        assert_eq!(fold(events), Some(json!({"email":"b@x"})));
        assert_eq!(fold([]), None);
    }

    #[test]
    fn numbers_survive_exactly() {
        let big: Value =
            serde_json::from_str(r#"{"n": 123456789012345678901234567890.10}"#).unwrap();
        let folded = fold([big]).unwrap();
        assert_eq!(
            folded.to_string(),
            r#"{"n":123456789012345678901234567890.10}"#
        );
    }
}
