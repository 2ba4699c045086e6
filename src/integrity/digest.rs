//! Digests an auditor keeps outside the database (event_store_core::integrity::digest): `es_digest`
//! takes one at the feed's horizon, `es_verify_digest` proves the store still extends it.
use crate::integrity::verify::{chain_sql, walk_chains};
use crate::pg::jsonb;
use crate::pg::schema::{self, column, OrRaise};
use event_store_core::integrity::chain::{StreamCheck, GENESIS};
use event_store_core::integrity::digest::{compare, hex, root, Digest, Leaf};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// Every stream's head at position $1: the registry's where its last event is at or below it,
/// else the last such event (only streams appended to since the horizon was read). `changed`:
/// whether the head lies after the previous digest's position $2.
const HEADS_AT_SQL: &str = "SELECT s.stream_id, h.version, h.hash, h.position > $2 \
       FROM _event_store.es_streams s, \
    LATERAL (SELECT s.version, s.head_hash, s.last_position WHERE s.last_position <= $1 \
             UNION ALL \
             (SELECT e.stream_version, e.hash, e.global_position FROM _event_store.log e \
               WHERE s.last_position > $1 AND e.stream_id = s.stream_id AND e.global_position <= $1 \
               ORDER BY e.stream_version DESC LIMIT 1)) h(version, hash, position)";

const PREVIOUS_SQL: &str =
    "SELECT coalesce(max(position), 0) FROM _event_store.es_digests WHERE position < $1";

const RECORD_SQL: &str = "WITH d AS ( \
        INSERT INTO _event_store.es_digests (position, events, streams, root, taken_by) \
        VALUES ($1, $2, $3, $4, $5) ON CONFLICT (position) DO NOTHING RETURNING position) \
    INSERT INTO _event_store.es_digest_heads (position, stream_id, version, hash) \
    SELECT d.position, h.* FROM d, unnest($6::text[], $7::bigint[], $8::bytea[]) h";

/// The heads recorded up to a digest's position: each stream's latest record at or below it.
const RECORDED_SQL: &str = "SELECT DISTINCT ON (stream_id) stream_id, version, hash \
       FROM _event_store.es_digest_heads WHERE position <= $1 \
      ORDER BY stream_id, position DESC";

const CHAIN_AT_SQL: [&str; 2] = chain_sql!("global_position <= $1");

fn leaf(row: &pgrx::spi::SpiHeapTupleData<'_>, table: &str) -> Leaf {
    Leaf {
        stream_id: column(row, 1, &format!("{table}.stream_id")),
        version: column(row, 2, &format!("{table}.version")),
        hash: column(row, 3, &format!("{table}.hash")),
    }
}

/// Refuses callers who do not read every event as a query would: a digest of what row level
/// security lets them see would not be the store's.
fn check_reader(function: &str) {
    if !crate::read::stream_scan::reads_like_a_query(schema::relation(c"event_store")) {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("event_store: {function} needs a role that reads every event"),
            "Row level security or missing SELECT on event_store hides events from this role."
        );
    }
}

/// Takes a digest at the feed's horizon: every position at or below it has settled, so what
/// the digest covers can no longer change by appends. Records it (and the heads changed
/// since the previous one, so a failed verification can name streams) as the owner of
/// es_digests, and returns the document to keep outside the database.
#[pg_extern(sql = false)] // declared in sql/integrity/digest.sql, with its settings
fn es_digest() -> pgrx::JsonB {
    check_reader("es_digest");
    // SAFETY: reads of this backend's transaction and recovery state.
    let (read_committed, standby) = unsafe {
        (
            pg_sys::XactIsoLevel == pg_sys::XACT_READ_COMMITTED as i32,
            pg_sys::RecoveryInProgress(),
        )
    };
    if standby {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "event_store: es_digest records the digest: take it on the primary",
            "es_verify_digest works on a standby."
        );
    }
    if !read_committed {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "event_store: es_digest needs READ COMMITTED",
            "An older snapshot could miss commits at or below the horizon."
        );
    }
    // Read before the queries below take their snapshots: every commit at or below it is
    // visible to them.
    let position = crate::read::feed::_es_feed_horizon();
    let (mut leaves, changed) = Spi::connect(|client| {
        let previous: i64 = client
            .select(schema::qualified(PREVIOUS_SQL), Some(1), &[position.into()])
            .and_then(|r| r.first().get_one())
            .or_raise("reading es_digests")
            .unwrap_or(0);
        let mut leaves = vec![];
        let mut changed = vec![];
        for row in client
            .select(
                schema::qualified(HEADS_AT_SQL),
                None,
                &[position.into(), previous.into()],
            )
            .or_raise("reading the stream heads")
        {
            let l = leaf(&row, "es_streams");
            if column::<bool>(&row, 4, "a head's position") {
                changed.push(l.clone());
            }
            leaves.push(l);
        }
        (leaves, changed)
    });
    let digest = Digest {
        position,
        events: leaves.iter().map(|l| l.version).sum(),
        streams: leaves.len() as i64,
        root: root(&mut leaves),
    };
    let by = crate::pg::caller::_es_calling_role();
    let (ids, versions, hashes): (Vec<String>, Vec<i64>, Vec<Vec<u8>>) = changed
        .into_iter()
        .map(|l| (l.stream_id, l.version, l.hash))
        .collect();
    schema::as_owner_of(schema::relation(c"es_digests"), || {
        Spi::run_with_args(
            schema::qualified(RECORD_SQL),
            &[
                digest.position.into(),
                digest.events.into(),
                digest.streams.into(),
                digest.root.to_vec().into(),
                by.as_str().into(),
                ids.into(),
                versions.into(),
                hashes.into(),
            ],
        )
        .or_raise("recording the digest")
    });
    let mut doc = digest.to_json();
    if let Some(pgrx::JsonB(taken)) =
        schema::select_one::<pgrx::JsonB>("SELECT pg_catalog.to_jsonb(pg_catalog.now())")
    {
        doc["taken_at"] = taken;
    }
    doc["taken_by"] = by.into();
    pgrx::JsonB(doc)
}

type Problem = (Option<String>, Option<i64>, String, String);

/// Recomputes the heads at the digest's position from the events (checking every chain up to
/// it), and compares their root and count with the digest's.
fn verify(client: &SpiClient<'_>, digest: &Digest, out: &mut Vec<Problem>) {
    let horizon = crate::read::feed::_es_feed_horizon();
    if digest.position > horizon {
        out.push((
            None,
            None,
            "digest".into(),
            format!(
                "the digest covers positions up to {}, this store only up to {horizon}: it is another store, or this one was restored to an earlier point",
                digest.position
            ),
        ));
        return;
    }
    // Streams cut by retention: checked from their anchor where it lies at or below the
    // digest's position; where it lies above, every event of the stream the digest covers was
    // removed, and its head is the store's record of the digest (whose root is checked).
    let anchors = crate::integrity::verify::anchors(client, None);
    let (below, above): (Vec<_>, Vec<_>) = anchors
        .iter()
        .partition(|(_, (_, prev_position))| *prev_position <= digest.position);
    let start = |id: &str| {
        StreamCheck::from(
            anchors
                .get(id)
                .filter(|a| a.1 <= digest.position)
                .map(|a| &a.0),
        )
    };
    let mut leaves = vec![];
    let mut walked = std::collections::HashSet::new();
    let mut events = walk_chains(
        client,
        CHAIN_AT_SQL[schema::tagged() as usize],
        &[digest.position.into()],
        start,
        |stream_id, check| {
            walked.insert(stream_id.clone());
            let (version, hash) = check.head();
            leaves.push(Leaf {
                stream_id: stream_id.clone(),
                version,
                hash: if version > 0 { hash } else { &GENESIS }.to_vec(),
            });
            for p in check.problems {
                out.push((
                    Some(stream_id.clone()),
                    p.version,
                    p.problem.into(),
                    p.detail,
                ));
            }
        },
    );
    for (stream_id, (anchor, _)) in below {
        // The removed events count as the digest counted them.
        let removed = anchor.first_version - 1;
        events += removed;
        if !walked.contains(stream_id) {
            leaves.push(Leaf {
                stream_id: stream_id.clone(),
                version: removed,
                hash: anchor.prev_hash.clone(),
            });
        }
    }
    let mut recorded: Option<Vec<Leaf>> = None;
    let mut recorded = || -> Vec<Leaf> {
        recorded
            .get_or_insert_with(|| {
                client
                    .select(
                        schema::qualified(RECORDED_SQL),
                        None,
                        &[digest.position.into()],
                    )
                    .or_raise("reading es_digest_heads")
                    .map(|r| leaf(&r, "es_digest_heads"))
                    .collect()
            })
            .clone()
    };
    if !above.is_empty() {
        let heads: std::collections::HashMap<String, Leaf> = recorded()
            .into_iter()
            .map(|l| (l.stream_id.clone(), l))
            .collect();
        for (stream_id, _) in above {
            if let Some(l) = heads.get(stream_id) {
                events += l.version;
                leaves.push(l.clone());
            }
        }
    }
    let now = root(&mut leaves);
    if now != digest.root {
        let mut recorded = recorded();
        if !recorded.is_empty() && root(&mut recorded) == digest.root {
            for (stream_id, p) in compare(&recorded, &leaves) {
                out.push((Some(stream_id), p.version, p.problem.into(), p.detail));
            }
        } else {
            out.push((
                None,
                None,
                "digest".into(),
                format!(
                    "the stream heads at position {} hash to {}, not to the digest's root {}; the store's own record of the digest is missing or was changed too, so the streams cannot be named",
                    digest.position,
                    hex(&now),
                    hex(&digest.root)
                ),
            ));
        }
    }
    if events != digest.events {
        out.push((
            None,
            None,
            "events".into(),
            format!(
                "the digest counted {} events at or below position {}, the store has {events}",
                digest.events, digest.position
            ),
        ));
    }
}

/// How deep a document es_verify_digest reads may nest: a digest is one flat object.
const DIGEST_DEPTH: usize = 16;

/// es_verify_digest's argument, a jsonb read without pgrx's text-and-serde conversion (which
/// fails with XX000 past 128 levels): a document nested deeper than a digest could is
/// `Err(depth)`, refused with 22023 like any other document that is not a digest.
pub struct DigestDoc(Result<serde_json::Value, usize>);

impl pgrx::FromDatum for DigestDoc {
    /// # Safety
    /// As `FromDatum` requires: unless `is_null`, `datum` is a jsonb datum.
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            return None;
        }
        // SAFETY: a non-null jsonb datum; the walk stops past the limit.
        let depth = unsafe { jsonb::with_jsonb(datum, |j| jsonb::depth(j, DIGEST_DEPTH)) };
        Some(DigestDoc(if depth > DIGEST_DEPTH {
            Err(depth)
        } else {
            // SAFETY: as above; at most DIGEST_DEPTH levels to convert.
            Ok(unsafe { jsonb::to_value(datum) })
        }))
    }
}

// SAFETY: unboxed from a jsonb argument with FromDatum, as pgrx does for JsonB.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for DigestDoc {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        // SAFETY: the argument is a jsonb (the SQL declaration says so) and not NULL here.
        unsafe { arg.unbox_arg_using_from_datum() }.expect("a non-null jsonb argument")
    }
}

// SAFETY: declared in SQL as jsonb, which is what the datum is.
unsafe impl pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable for DigestDoc {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(DigestDoc);
    const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
        pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin::External;
    const ARGUMENT_SQL: Result<
        pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef,
        pgrx::pgrx_sql_entity_graph::metadata::ArgumentError,
    > = Ok(pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<
        pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef,
        pgrx::pgrx_sql_entity_graph::metadata::ReturnsError,
    > = Err(pgrx::pgrx_sql_entity_graph::metadata::ReturnsError::Datum);
}

/// One row per way the store fails to extend `digest` (a document es_digest returned); none
/// when everything at or below its position is as it was. Read-only: works on a standby.
/// NULL `digest` is an error (22004): no rows would read as a pass.
#[pg_extern(sql = false)] // declared in sql/integrity/digest.sql, with its settings
fn es_verify_digest(
    digest: Option<DigestDoc>,
) -> TableIterator<
    'static,
    (
        name!(stream_id, Option<String>),
        name!(stream_version, Option<i64>),
        name!(problem, String),
        name!(detail, String),
    ),
> {
    let Some(DigestDoc(doc)) = digest else {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "event_store: es_verify_digest needs a digest, not NULL"
        );
    };
    let parsed = doc
        .map_err(|depth| format!("it nests more than {DIGEST_DEPTH} levels deep ({depth} or more)"))
        .and_then(|doc| Digest::parse(&doc));
    let digest = match parsed {
        Ok(d) => d,
        Err(e) => {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("event_store: not a digest: {e}"),
                "Pass the document es_digest() returned, unchanged."
            );
        }
    };
    check_reader("es_verify_digest");
    let mut out = vec![];
    Spi::connect(|client| verify(client, &digest, &mut out));
    TableIterator::new(out)
}
