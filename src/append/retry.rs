//! Retries: claiming caller-chosen ids, and deciding whether an entry whose ids are stored is a
//! retry of that append (replayed) or a conflict (ES002).
use super::{arg, refused, uuid, Appended, Entry, Event};
use crate::pg::errors::Refused;
use crate::pg::jsonb;
use crate::pg::jsonb::functions::call;
use crate::pg::plans;
use crate::pg::schema::{column, OrRaise};
use event_store_core::append::{classify, Retry, Stored};
use pgrx::pg_sys::BuiltinOid as Oid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

const CLAIM_SQL: &str =
    "INSERT INTO _event_store.es_event_ids SELECT pg_catalog.unnest($1::uuid[]) \
    ON CONFLICT DO NOTHING RETURNING event_id";
// unnest over several arrays is FROM-clause syntax, not a function that could be qualified;
// the pinned search_path (pg_catalog first) is what resolves it.
/// The stored events an append's ids name, and whether each has the stream, type and version
/// the append gives; their data is compared in Rust (`same_data`).
const STORED_SQL: &str =
    "SELECT b.ord::int, e.event_id, e.stream_id OPERATOR(pg_catalog.=) b.stream \
       AND e.event_type OPERATOR(pg_catalog.=) b.type \
       AND e.event_version OPERATOR(pg_catalog.=) b.version, \
       e.stream_id, e.stream_version, e.global_position, e.created_at, e.event_data \
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[]) \
       WITH ORDINALITY AS b(id, stream, type, version, ord) \
  JOIN _event_store.log e ON e.event_id OPERATOR(pg_catalog.=) b.id";
// Each also claims the ids the store generated for the call: an id, whoever chose it, is
// held by one event (a caller reusing one the store handed out gets ES002, as for its own).
/// Whether a retry's data is the stored event's. A caller who may read personal data compares
/// plaintext (the stored event opened; the retry was not sealed yet, and the seal's nonce
/// differs anyway). For any other caller the answer must not depend on what it cannot read:
/// both sides are blinded (every value at a personal-data path of the type, and every sealed
/// value, withheld), so a retry that differs from the original only there is the same append.
fn same_data(
    mut stored: serde_json::Value,
    given: pg_sys::Datum,
    personal: Option<&event_store_core::catalog::Personal>,
    privileged: bool,
) -> bool {
    // SAFETY: a non-null jsonb datum, checked when the event was read.
    let mut given = unsafe { jsonb::to_value(given) };
    if privileged {
        crate::privacy::sealing::open_all(&mut stored);
        crate::privacy::sealing::open_all(&mut given);
    } else {
        let paths = personal.map_or(&[][..], |p| &p.paths[..]);
        event_store_core::privacy::sealing::blind(&mut stored, paths);
        event_store_core::privacy::sealing::blind(&mut given, paths);
    }
    // Compared as jsonb compares (numbers by value), as a SQL `=` did before.
    let (a, b) = (jsonb::datum(&stored), jsonb::datum(&given));
    // SAFETY: two non-null jsonb datums; jsonb_eq returns a bool.
    unsafe { call(pg_sys::jsonb_eq, &[a, b]) }.is_some_and(|d| d.value() != 0)
}

/// Claims the call's caller-chosen ids and decides, entry by entry, whether it is new or a
/// retry of an append stored whole. Returns the stored rows of replayed entries. `personal`
/// gives what the catalog says of an event's personal data (for the retry check).
pub(super) fn retries(
    client: &mut SpiClient<'_>,
    entries: &[Entry],
    personal: impl Fn(usize, &Event) -> Option<std::rc::Rc<event_store_core::catalog::Personal>>,
) -> Result<(Vec<bool>, Vec<Appended>), Refused> {
    let mut replay = vec![false; entries.len()];
    // (entry, event, its id) of the events given with an id.
    let given: Vec<(usize, &Event, [u8; 16])> = entries
        .iter()
        .enumerate()
        .flat_map(|(i, e)| e.events.iter().map(move |ev| (i, ev)))
        .filter_map(|(i, ev)| ev.id.map(|id| (i, ev, id)))
        .collect();
    if given.is_empty() {
        return Ok((replay, vec![]));
    }
    // Sorted, so that two calls claiming the same ids queue in one order.
    let mut ids: Vec<[u8; 16]> = given.iter().map(|g| g.2).collect();
    ids.sort_unstable();
    let claim = plans::kept(client, CLAIM_SQL, &[Oid::UUIDARRAYOID], true);
    let claimed = client
        .update(
            &*claim,
            None,
            &[arg(ids.iter().map(|b| uuid(*b)).collect::<Vec<_>>())],
        )
        .or_raise("claiming event ids")
        .len();
    if claimed == ids.len() {
        return Ok((replay, vec![])); // none was claimed before: none is stored
    }
    let plan = plans::kept(
        client,
        STORED_SQL,
        &[
            Oid::UUIDARRAYOID,
            Oid::TEXTARRAYOID,
            Oid::TEXTARRAYOID,
            Oid::INT4ARRAYOID,
        ],
        true,
    );
    let rows = client
        .update(
            &*plan,
            None,
            &[
                arg(given.iter().map(|g| uuid(g.2)).collect::<Vec<_>>()),
                arg(given
                    .iter()
                    .map(|g| entries[g.0].stream_id.as_str())
                    .collect::<Vec<_>>()),
                arg(given
                    .iter()
                    .map(|g| g.1.event_type.as_str())
                    .collect::<Vec<_>>()),
                arg(given.iter().map(|g| g.1.version).collect::<Vec<_>>()),
            ],
        )
        .or_raise("reading stored event ids");
    let privileged = crate::privacy::sealing::caller_privileged();
    // (entry, ordinal in `given`, stored, row)
    let mut found: Vec<(usize, usize, Stored, Appended, String)> = vec![];
    for row in rows {
        let ord = column::<i32>(&row, 1, "ordinality") as usize - 1;
        let id: pgrx::Uuid = column(&row, 2, "event_store.event_id");
        let position: i64 = column(&row, 6, "event_store.global_position");
        let (entry, ev, _) = given[ord];
        let same_rest: bool = column(&row, 3, "the comparison of stored events");
        let stored = Stored {
            position,
            same_content: same_rest && {
                let data: pgrx::JsonB = column(&row, 8, "event_store.event_data");
                let personal = personal(entry, ev);
                same_data(data.0, ev.data, personal.as_deref(), privileged)
            },
        };
        let at: TimestampWithTimeZone = column(&row, 7, "event_store.created_at");
        found.push((
            entry,
            ord,
            stored,
            Appended {
                entry,
                id: *id.as_bytes(),
                version: column(&row, 5, "event_store.stream_version"),
                position,
                at: at.into_inner(),
            },
            column(&row, 4, "event_store.stream_id"),
        ));
    }
    found.sort_by_key(|f| f.1);
    let mut rows = vec![];
    for (i, entry) in entries.iter().enumerate() {
        let mine: Vec<&(usize, usize, Stored, Appended, String)> =
            found.iter().filter(|f| f.0 == i).collect();
        let stored: Vec<Stored> = mine.iter().map(|f| f.2.clone()).collect();
        let ids_given = entry.events.iter().filter(|e| e.id.is_some()).count();
        match classify(entry.events.len(), ids_given, &stored) {
            Retry::New => {}
            Retry::Replay => {
                replay[i] = true;
                rows.extend(mine.iter().map(|f| f.3));
            }
            Retry::Conflict(k) => {
                let f = mine[k];
                return Err(refused(
                    b"ES002",
                    format!(
                        "event_store: event id {} already exists with other content",
                        uuid(f.3.id)
                    ),
                    format!(
                        "It is version {} of stream {}. A retry must repeat the stream, type, data and version of every event of the original append.",
                        f.3.version, f.4
                    ),
                    "",
                ));
            }
        }
    }
    Ok((replay, rows))
}
