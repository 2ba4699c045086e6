//! event_store from Rust with tokio-postgres: append with an expected version and retry on a
//! conflict, read a stream, fold its state, follow the feed with LISTEN and a checkpoint saved
//! in the same transaction as the consumer's effects, and decide across two boundaries with a
//! conditional append on tags (docs/dcb.md).
//!
//! Connects with the libpq-style string in EVENT_STORE_URL, e.g.
//! `host=/var/run/postgresql user=app dbname=shop`. Exits non-zero when something is not as
//! the store promises (scripts/test.sh runs it).
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{timeout, Duration};
use tokio_postgres::{AsyncMessage, Client, Config, Error, NoTls};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Connects, and forwards the connection's notifications to the returned channel.
async fn connect() -> Result<(Client, mpsc::UnboundedReceiver<String>)> {
    let config: Config = std::env::var("EVENT_STORE_URL")?.parse()?;
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    Ok((client, rx))
}

fn is_conflict(e: &Error) -> bool {
    // ES001: the stream is not at the expected version, or a conditional append's query
    // matched an event after the position it names (docs/reference.md, SQLSTATEs).
    e.code().map(|c| c.code()) == Some("ES001")
}

/// Appends what `decide` makes of the stream's version, expecting that version; on a conflict
/// (another writer got there first) reads the version again and decides again. `known` is the
/// version the caller last saw. Returns the new version and the attempts it took.
async fn append_with_retry(
    client: &Client,
    stream_id: &str,
    event_type: &str,
    mut known: i64,
    decide: impl Fn(i64) -> Value,
) -> Result<(i64, u32)> {
    for attempt in 1.. {
        let appended = client
            .query_one(
                "SELECT stream_version FROM es_append($1, $2, $3, expected_version => $4)",
                &[&stream_id, &event_type, &decide(known), &known],
            )
            .await;
        match appended {
            Ok(row) => return Ok((row.get(0), attempt)),
            Err(e) if is_conflict(&e) && attempt < 5 => {
                known = client
                    .query_one("SELECT es_stream_version($1)", &[&stream_id])
                    .await?
                    .get(0);
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!()
}

/// DCB (docs/dcb.md): a course's and a student's events, as one query.
fn enrolment(course: &str, student: &str) -> Value {
    json!({"items": [{"tags": [format!("course:{course}")]}, {"tags": [format!("student:{student}")]}]})
}

/// What an enrolment decision needs: the seats the course's events take, and the last
/// position read (None: nothing matched yet).
struct Seen {
    taken: usize,
    head: Option<i64>,
}

async fn read_enrolment(client: &Client, course: &str, student: &str) -> Result<Seen> {
    let rows = client
        .query(
            "SELECT global_position, tags FROM es_dcb_read($1)",
            &[&enrolment(course, student)],
        )
        .await?;
    let tag = format!("course:{course}");
    Ok(Seen {
        taken: rows
            .iter()
            .filter(|r| r.get::<_, Vec<String>>(1).contains(&tag))
            .count(),
        head: rows.last().map(|r| r.get(0)),
    })
}

/// Enrols `student` in `course` while a seat is left, on the condition that nothing the query
/// matches came after what was read; refused (ES001: another decision came first), reads
/// again and decides again. Returns whether the student got a seat and the attempts it took.
async fn enrol_with_retry(
    client: &Client,
    course: &str,
    student: &str,
    seats: usize,
    mut seen: Seen,
) -> Result<(bool, u32)> {
    for attempt in 1.. {
        if seen.taken >= seats {
            return Ok((false, attempt));
        }
        let events = json!([{
            "type": "StudentEnrolled",
            "data": {"course": course, "student": student},
            "tags": [format!("course:{course}"), format!("student:{student}")],
        }]);
        let condition =
            json!({"fail_if_events_match": enrolment(course, student), "after": seen.head});
        match client
            .execute("SELECT es_dcb_append($1, $2)", &[&events, &condition])
            .await
        {
            Ok(_) => return Ok((true, attempt)),
            Err(e) if is_conflict(&e) && attempt < 5 => {
                seen = read_enrolment(client, course, student).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!()
}

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        println!("ok: {what}");
        Ok(())
    } else {
        Err(format!("not so: {what}").into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let (app, _) = connect().await?;
    let (other, _) = connect().await?;
    let cart = "cart-rust-1";

    // Append, expecting a new stream.
    let (v, _) = append_with_retry(
        &app,
        cart,
        "ItemAdded",
        0,
        |_| json!({"sku": "A", "qty": 1}),
    )
    .await?;
    check(v == 1, "a new stream starts at version 1")?;
    // Another writer appends meanwhile: our next append, expecting version 1, conflicts once.
    other
        .execute(
            "SELECT es_append($1, 'ItemAdded', '{\"sku\": \"B\", \"qty\": 2}')",
            &[&cart],
        )
        .await?;
    let (v, attempts) = append_with_retry(
        &app,
        cart,
        "CheckedOut",
        1,
        |seen| json!({"items_seen": seen}),
    )
    .await?;
    check(
        v == 3 && attempts == 2,
        "a conflict is retried against the new version",
    )?;

    // Read the stream; fold its state (no reducers: each event's data merged in).
    let rows = app
        .query(
            "SELECT stream_version, event_type, event_data FROM es_stream($1)",
            &[&cart],
        )
        .await?;
    for r in &rows {
        println!(
            "  {} {} {}",
            r.get::<_, i64>(0),
            r.get::<_, String>(1),
            r.get::<_, Value>(2)
        );
    }
    check(rows.len() == 3, "the stream reads back in version order")?;
    let state: Value = app.query_one("SELECT es_state($1)", &[&cart]).await?.get(0);
    check(
        state["items_seen"] == 2 && state["sku"] == "B",
        "the state folds every event",
    )?;

    // Follow the feed: read after the saved checkpoint, apply, save the position with the
    // effects in one transaction; sleep until NOTIFY event_store says more has committed.
    let (mut consumer, mut notified) = connect().await?;
    consumer
        .batch_execute("CREATE TEMP TABLE seen (position bigint PRIMARY KEY); LISTEN event_store")
        .await?;
    let name = "rust-example";
    let mut expected = 3;
    let mut extra_appended = false;
    loop {
        let tx = consumer.transaction().await?;
        let after: i64 = tx
            .query_one("SELECT coalesce(es_checkpoint($1), 0)", &[&name])
            .await?
            .get(0);
        let events = tx
            .query(
                "SELECT global_position FROM es_read_all($1, 100)",
                &[&after],
            )
            .await?;
        for e in &events {
            let position: i64 = e.get(0);
            tx.execute("INSERT INTO seen VALUES ($1)", &[&position])
                .await?;
        }
        if let Some(last) = events.last() {
            let last: i64 = last.get(0);
            tx.execute("SELECT es_save_checkpoint($1, $2)", &[&name, &last])
                .await?;
        }
        tx.commit().await?;
        let seen: i64 = consumer
            .query_one("SELECT count(*) FROM seen", &[])
            .await?
            .get(0);
        if seen == expected {
            if extra_appended {
                break;
            }
            // Caught up: one more event from another connection must wake us.
            other
                .execute("SELECT es_append('cart-rust-2', 'ItemAdded', '{}')", &[])
                .await?;
            expected += 1;
            extra_appended = true;
        }
        let woke = timeout(Duration::from_secs(10), notified.recv()).await;
        check(woke.is_ok(), "NOTIFY event_store wakes the consumer")?;
    }
    let checkpoint: i64 = consumer
        .query_one("SELECT es_checkpoint($1)", &[&name])
        .await?
        .get(0);
    check(
        checkpoint == 4,
        "every event consumed once, the checkpoint at the last",
    )?;

    // One seat left: Ann's decision reads the course, then Bob enrols first. Ann's append,
    // conditioned on what she read, is refused; she reads again and finds the course full.
    let ann_saw = read_enrolment(&app, "algebra", "ann").await?;
    let bob_saw = read_enrolment(&other, "algebra", "bob").await?;
    let (enrolled, attempts) = enrol_with_retry(&other, "algebra", "bob", 1, bob_saw).await?;
    check(
        enrolled && attempts == 1,
        "a decision across a course and a student appends on its condition",
    )?;
    let (enrolled, attempts) = enrol_with_retry(&app, "algebra", "ann", 1, ann_saw).await?;
    check(
        !enrolled && attempts == 2,
        "a decision on a stale read is refused (ES001), decided again: the course is full",
    )?;
    Ok(())
}
