//! es_diff: each change, with the event that made it.
use super::*;

#[test]
fn es_diff_names_each_change_and_the_event_that_made_it() {
    let db = TestDb::new("fold_diff");
    let mut c = db.connect();
    define(
        &mut c,
        "user",
        "UserEmailChanged",
        json!({"op": "set", "path": "/email", "from": "/newEmail"}),
    );
    append(
        &mut c,
        "user-7",
        "UserRegistered",
        json!({"email": "a@x", "role": "user"}),
    );
    let from: String = c
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    c.batch_execute("BEGIN; SET LOCAL event_store.correlation_id = 'req-42'")
        .unwrap();
    append(
        &mut c,
        "user-7",
        "UserEmailChanged",
        json!({"newEmail": "b@x"}),
    );
    append(
        &mut c,
        "user-7",
        "RoleRevoked",
        json!({"role": null, "flags": {"locked": true}}),
    );
    c.batch_execute("COMMIT").unwrap();
    let to: String = c
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    append(
        &mut c,
        "user-7",
        "UserEmailChanged",
        json!({"newEmail": "later@x"}),
    );
    let rows = c
        .query(
            &format!("SELECT stream_version, event_type, correlation_id, path, before, after, event_id = (SELECT event_id FROM event_store WHERE stream_id = 'user-7' AND stream_version = d.stream_version)
                        FROM es_diff('user-7', '{from}', '{to}') d"),
            &[],
        )
        .unwrap();
    type Change = (
        i64,
        String,
        Option<String>,
        String,
        Option<Value>,
        Option<Value>,
        bool,
    );
    let got: Vec<Change> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect();
    let req = Some("req-42".to_string());
    assert_eq!(
        got,
        vec![
            (
                2,
                "UserEmailChanged".into(),
                req.clone(),
                "/email".into(),
                Some(json!("a@x")),
                Some(json!("b@x")),
                true
            ),
            (
                3,
                "RoleRevoked".into(),
                req.clone(),
                "/role".into(),
                Some(json!("user")),
                None,
                true
            ),
            (
                3,
                "RoleRevoked".into(),
                req,
                "/flags".into(),
                None,
                Some(json!({"locked": true})),
                true
            ),
        ]
    );
    assert_eq!(
        sqlstate(c.query(
            &format!("SELECT * FROM es_diff('user-7', '{to}', '{from}')"),
            &[]
        )),
        "22023"
    );
    assert_eq!(
        common::count(
            &mut c,
            "SELECT count(*) FROM es_diff('user-7', NULL, now())"
        ),
        0
    );
}
