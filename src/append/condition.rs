//! What an append locks for its tags and its condition, and the condition's check
//! (docs/dcb.md; the locking rule and why it is complete: `event_store_core::dcb`).
use super::watermarks;
use crate::pg::errors::Refused;
use crate::pg::{guards, plans, schema};
use event_store_core::dcb::{self, Condition, Item, Locks, Mode};
use pgrx::pg_sys::BuiltinOid as Oid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// Takes `locks` (sorted, so that appends never deadlock on them), each held to the end of
/// the transaction. The table's first: it is taken before the append's RowExclusiveLock.
pub fn lock(locks: &Locks) {
    if locks.table {
        // SAFETY: a lock on the extension's table, held to the end of the transaction.
        unsafe {
            pg_sys::LockRelationOid(
                schema::relation(c"event_store"),
                pg_sys::ShareRowExclusiveLock as i32,
            )
        };
    }
    for &(key, mode) in &locks.keys {
        let mode = match mode {
            Mode::Write => pg_sys::RowExclusiveLock,
            Mode::Check => pg_sys::ShareLock,
            Mode::Both => pg_sys::ShareRowExclusiveLock,
        };
        // An advisory lock tag (as SET_LOCKTAG_ADVISORY makes) of this database, in a class no
        // SQL advisory function uses.
        let tag = pg_sys::LOCKTAG {
            // SAFETY: the backend's database, set once it connected.
            locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
            locktag_field2: (key >> 32) as u32,
            locktag_field3: key as u32,
            locktag_field4: dcb::LOCK_CLASS,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        };
        // SAFETY: a transaction-level lock (released at its end), waiting as long as it takes
        // (lock_timeout and the deadlock detector apply).
        unsafe { pg_sys::LockAcquire(&tag, mode as i32, false, false) };
    }
}

/// Whether an item's events exist after a position, as of the snapshot active. The position
/// is compared as an expression: the kept (generic) plan must read the tag's index, not every
/// event after a position it does not know.
const TAGGED_SQL: &str = "SELECT EXISTS (SELECT FROM _event_store.log e \
     WHERE e.tags OPERATOR(pg_catalog.@>) $1 AND e.tags OPERATOR(pg_catalog.<>) '{}'::pg_catalog.text[] \
       AND (pg_catalog.cardinality($2) OPERATOR(pg_catalog.=) 0 OR e.event_type OPERATOR(pg_catalog.=) ANY ($2)) \
       AND (e.global_position OPERATOR(pg_catalog.+) 0) OPERATOR(pg_catalog.>) $3)";
const TYPED_SQL: &str = "SELECT EXISTS (SELECT FROM _event_store.log e \
     WHERE e.event_type OPERATOR(pg_catalog.=) ANY ($1) AND e.global_position OPERATOR(pg_catalog.>) $2)";
const ANY_SQL: &str = "SELECT EXISTS (SELECT FROM _event_store.log e \
     WHERE e.global_position OPERATOR(pg_catalog.>) $1)";

/// Whether any committed event after `after` matches `item` (all events for `None`; an item
/// names tags or types), as of the active snapshot.
fn exists(client: &SpiClient<'_>, item: Option<&Item>, after: i64) -> bool {
    let types = |i: &Item| i.types.clone();
    let found = plans::for_few_rows(|| match item {
        Some(i) if !i.tags.is_empty() => {
            let plan = plans::kept(
                client,
                TAGGED_SQL,
                &[Oid::TEXTARRAYOID, Oid::TEXTARRAYOID, Oid::INT8OID],
                false,
            );
            client.select(
                &*plan,
                None,
                &[i.tags.clone().into(), types(i).into(), after.into()],
            )
        }
        Some(i) => {
            let plan = plans::kept(client, TYPED_SQL, &[Oid::TEXTARRAYOID, Oid::INT8OID], false);
            client.select(&*plan, None, &[types(i).into(), after.into()])
        }
        None => {
            let plan = plans::kept(client, ANY_SQL, &[Oid::INT8OID], false);
            client.select(&*plan, None, &[after.into()])
        }
    });
    found
        .and_then(|rows| rows.first().get::<bool>(1))
        .unwrap_or_else(|e| error!("event_store: checking the condition: {e}"))
        .unwrap_or(false)
}

/// Refuses the append (ES001) if an event the condition's query matches was committed after
/// its position. Called with the append's locks held, so every append that could store such
/// an event has committed or rolled back: read as of now, its events are seen. A transaction
/// reading as of its snapshot (REPEATABLE READ, SERIALIZABLE) could not see them: refused
/// (0A000), as the feed's reads are.
pub fn check(client: &SpiClient<'_>, condition: &Condition) -> Result<(), Refused> {
    crate::read::feed::require_read_committed(
        "a conditional append needs",
        "Its check must see what appends it waited for committed; run it in a READ COMMITTED transaction.",
    );
    let after = condition.after.unwrap_or(0);
    // An item naming tags is settled without reading when a watermark of one of its tags says
    // so (`watermarks`): the lock taken for it conflicts with every writer of its events.
    let items: Vec<Option<&Item>> = match condition.query.narrowing() {
        None => vec![None],
        Some(items) => items
            .iter()
            .filter(|i| !i.tags.iter().any(|t| watermarks::settled(t, after)))
            .map(Some)
            .collect(),
    };
    if items.is_empty() {
        return Ok(());
    }
    let found = guards::as_of_now(|| {
        let relations = items
            .iter()
            .any(|i| i.is_some_and(|i| !i.tags.is_empty()))
            .then(|| crate::read::tag_scan::open(client))
            .flatten();
        items.iter().any(|i| match (&relations, i) {
            // SAFETY: as of the snapshot active; the item names tags.
            (Some(r), Some(item)) if !item.tags.is_empty() => unsafe {
                !r.matches(
                    pg_sys::GetActiveSnapshot(),
                    item,
                    after,
                    i64::MAX,
                    |_, _| false,
                )
            },
            _ => exists(client, *i, after),
        })
    });
    if found {
        return Err(Refused {
            code: b"ES001",
            message: format!(
                "event_store: the append's condition failed: an event its query matches was stored after position {after}"
            ),
            detail: String::new(),
            hint: "Read the events the query matches again, decide, and append with the new position."
                .into(),
        });
    }
    Ok(())
}

/// The stream es_dcb_append gives the events of a call that name none: `dcb-` and a new
/// time-ordered UUID, so each call's events form a stream of their own (versions and hash
/// chain included) that no other call waits for.
pub fn call_stream() -> String {
    let id = event_store_core::append::ids::next_v7();
    format!(
        "dcb-{}",
        event_store_core::append::ids::UuidText::new(&id).as_str()
    )
}
