//! Reducers, snapshots, es_fold and es_diff against a real PostgreSQL, and the property that
//! every path to a state (snapshots or not, es_state_at or es_fold) gives the answer of an
//! independent fold in plain Rust.
use event_store_testing as common;

// The pure rule engine is the model the database must agree with.
use event_store_core::fold::{reducers as model, rules};

use common::{sqlstate, TestDb};
use postgres::Client;
use rand::Rng;
use serde_json::{json, Value};

mod diff;
mod reducers;
mod snapshots;

fn state(c: &mut Client, sql: &str) -> Option<Value> {
    c.query_one(sql, &[]).unwrap().get(0)
}

fn define(c: &mut Client, category: &str, event_type: &str, rule: Value) {
    c.execute(
        "SELECT es_define_reducer($1, $2, $3)",
        &[&category, &event_type, &rule],
    )
    .unwrap();
}

fn append(c: &mut Client, stream: &str, ty: &str, data: Value) {
    c.execute(
        "SELECT 1 FROM es_append($1, $2, $3)",
        &[&stream, &ty, &data],
    )
    .unwrap();
}
