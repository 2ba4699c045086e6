//! Forensics: what changed in a stream's state between two instants, and which event
//! changed it (the comparison itself is event_store_core::fold::diff).
use crate::fold::reducers::rules;
use crate::fold::time_travel::{fold_stream, in_stream_order};
use crate::pg::jsonb::Json;
use crate::pg::schema::{column, nullable, OrRaise};
use event_store_core::fold::diff::changes;
use event_store_core::fold::plan::Point;
use event_store_core::fold::rules::initial_state;
use event_store_core::stream::category;
use pgrx::prelude::*;

/// The events after `from` (and after the snapshot's version) up to `to`, in stream order:
/// through a function reading only the columns it needs (sql/fold/fold.sql); before 0.3.0's SQL,
/// from the table.
const EVENTS_SQL: [&str; 2] = [
    "SELECT * FROM _event_store._es_diff_rows($1, $2, $3, $4)",
    "SELECT event_type, event_data, stream_version, created_at, event_id, \
            metadata ->> 'correlationId', event_version \
       FROM _event_store.log \
      WHERE stream_id = $1 AND created_at > $2 AND created_at <= $3 AND stream_version > $4 \
      ORDER BY stream_version",
];

/// One row per changed path per event, in stream order: the state at `from` is the
/// starting point, each event after it up to `to` is folded in turn.
#[pg_extern(sql = false)] // declared in sql/fold/fold.sql, with its settings
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
        let start = fold_stream(client, stream_id, Point::At(from.into_inner()));
        // Events up to `from` are filtered out by time; those in the snapshot by version.
        let (mut state, version, rules) = match start {
            Some(f) => (f.state, f.snapshot_version, f.rules),
            None => (initial_state(), 0, rules(category(stream_id))),
        };
        let mut rows = Vec::new();
        let args = [stream_id.into(), from.into(), to.into(), version.into()];
        let events = in_stream_order(|| {
            client.select(
                crate::pg::schema::qualified(
                    EVENTS_SQL[!crate::pg::schema::internal_layout() as usize],
                ),
                None,
                &args,
            )
        })
        .or_raise("reading the stream");
        for e in events {
            let event_type: String = column(&e, 1, "event_store.event_type");
            let Json(data) = column(&e, 2, "event_store.event_data");
            let before = state.clone();
            let version: i32 = column(&e, 7, "event_store.event_version");
            rules.apply(&mut state, &event_type, version, &data);
            let mut changed = Vec::new();
            changes(Some(&before), Some(&state), "", &mut changed);
            for c in changed {
                rows.push((
                    column(&e, 3, "event_store.stream_version"),
                    column(&e, 5, "event_store.event_id"),
                    event_type.clone(),
                    column(&e, 4, "event_store.created_at"),
                    nullable(&e, 6, "the correlation id"),
                    c.path,
                    c.before
                        .map(|v| crate::privacy::sealing::reveal_jsonb(pgrx::JsonB(v))),
                    c.after
                        .map(|v| crate::privacy::sealing::reveal_jsonb(pgrx::JsonB(v))),
                ));
            }
        }
        rows
    });
    TableIterator::new(rows)
}
