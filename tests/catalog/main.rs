//! The event catalog: schemas checked on append (nothing written on failure), category modes,
//! redefinitions checked against stored events, upcasts seen by every fold and on request by
//! reads, snapshots keyed by upcasts, and the catalog as a document.
use event_store_testing::{self as common, *};
use postgres::Client;
use rand::{rngs::StdRng, Rng};
use serde_json::{json, Map, Value};

mod definitions;
mod upcasts;

const USER_SCHEMA: &str = r#"{
    "type": "object",
    "required": ["email", "address"],
    "properties": {
        "email": {"type": "string", "pattern": "^[^@]+@[^@]+$"},
        "role": {"enum": ["admin", "user"]},
        "age": {"type": "integer", "minimum": 0},
        "address": {"type": "object", "required": ["zip"],
                    "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}
    }
}"#;

fn define_user(c: &mut Client) {
    c.execute(
        "SELECT es_define_event_type('UserRegistered', $1::text::jsonb, 1, 'A user signed up',
                                     ARRAY['/email'], '/userId')",
        &[&USER_SCHEMA],
    )
    .unwrap();
}

/// (SQLSTATE, message, detail) of a failed statement.
fn refusal<T: std::fmt::Debug>(r: Result<T, postgres::Error>) -> (String, String, String) {
    let e = r.expect_err("expected an error");
    let db = e.as_db_error().expect("a database error");
    (
        db.code().code().to_string(),
        db.message().to_string(),
        db.detail().unwrap_or_default().to_string(),
    )
}

fn written(c: &mut Client) -> (i64, i64) {
    (
        count(c, "SELECT count(*) FROM event_store"),
        count(c, "SELECT count(*) FROM es_streams WHERE version > 0"),
    )
}
