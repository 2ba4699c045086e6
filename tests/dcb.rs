//! Conditional appends (Dynamic Consistency Boundary, docs/dcb.md) with real connections:
//! exactly one of many racing appends on one tag wins, appends on disjoint tags never wait for
//! each other, a failed append leaves no gap, and every read and es_verify see DCB events.
use event_store_testing::*;
use std::sync::{Arc, Barrier};
use std::thread;

/// An event with tags, as es_dcb_append's array element.
fn event(event_type: &str, tags: &[&str]) -> String {
    serde_json::json!([{"type": event_type, "data": {"n": 1}, "tags": tags}]).to_string()
}

/// "fail if an event with all these tags was stored after `after`".
fn condition(tags: &[&str], after: i64) -> String {
    serde_json::json!({"fail_if_events_match": {"items": [{"tags": tags}]}, "after": after})
        .to_string()
}

fn dcb_append(
    c: &mut postgres::Client,
    events: &str,
    cond: Option<&str>,
) -> Result<i64, postgres::Error> {
    c.query_one(
        "SELECT es_dcb_append($1::text::jsonb, $2::text::jsonb)",
        &[&events, &cond],
    )
    .map(|r| r.get(0))
}

#[test]
fn sixteen_conditional_appends_on_one_tag_let_exactly_one_win_each_round() {
    const WRITERS: usize = 16;
    const ROUNDS: usize = 20;
    let db = Arc::new(TestDb::new("dcb_race"));
    let barrier = Arc::new(Barrier::new(WRITERS));
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (db, barrier) = (db.clone(), barrier.clone());
            thread::spawn(move || {
                let mut c = db.connect();
                let mut won = vec![];
                for round in 0..ROUNDS {
                    let tag = format!("course:{round}");
                    // Every writer decides on the same head: nothing of this tag after it.
                    barrier.wait();
                    let head = count(&mut c, "SELECT es_feed_horizon()");
                    barrier.wait();
                    let r = dcb_append(
                        &mut c,
                        &event("StudentJoined", &[&tag, &format!("student:{w}")]),
                        Some(&condition(&[&tag], head)),
                    );
                    match r {
                        Ok(_) => won.push(round),
                        Err(e) => assert_eq!(e.code().map(|c| c.code()), Some("ES001"), "{e}"),
                    }
                    barrier.wait();
                }
                won
            })
        })
        .collect();
    let mut wins = vec![0; ROUNDS];
    for h in handles {
        for round in h.join().unwrap() {
            wins[round] += 1;
        }
    }
    assert_eq!(wins, vec![1; ROUNDS], "winners per round");
    let mut c = db.connect();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM event_store"),
        ROUNDS as i64
    );
    // The 300 failed appends took no position.
    assert_eq!(
        count(&mut c, "SELECT max(global_position) FROM event_store"),
        ROUNDS as i64
    );
}

#[test]
fn appends_on_disjoint_tags_do_not_wait_for_each_other_and_overlapping_ones_do() {
    let db = TestDb::new("dcb_disjoint");
    let mut other = db.connect();
    // On a hypertable the first event makes a chunk, which later appends wait for until it
    // commits: made here, before the appends the test holds open.
    dcb_append(&mut other, &event("Started", &[]), None).unwrap();
    let mut holders: Vec<postgres::Client> = (0..8).map(|_| db.connect()).collect();
    // Eight conditional appends on eight tags, each left uncommitted: none waits for another.
    for (i, c) in holders.iter_mut().enumerate() {
        let tag = format!("account:{i}");
        c.batch_execute("BEGIN; SET LOCAL lock_timeout = '5s'")
            .unwrap();
        dcb_append(c, &event("Opened", &[&tag]), Some(&condition(&[&tag], 0))).unwrap();
    }
    other.batch_execute("SET lock_timeout = '300ms'").unwrap();
    // A query or an event on a held tag waits for its holder (here: gives up, 55P03).
    for (events, cond) in [
        (event("Deposited", &["account:3"]), None),
        (
            event("Deposited", &["elsewhere"]),
            Some(condition(&["account:5", "x"], 0)),
        ),
        // A query without tags waits for every append in flight.
        (
            event("Audited", &[]),
            Some(
                r#"{"fail_if_events_match": {"items": [{"types": ["Closed"]}]}, "after": 0}"#
                    .into(),
            ),
        ),
        (
            event("Audited", &[]),
            Some(r#"{"fail_if_events_match": {"items": []}, "after": 0}"#.into()),
        ),
    ] {
        let r = dcb_append(&mut other, &events, cond.as_deref());
        assert_eq!(sqlstate(r), "55P03", "{events} {cond:?}");
    }
    // An unconditional append without tags, and a condition on an untouched tag, do not wait.
    dcb_append(&mut other, &event("Noted", &[]), None).unwrap();
    dcb_append(
        &mut other,
        &event("Noted", &["account:99"]),
        Some(&condition(&["account:99"], 0)),
    )
    .unwrap();
    for c in &mut holders {
        c.batch_execute("COMMIT").unwrap();
    }
    // Once committed, the held tags' events fail a condition from before them.
    let r = dcb_append(
        &mut other,
        &event("Opened", &["account:3"]),
        Some(&condition(&["account:3"], 0)),
    );
    assert_eq!(sqlstate(r), "ES001");
    assert_eq!(count(&mut other, "SELECT count(*) FROM event_store"), 11);
}

#[test]
fn conditions_follow_the_specification_and_failed_appends_leave_no_gap() {
    let db = TestDb::new("dcb_rules");
    let mut c = db.connect();
    assert_eq!(count(&mut c, "SELECT es_feed_horizon()"), 0);
    let one = event("CourseDefined", &["course:1"]);
    assert_eq!(dcb_append(&mut c, &one, None).unwrap(), 1);
    let fails = |c: &mut postgres::Client, cond: &str| {
        sqlstate(dcb_append(c, &event("Other", &[]), Some(cond)))
    };
    for cond in [
        r#"{"fail_if_events_match": {"items": []}, "after": null}"#,
        r#"{"fail_if_events_match": {"items": []}, "after": 0}"#,
        r#"{"fail_if_events_match": {"items": [{"types": ["CourseDefined"]}]}}"#,
        r#"{"fail_if_events_match": {"items": [{"tags": ["course:1"]}]}}"#,
        r#"{"fail_if_events_match": {"items": [{"types": ["CourseDefined", "X"], "tags": ["course:1"]}]}}"#,
        r#"{"fail_if_events_match": {"items": [{"tags": ["nope"]}, {"tags": ["course:1"]}]}}"#,
        r#"{"fail_if_events_match": {"items": [{}]}, "after": 0}"#,
    ] {
        assert_eq!(fails(&mut c, cond), "ES001", "{cond}");
    }
    // Not matching: after the event, another type, a tag it lacks.
    for cond in [
        r#"{"fail_if_events_match": {"items": []}, "after": 1}"#,
        r#"{"fail_if_events_match": {"items": [{"types": ["X"], "tags": ["course:1"]}]}}"#,
        r#"{"fail_if_events_match": {"items": [{"tags": ["course:1", "student:1"]}]}}"#,
    ] {
        dcb_append(&mut c, &event("Other", &[]), Some(cond)).unwrap();
    }
    // Seven failed appends, three that succeeded: positions 1 to 4, no gap.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_store WHERE global_position BETWEEN 1 AND 4"
        ),
        4
    );
    assert_eq!(count(&mut c, "SELECT es_feed_horizon()"), 4);
    // Bad input: nothing written.
    for (events, cond, code) in [
        ("[]", None, "22023"),
        ("{}", None, "22023"),
        (
            r#"[{"type": "T", "data": {}, "tags": ["a", "a"]}]"#,
            None,
            "22023",
        ),
        (
            r#"[{"type": "T", "data": {}, "tags": [""]}]"#,
            None,
            "22023",
        ),
        (r#"[{"type": "T", "data": {}, "tags": "a"}]"#, None, "22023"),
        (
            r#"[{"type": "T", "data": {}, "stream_id": 7}]"#,
            None,
            "22023",
        ),
        (
            r#"[{"type": "T", "data": {}}]"#,
            Some(r#"{"after": -1}"#),
            "22023",
        ),
        (
            r#"[{"type": "T", "data": {}}]"#,
            Some(r#"{"fail_if_events_match": {"items": [{"tag": ["a"]}]}}"#),
            "22023",
        ),
        (
            r#"[{"type": "T", "data": {}, "stream_id": "event_store-x"}]"#,
            None,
            "42501",
        ),
    ] {
        assert_eq!(
            sqlstate(dcb_append(&mut c, events, cond)),
            code,
            "{events} {cond:?}"
        );
    }
    let r = c.query_one("SELECT es_dcb_append(NULL)", &[]);
    assert_eq!(sqlstate(r), "22004");
    // A condition needs READ COMMITTED (its check must see what it waited for); an
    // unconditional append does not.
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .unwrap();
    let r = dcb_append(&mut c, &event("Other", &["x"]), Some(&condition(&["x"], 0)));
    assert_eq!(sqlstate(r), "0A000");
    c.batch_execute("ROLLBACK; BEGIN ISOLATION LEVEL REPEATABLE READ")
        .unwrap();
    dcb_append(&mut c, &event("Other", &["x"]), None).unwrap();
    c.batch_execute("ROLLBACK").unwrap();
    let r = c.query("SELECT * FROM es_dcb_read(NULL, 0, -1)", &[]);
    assert_eq!(sqlstate(r), "22023");
    assert_eq!(count(&mut c, "SELECT count(*) FROM event_store"), 4);
}

#[test]
fn dcb_events_are_seen_by_every_read_and_verify_with_their_tags_hashed() {
    let db = TestDb::new("dcb_reads");
    let mut c = db.connect();
    let last = dcb_append(
        &mut c,
        r#"[{"type": "CourseDefined", "data": {"capacity": 1}, "tags": ["course:1"]},
            {"type": "StudentJoined", "data": {}, "tags": ["course:1", "student:1"], "stream_id": "student-1"},
            {"type": "Noted", "data": {}}]"#,
        None,
    )
    .unwrap();
    assert_eq!(last, 3);
    c.batch_execute("SELECT es_append('student-1', 'Renamed', '{}', tags => '{student:1}')")
        .unwrap();
    let rows: Vec<(i64, String, Vec<String>)> = c
        .query(
            "SELECT global_position, event_type, tags FROM es_dcb_read('{\"items\": [{\"tags\": [\"student:1\"]}, {\"types\": [\"CourseDefined\"]}]}')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, "CourseDefined".into(), vec!["course:1".to_string()]),
            (
                2,
                "StudentJoined".into(),
                vec!["course:1".into(), "student:1".into()]
            ),
            (4, "Renamed".into(), vec!["student:1".into()]),
        ]
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM es_dcb_read('{\"items\": [{\"tags\": [\"course:1\", \"student:1\"]}]}', 1)"),
        1
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM es_dcb_read(NULL, 1, 2)"),
        2
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM es_read_all(0, 100) WHERE tags <> '{}'"
        ),
        3
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM es_stream('student-1')"),
        2
    );
    // The call's own stream: its events, versions 1 and 2, in category dcb.
    let stream: String = c
        .query_one(
            "SELECT stream_id FROM event_store WHERE global_position = 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(stream.starts_with("dcb-"), "{stream}");
    assert_eq!(
        count(
            &mut c,
            &format!("SELECT max(stream_version) FROM es_stream('{stream}')")
        ),
        2
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM es_read_category('dcb')"),
        2
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
    // The recipe in plain SQL (docs/integrity.md), tags included.
    assert_eq!(
        count(
            &mut c,
            "WITH RECURSIVE e AS (SELECT *, row_number() OVER (PARTITION BY stream_id ORDER BY stream_version) AS n FROM event_store),
             chain AS (
                 SELECT e.stream_id, e.n, e.hash, sha256(decode(repeat('00', 32), 'hex') || convert_to(concat_ws(chr(31),
                        e.event_id, e.stream_id, e.stream_version, e.global_position, e.event_type, e.event_version,
                        (extract(epoch FROM e.created_at) * 1000000)::bigint, e.event_data::text, e.metadata::text,
                        NULLIF(array_to_string(e.tags, chr(30)), '')), 'UTF8')) AS computed
                   FROM e WHERE e.n = 1
                 UNION ALL
                 SELECT e.stream_id, e.n, e.hash, sha256(chain.computed || convert_to(concat_ws(chr(31),
                        e.event_id, e.stream_id, e.stream_version, e.global_position, e.event_type, e.event_version,
                        (extract(epoch FROM e.created_at) * 1000000)::bigint, e.event_data::text, e.metadata::text,
                        NULLIF(array_to_string(e.tags, chr(30)), '')), 'UTF8'))
                   FROM chain JOIN e ON e.stream_id = chain.stream_id AND e.n = chain.n + 1)
             SELECT count(*) FROM chain WHERE hash = computed"
        ),
        4
    );
    // Tampering with tags is found.
    c.batch_execute(
        "SET session_replication_role = replica;
         UPDATE event_store SET tags = '{course:2}' WHERE global_position = 1;
         RESET session_replication_role;",
    )
    .unwrap();
    assert!(count(&mut c, "SELECT count(*) FROM es_verify()") > 0);
}

#[test]
fn readers_read_and_writers_append_conditionally() {
    let db = TestDb::new("dcb_roles");
    let mut c = db.connect();
    let reader = format!("{}_reader", db.name);
    let writer = format!("{}_writer", db.name);
    c.batch_execute(&format!(
        "CREATE ROLE {reader} LOGIN IN ROLE event_store_reader; CREATE ROLE {writer} LOGIN IN ROLE event_store_writer, event_store_reader;"
    ))
    .unwrap();
    let mut w = db.connect_as(&writer);
    dcb_append(&mut w, &event("T", &["t"]), Some(&condition(&["t"], 0))).unwrap();
    let mut r = db.connect_as(&reader);
    assert_eq!(
        count(
            &mut r,
            "SELECT count(*) FROM es_dcb_read('{\"items\": [{\"tags\": [\"t\"]}]}')"
        ),
        1
    );
    assert_eq!(
        sqlstate(dcb_append(&mut r, &event("T", &["t"]), None)),
        "42501"
    );
    let mut nobody = db.connect();
    nobody
        .batch_execute(&format!("CREATE ROLE {}_nobody LOGIN", db.name))
        .unwrap();
    let mut n = db.connect_as(&format!("{}_nobody", db.name));
    assert_eq!(
        sqlstate(n.query("SELECT * FROM es_dcb_read()", &[])),
        "42501"
    );
    c.batch_execute(&format!(
        "DROP OWNED BY {reader}, {writer}; DROP ROLE {reader}, {writer}, {}_nobody",
        db.name
    ))
    .unwrap();
}

#[test]
fn dcb_events_are_sealed_revealed_and_erased_like_any_event() {
    let db = TestDb::new("dcb_personal");
    let mut c = db.connect();
    let (reader, officer) = (
        format!("{}_reader", db.name),
        format!("{}_officer", db.name),
    );
    c.batch_execute(&format!(
        "CREATE ROLE {reader} IN ROLE event_store_reader;
         CREATE ROLE {officer} IN ROLE event_store_reader, event_store_personal_data;
         SELECT es_define_event_type('StudentRegistered', personal_data => '{{/email}}', subject => '/studentId');"
    ))
    .unwrap();
    dcb_append(
        &mut c,
        r#"[{"type": "StudentRegistered", "data": {"studentId": "s-1", "email": "ann@example.com"}, "tags": ["student:s-1"]}]"#,
        Some(&condition(&["student:s-1"], 0)),
    )
    .unwrap();
    let stored: String = c
        .query_one("SELECT event_data ->> 'email' FROM event_store", &[])
        .unwrap()
        .get(0);
    assert_ne!(stored, "ann@example.com", "stored sealed");
    let read = "SELECT event_data ->> 'email' FROM es_dcb_read('{\"items\": [{\"tags\": [\"student:s-1\"]}]}')";
    let email = |c: &mut postgres::Client| -> String { c.query_one(read, &[]).unwrap().get(0) };
    assert_eq!(email(&mut db.connect_as(&officer)), "ann@example.com");
    assert_eq!(email(&mut db.connect_as(&reader)), "[personal data]");
    assert_eq!(
        count(&mut c, "SELECT es_forget_subject('s-1', 'request')"),
        1
    );
    assert_eq!(email(&mut db.connect_as(&officer)), "[erased]");
    assert_eq!(count(&mut c, "SELECT count(*) FROM es_verify()"), 0);
    c.batch_execute(&format!("DROP ROLE {reader}, {officer}"))
        .unwrap();
}

/// The positions es_dcb_read returns for `args` (its SQL arguments).
fn read_positions(c: &mut postgres::Client, args: &str) -> Vec<i64> {
    c.query(
        &format!("SELECT global_position FROM es_dcb_read({args})"),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn dcb_reads_merge_items_stop_at_the_horizon_and_honour_row_security() {
    let db = TestDb::new("dcb_read_rules");
    let mut c = db.connect();
    dcb_append(
        &mut c,
        r#"[{"type": "CourseDefined", "data": {}, "tags": ["course:1"], "stream_id": "course-1"},
            {"type": "StudentJoined", "data": {}, "tags": ["course:1", "student:1"], "stream_id": "course-1"},
            {"type": "StudentRenamed", "data": {}, "tags": ["student:1"], "stream_id": "student-1"},
            {"type": "CourseDefined", "data": {}, "stream_id": "course-2"}]"#,
        None,
    )
    .unwrap();
    // Items merged in position order, an event two items match once; after and limit apply
    // to the merged result.
    let both = r#"'{"items": [{"tags": ["course:1"]}, {"tags": ["student:1"]}]}'"#;
    assert_eq!(read_positions(&mut c, both), [1, 2, 3]);
    assert_eq!(read_positions(&mut c, &format!("{both}, 1")), [2, 3]);
    assert_eq!(read_positions(&mut c, &format!("{both}, NULL, 2")), [1, 2]);
    assert_eq!(
        read_positions(&mut c, &format!("{both}, 0, 0")),
        Vec::<i64>::new()
    );
    let typed = r#"'{"items": [{"types": ["CourseDefined"]}, {"types": ["StudentRenamed"], "tags": ["student:1"]}]}'"#;
    assert_eq!(read_positions(&mut c, typed), [1, 3, 4]);
    // The planner settings its statements run with (a typed item's, a condition's) are the
    // session's again after the call.
    let settings = "SELECT current_setting('jit') || current_setting('plan_cache_mode')";
    c.batch_execute("SET jit = on; SET plan_cache_mode = force_custom_plan")
        .unwrap();
    assert_eq!(read_positions(&mut c, typed), [1, 3, 4]);
    assert_eq!(
        sqlstate(dcb_append(
            &mut c,
            &event("CourseDefined", &[]),
            Some(
                r#"{"fail_if_events_match": {"items": [{"types": ["CourseDefined"]}]}, "after": 0}"#
            )
        )),
        "ES001"
    );
    let after: String = c.query_one(settings, &[]).unwrap().get(0);
    assert_eq!(after, "onforce_custom_plan");
    c.batch_execute("RESET jit; RESET plan_cache_mode").unwrap();
    assert_eq!(read_positions(&mut c, r#"'{"items": [{}]}'"#), [1, 2, 3, 4]);
    // A query nested deeper than its shape allows is bad input, not an internal error.
    let deep = format!(
        r#"'{{"items": [{{"tags": {}"a"{}}}]}}'"#,
        "[".repeat(2000),
        "]".repeat(2000)
    );
    assert_eq!(
        sqlstate(c.query(&format!("SELECT * FROM es_dcb_read({deep})"), &[])),
        "22023"
    );
    assert_eq!(
        sqlstate(c.query("SELECT * FROM es_dcb_read('[]')", &[])),
        "22023"
    );
    // Feed reads need READ COMMITTED: a transaction snapshot could miss what the horizon covers.
    for level in ["REPEATABLE READ", "READ UNCOMMITTED"] {
        c.batch_execute(&format!("BEGIN ISOLATION LEVEL {level}"))
            .unwrap();
        assert_eq!(
            sqlstate(c.query("SELECT * FROM es_dcb_read()", &[])),
            "0A000"
        );
        c.batch_execute("ROLLBACK").unwrap();
    }

    // Never past the horizon: position 5 in flight holds back 6, committed after it.
    let mut slow = db.connect();
    slow.batch_execute(
        "BEGIN; SELECT es_append('course-3', 'CourseDefined', '{}', tags => '{course:3}')",
    )
    .unwrap();
    dcb_append(&mut c, &event("CourseDefined", &["course:3"]), None).unwrap();
    let course3 = r#"'{"items": [{"tags": ["course:3"]}]}'"#;
    assert_eq!(read_positions(&mut c, course3), Vec::<i64>::new());
    assert_eq!(read_positions(&mut c, "NULL"), [1, 2, 3, 4]);
    slow.batch_execute("COMMIT").unwrap();
    assert_eq!(read_positions(&mut c, course3), [5, 6]);

    // Row level security: a tenant reads what its policy lets it, by tag as by everything.
    let tenant = format!("{}_tenant", db.name);
    c.batch_execute(&format!(
        "CREATE ROLE {tenant} LOGIN IN ROLE event_store_reader;
         ALTER TABLE event_store ENABLE ROW LEVEL SECURITY;
         CREATE POLICY students ON event_store TO {tenant} USING (stream_id LIKE 'student-%');"
    ))
    .unwrap();
    let mut t = db.connect_as(&tenant);
    assert_eq!(read_positions(&mut t, both), [3]);
    assert_eq!(read_positions(&mut t, "NULL"), [3]);
    assert_eq!(read_positions(&mut c, both), [1, 2, 3]);
    c.batch_execute(&format!(
        "ALTER TABLE event_store DISABLE ROW LEVEL SECURITY; DROP POLICY students ON event_store;
         DROP OWNED BY {tenant}; DROP ROLE {tenant}"
    ))
    .unwrap();
}

/// A session's tag reads keep which indexes each relation has: an index dropped and made again
/// by another session is looked up afresh, not opened by the oid it had.
#[test]
fn tag_reads_follow_an_index_made_again_by_another_session() {
    let db = TestDb::new("dcb_index_again");
    let (mut reader, mut other) = (db.connect(), db.connect());
    let course = r#"'{"items": [{"tags": ["course:1"]}]}'"#;
    let stored: Vec<i64> = (0..3)
        .map(|_| dcb_append(&mut other, &event("StudentJoined", &["course:1"]), None).unwrap())
        .collect();
    assert_eq!(read_positions(&mut reader, course), stored);
    for again in [
        "DROP INDEX event_store_tags_idx",
        "CREATE INDEX event_store_tags_idx ON event_store USING gin (tags) WITH (fastupdate = off)
             WHERE tags <> '{}'::text[]",
    ] {
        other.batch_execute(again).unwrap();
        assert_eq!(read_positions(&mut reader, course), stored, "after {again}");
    }
}

#[test]
fn tag_reads_and_conditions_see_chunks_made_since_they_last_looked() {
    if !timescaledb() {
        return;
    }
    let db = TestDb::new("dcb_chunks");
    let (mut c, mut other) = (db.connect(), db.connect());
    // Tiny chunks: each append below lands in one of its own, made by another session after
    // this one's tag reads and checks last listed event_store's chunks.
    c.batch_execute("SELECT set_chunk_time_interval('event_store', interval '20 milliseconds')")
        .unwrap();
    let course = r#"'{"items": [{"tags": ["course:1"]}]}'"#;
    let mut stored = vec![];
    for _ in 0..3 {
        stored.push(dcb_append(&mut other, &event("StudentJoined", &["course:1"]), None).unwrap());
        assert_eq!(read_positions(&mut c, course), stored);
        let last = *stored.last().unwrap();
        assert_eq!(
            sqlstate(dcb_append(
                &mut c,
                &event("StudentJoined", &["course:1"]),
                Some(&condition(&["course:1"], last - 1))
            )),
            "ES001"
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let chunks: i64 = c
        .query_one(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'event_store'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(chunks >= 3, "{chunks} chunks");
}

/// A check that finds a tag's watermark at or below its position skips reading (docs/dcb.md).
/// The watermarks live in shared memory and start empty with the server: events stored before
/// a restart, or replayed by a standby before its promotion, are read by the check.
#[test]
fn conditions_see_events_stored_before_a_restart_or_a_promotion() {
    let preload = match timescaledb() {
        true => "shared_preload_libraries = 'timescaledb,event_store'",
        false => "shared_preload_libraries = 'event_store'",
    };
    let primary = Cluster::start_with("dcb-marks", preload);
    let mut p = primary.connect();
    if timescaledb() {
        p.batch_execute("SET client_min_messages = warning; CREATE EXTENSION timescaledb")
            .unwrap();
    }
    p.batch_execute("CREATE EXTENSION event_store").unwrap();
    let joined = || event("StudentJoined", &["course:1"]);
    let after = |c: &mut postgres::Client, position: i64| {
        sqlstate(dcb_append(
            c,
            &joined(),
            Some(&condition(&["course:1"], position)),
        ))
    };
    let first = dcb_append(&mut p, &joined(), None).unwrap();
    let standby = primary.standby("dcb-marks-standby");
    drop(p);
    primary.pg_ctl("stop");
    primary.pg_ctl("start");
    let mut p = primary.connect();
    assert_eq!(after(&mut p, first - 1), "ES001", "after a restart");
    // Below the session's floor, so read (nothing came after `first`); this append raises the
    // watermark, so the next check after `first` finds it above and reads again.
    let second = dcb_append(&mut p, &joined(), Some(&condition(&["course:1"], first))).unwrap();
    assert_eq!(
        after(&mut p, first),
        "ES001",
        "after an append raised the watermark"
    );
    let lsn: String = p
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .unwrap()
        .get(0);
    let mut s = standby.connect();
    wait_for(
        std::time::Duration::from_secs(30),
        "the standby's replay",
        || {
            s.query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .unwrap()
            .get(0)
        },
    );
    drop(p);
    primary.pg_ctl("stop");
    standby.pg_ctl("promote");
    let mut s = standby.connect();
    assert_eq!(after(&mut s, second - 1), "ES001", "after a promotion");
    assert!(dcb_append(&mut s, &joined(), Some(&condition(&["course:1"], second))).is_ok());
}

#[test]
fn a_tag_many_events_carry_is_read_and_checked_after_a_recent_position() {
    let db = TestDb::new("dcb_hot_tag");
    let mut c = db.connect();
    // course:1 on the 300 events at even positions, course:2 on the others: enough for a read
    // or check after a recent position to go by the position index rather than every event.
    c.batch_execute(
        "SELECT count(es_dcb_append(jsonb_build_array(jsonb_build_object('type', 'Joined', 'data', '{}'::jsonb,
             'tags', jsonb_build_array(CASE WHEN g % 2 = 0 THEN 'course:1' ELSE 'course:2' END)))))
           FROM generate_series(1, 600) g",
    )
    .unwrap();
    let hot = r#"'{"items": [{"tags": ["course:1"]}]}'"#;
    assert_eq!(read_positions(&mut c, hot).len(), 300);
    // Whole rows, as stored: the rows a read copies as it finds them (up to work_mem), and the
    // rest it reads again once sorted.
    let rows = |c: &mut postgres::Client, sql: &str| -> Vec<String> {
        c.query(&format!("SELECT (r.*)::text FROM ({sql}) r"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let stored = rows(
        &mut c,
        "SELECT global_position, event_type, event_data, tags, metadata, created_at FROM event_store \
          WHERE tags @> '{course:1}' ORDER BY global_position",
    );
    for work_mem in ["4MB", "64kB"] {
        c.batch_execute(&format!("SET work_mem = '{work_mem}'"))
            .unwrap();
        assert_eq!(
            rows(&mut c, &format!("SELECT * FROM es_dcb_read({hot})")),
            stored
        );
    }
    c.batch_execute("RESET work_mem").unwrap();
    assert_eq!(
        read_positions(&mut c, &format!("{hot}, 590")),
        [592, 594, 596, 598, 600]
    );
    assert_eq!(
        read_positions(&mut c, &format!("{hot}, 595, 2")),
        [596, 598]
    );
    let typed = r#"'{"items": [{"tags": ["course:1"], "types": ["Left"]}]}'"#;
    assert_eq!(
        read_positions(&mut c, &format!("{typed}, 590")),
        Vec::<i64>::new()
    );
    // The same as a reader, not the owner.
    let reader = format!("{}_reader", db.name);
    c.batch_execute(&format!(
        "CREATE ROLE {reader} LOGIN IN ROLE event_store_reader"
    ))
    .unwrap();
    let mut r = db.connect_as(&reader);
    assert_eq!(
        read_positions(&mut r, &format!("{hot}, 590")),
        [592, 594, 596, 598, 600]
    );
    drop(r);
    c.batch_execute(&format!("DROP OWNED BY {reader}; DROP ROLE {reader}"))
        .unwrap();
    // Position 600 carries the tag: a condition after 599 fails, one after 600 holds.
    assert_eq!(
        sqlstate(dcb_append(
            &mut c,
            &event("Joined", &["course:1"]),
            Some(&condition(&["course:1"], 599))
        )),
        "ES001"
    );
    assert_eq!(
        dcb_append(
            &mut c,
            &event("Joined", &["course:1"]),
            Some(&condition(&["course:1"], 600))
        )
        .unwrap(),
        601
    );
}
