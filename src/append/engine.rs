//! The engine every append function runs: checks, locks, retries, sealing, positions, hashes,
//! the rows' insert, the stream heads, then snapshots and the feed's announcement.
use super::insert::Insert;
use super::{
    condition, record, refused, registry, retry, uuid, watermarks, Appended, Entry, Event,
};
use crate::pg::errors::{raise_invalid as raise, Refused};
use crate::pg::jsonb;
use crate::pg::jsonb::functions::out;
use crate::{catalog, fold, projections, read};
use event_store_core::append::ids::UuidText;
use event_store_core::append::{has_duplicate, lock_order};
use event_store_core::dcb::{self, Condition};
use event_store_core::integrity::chain::{event_hash, Content, GENESIS};
use event_store_core::stream::{category, SYSTEM_CATEGORY};
use event_store_core::time::PG_EPOCH_US;
use event_store_core::validate::Invalid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// Appends every entry, all or nothing, under `condition` when es_dcb_append gives one.
/// Positions follow the events' `rank` (entry order where ranks are equal); rows come back
/// in input order.
pub(crate) fn append(
    mut entries: Vec<Entry>,
    condition: Option<&Condition>,
) -> Result<(Vec<String>, Vec<Appended>), Refused> {
    // Taken by the first append after it was allowed: one a user's code (a reducer taking a
    // snapshot) might make inside that append is refused.
    let system = record::take_system();
    if let Some(e) = entries
        .iter()
        .find(|e| !system && category(&e.stream_id) == SYSTEM_CATEGORY)
    {
        return Err(refused(
            b"42501",
            format!(
                "event_store: stream {} is in the category {SYSTEM_CATEGORY}, which holds the store's own records",
                e.stream_id
            ),
            String::new(),
            "Name the stream in another category.",
        ));
    }
    let streams: Vec<&str> = entries.iter().map(|e| e.stream_id.as_str()).collect();
    let order = lock_order(&streams).unwrap_or_else(|s| {
        raise(Invalid::Value(format!(
            "stream {s} is named twice: give all its events in one entry"
        )))
    });
    if has_duplicate(
        entries
            .iter()
            .flat_map(|e| e.events.iter().filter_map(|ev| ev.id)),
    ) {
        return Err(refused(
            b"ES002",
            "event_store: the batch uses an event id twice".into(),
            String::new(),
            "",
        ));
    }
    // What tags and the condition lock (`condition`), before the table: a condition without
    // tags takes the table in a mode that conflicts with every append's.
    let locks = dcb::locks(
        condition.map(|c| &c.query),
        entries
            .iter()
            .flat_map(|e| e.events.iter().map(|ev| ev.tags.as_slice())),
    );
    condition::lock(&locks);
    // Locked as the insert below would, but first: a catalog change committed before the
    // lock is seen (taking it processes invalidations), and one after waits for this append.
    // SAFETY: a lock on event_store, held to the end of the transaction as the insert's is.
    unsafe {
        pg_sys::LockRelationOid(
            crate::pg::schema::relation(c"event_store"),
            pg_sys::RowExclusiveLock as i32,
        )
    };
    let catalog = catalog::current();
    // The events with personal data to seal: (entry, event, what the catalog says, label).
    let mut seals = vec![];
    for (i, e) in entries.iter().enumerate() {
        let stream_category = category(&e.stream_id);
        if stream_category == SYSTEM_CATEGORY {
            continue; // the store's own records are not the application's catalog
        }
        for (n, ev) in e.events.iter().enumerate() {
            let at = || match (entries.len(), e.events.len()) {
                (1, 1) => String::new(),
                (1, _) => format!("event {}: ", n + 1),
                _ => format!("stream {}, event {}: ", e.stream_id, n + 1),
            };
            catalog.check(stream_category, &ev.event_type, ev.version, ev.data, &at)?;
            if let Some(p) = catalog.personal(stream_category, &ev.event_type, ev.version) {
                seals.push((i, n, p, at()));
            }
        }
    }
    drop(catalog);
    let (written, rows) = Spi::connect_mut(|client| -> Result<_, Refused> {
        // SAFETY: inside the append's transaction.
        let registry = unsafe { registry::Registry::open() };
        // Locked in lock order, kept in entry order.
        let mut locked: Vec<(usize, registry::Head)> = order
            .iter()
            .map(|&i| match entries[i].made {
                true => (i, registry::Head::made()),
                false => (i, registry.lock(client, &entries[i].stream_id)),
            })
            .collect();
        locked.sort_by_key(|(i, _)| *i);
        let heads: Vec<registry::Head> = locked.into_iter().map(|(_, h)| h).collect();
        let personal = |i: usize, ev: &Event| {
            seals
                .iter()
                .find(|(si, n, _, _)| *si == i && std::ptr::eq(&entries[i].events[*n], ev))
                .map(|s| s.2.clone())
        };
        let (replay, mut rows) = retry::retries(client, &entries, personal)?;
        for (i, e) in entries.iter().enumerate() {
            match e.expected {
                Some(v) if !replay[i] && v != heads[i].version => {
                    return Err(refused(
                        b"ES001",
                        format!(
                            "event_store: wrong expected version for stream {}: expected {v}, actual {}",
                            e.stream_id, heads[i].version
                        ),
                        String::new(),
                        "Read the stream again, decide, and retry with its current version.",
                    ))
                }
                _ => {}
            }
        }
        if let Some(c) = condition {
            condition::check(client, c)?;
        }
        for (i, n, personal, at) in &seals {
            if !replay[*i] {
                seal(client, personal, &mut entries[*i], *n, at)?;
            }
        }
        let n: usize = (0..entries.len())
            .filter(|i| !replay[*i])
            .map(|i| entries[i].events.len())
            .sum();
        let mut written = vec![];
        if n > 0 {
            // Visible to feed readers before any position is taken: they stop below ours.
            read::feed::register();
            let first = read::feed::allocate(n as i64);
            watermarks::raise(&locks, first + n as i64 - 1);
            // Each event's position: in rank order, entry order among equal ranks.
            let mut slots: Vec<(usize, usize)> = (0..entries.len())
                .filter(|i| !replay[*i])
                .flat_map(|i| (0..entries[i].events.len()).map(move |n| (i, n)))
                .collect();
            slots.sort_by_key(|&(i, n)| entries[i].events[n].rank);
            let mut positions: Vec<Vec<i64>> =
                entries.iter().map(|e| vec![0; e.events.len()]).collect();
            for (k, &(i, n)) in slots.iter().enumerate() {
                positions[i][n] = first + k as i64;
            }
            // SAFETY: reads the clock.
            let now = unsafe { pg_sys::GetCurrentTimestamp() };
            let mut new = Insert::with_capacity(n);
            for (i, e) in entries.iter().enumerate().filter(|(i, _)| !replay[*i]) {
                let head = &heads[i];
                // Times never go backwards within a stream: "state at an instant" follows versions.
                let at = head.last_at.map_or(now, |last| last.max(now));
                let mut prev = head.hash.clone().unwrap_or_else(|| GENESIS.to_vec());
                let mut version = head.version;
                for (ev, &position) in e.events.iter().zip(&positions[i]) {
                    version += 1;
                    let id = ev.id.unwrap_or_else(|| {
                        let id = event_store_core::append::ids::next_v7();
                        new.claims.push(uuid(id));
                        id
                    });
                    let id_text = UuidText::new(&id);
                    let hash = event_hash(
                        &prev,
                        &Content {
                            event_id: id_text.as_str(),
                            stream_id: &e.stream_id,
                            stream_version: version,
                            global_position: position,
                            event_type: &ev.event_type,
                            event_version: ev.version,
                            created_at_unix_us: at + PG_EPOCH_US,
                            event_data: &ev.data_text,
                            metadata: &ev.meta_text,
                            tags: &ev.tags,
                        },
                    );
                    prev.clear();
                    prev.extend_from_slice(&hash);
                    new.push(&e.stream_id, ev, id, version, position, at, hash);
                    rows.push(Appended {
                        entry: i,
                        id,
                        version,
                        position,
                        at,
                    });
                }
                let last = positions[i].iter().max().copied().unwrap_or(first);
                written.push((i, head.version, version, at, last, prev));
            }
            new.execute(client);
            for (i, _, version, at, last, hash) in &written {
                match entries[*i].made {
                    true => registry.register(
                        client,
                        &entries[*i].stream_id,
                        *version,
                        *at,
                        *last,
                        hash,
                    ),
                    false => registry.advance(&heads[*i], *version, *at, *last, hash),
                }
            }
        }
        rows.sort_by_key(|r| r.entry);
        // (entry, version before, version after, last position)
        let done: Vec<(usize, i64, i64, i64)> =
            written.iter().map(|w| (w.0, w.1, w.2, w.4)).collect();
        Ok((done, rows))
    })?;
    for &(i, from, to, _) in &written {
        fold::time_travel::snapshot_after_append(&entries[i].stream_id, from, to);
    }
    if let Some(last) = written.iter().map(|w| w.3).max() {
        projections::pool::appended(last);
    }
    Ok((entries.into_iter().map(|e| e.stream_id).collect(), rows))
}

/// Seals event `n` of `entry` (crate::privacy::sealing): its data is rewritten, and the text it is
/// hashed by with it.
fn seal(
    client: &mut SpiClient<'_>,
    personal: &event_store_core::catalog::Personal,
    entry: &mut Entry,
    n: usize,
    at: &str,
) -> Result<(), Refused> {
    let ev = &mut entry.events[n];
    // SAFETY: both are non-null jsonb datums, checked when the event was read. The metadata
    // is decoded only where it names the subject.
    let (mut data, metadata) = unsafe {
        let metadata = match personal.subject {
            event_store_core::catalog::Subject::Metadata(_) => jsonb::to_value(ev.metadata),
            _ => serde_json::Value::Null,
        };
        (jsonb::to_value(ev.data), metadata)
    };
    crate::privacy::sealing::seal(client, personal, &entry.stream_id, &mut data, &metadata, at)?;
    ev.data = jsonb::datum(&data);
    ev.data_text = out(ev.data);
    Ok(())
}
