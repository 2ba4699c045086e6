//! The event catalog in the database (sql/catalog/catalog.sql): definitions, upcasts and category
//! modes, read once per backend with every schema compiled once, and read again after a
//! change (the catalog tables' trigger sends a relcache invalidation that every backend
//! receives). Appends check events against it; `es_upcast` and the folds upcast with it.
use crate::pg::errors::raise_invalid as raise;
use crate::pg::errors::Refused;
use crate::pg::jsonb::{self, Json};
use crate::pg::relcache;
use crate::pg::schema::{self, column, OrRaise};
use event_store_core::catalog::{
    check_definition, check_upcast, parse_subject, Mode, Personal, Schema,
};
use event_store_core::fold::upcasts::Upcasts;
use event_store_core::validate::Invalid;
use pgrx::fcinfo::pg_getarg_datum_raw;
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::prelude::*;
use pgrx::{FromDatum, IntoDatum};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub struct Catalog {
    /// Per event type, its defined versions and the schema of each (if it has one).
    types: HashMap<String, HashMap<i32, Option<Rc<Schema>>>>,
    /// Per category; `*` for every category without its own.
    modes: HashMap<String, Mode>,
    /// Per event type and version that declares personal data: which, and whose.
    personal: HashMap<String, HashMap<i32, Rc<Personal>>>,
    pub upcasts: Rc<Upcasts>,
}

thread_local! {
    /// The catalog and the generation it was read at.
    static CACHE: RefCell<Option<(u64, Rc<Catalog>)>> = const { RefCell::new(None) };
}

const TYPES_SQL: &str =
    "SELECT event_type, version, schema, personal_data, subject FROM _event_store.es_catalog_types";
const MODES_SQL: &str = "SELECT category, mode FROM _event_store.es_catalog_modes";
const UPCASTS_SQL: &str = "SELECT event_type, from_version, rule FROM _event_store.es_upcasts";

impl Catalog {
    /// What the catalog says of the personal data of events of this type and version in
    /// this category: nothing where the category's mode is off (the catalog does not apply).
    pub fn personal(&self, category: &str, event_type: &str, version: i32) -> Option<Rc<Personal>> {
        if self.mode(category) == Mode::Off {
            return None;
        }
        self.personal.get(event_type)?.get(&version).cloned()
    }

    fn empty() -> Catalog {
        Catalog {
            types: HashMap::new(),
            modes: HashMap::new(),
            personal: HashMap::new(),
            upcasts: Rc::default(),
        }
    }
}

/// One row of a catalog read, its columns checked against the types the code reads.
struct Row {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
}

impl Row {
    fn nullable<T: FromDatum + IntoDatum>(&self, ordinal: i32, name: &str) -> Option<T> {
        // SAFETY: a row of the SPI result being read, and a column of it; the datum is read
        // as T only once its type is T's.
        unsafe {
            if pg_sys::SPI_gettypeid(self.desc, ordinal) != T::type_oid() {
                corrupt(format!("{name} has another type"));
            }
            let mut null = false;
            let d = pg_sys::SPI_getbinval(self.tuple, self.desc, ordinal, &mut null);
            T::from_datum(d, null)
        }
    }

    fn column<T: FromDatum + IntoDatum>(&self, ordinal: i32, name: &str) -> T {
        self.nullable(ordinal, name)
            .unwrap_or_else(|| corrupt(format!("{name} is NULL")))
    }
}

fn corrupt(e: String) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
        format!("event_store: {e}"),
        "the catalog tables were changed by hand; redefine the entry with es_define_event_type or es_define_upcast"
    );
}

/// Calls `each` with every row of the catalog read `sql`, read under the active snapshot
/// (read-only SPI uses it, whatever this transaction wrote before).
fn each_row(sql: &str, mut each: impl FnMut(&Row)) {
    let sql = std::ffi::CString::new(sql).expect("no NUL in the catalog's SQL");
    Spi::connect(|_| {
        // SAFETY: SPI is connected; the result is read row by row before the connection ends.
        unsafe {
            if pg_sys::SPI_execute(sql.as_ptr(), true, 0) != pg_sys::SPI_OK_SELECT as i32 {
                error!(
                    "event_store: reading the catalog failed: {}",
                    sql.to_string_lossy()
                );
            }
            let table = &*pg_sys::SPI_tuptable;
            for i in 0..pg_sys::SPI_processed as usize {
                each(&Row {
                    tuple: *table.vals.add(i),
                    desc: table.tupdesc,
                });
            }
        }
    })
}

/// Reads the catalog as committed now, not as of the statement's snapshot: an append that
/// waited for a catalog change (es_define_event_type holds event_store in SHARE mode until it
/// commits) is checked and sealed against that change once its lock is granted, at READ
/// COMMITTED as at REPEATABLE READ (its transaction snapshot may predate the change). Never
/// older than the transaction's own view either: the snapshot sees its own changes.
/// A parallel query (es_upcast in its leader) may take no new snapshot: it reads as of its own.
fn load() -> Catalog {
    crate::pg::guards::as_of_now(read)
}

fn read() -> Catalog {
    let mut types: HashMap<String, HashMap<i32, Option<Rc<Schema>>>> = HashMap::new();
    let mut personal: HashMap<String, HashMap<i32, Rc<Personal>>> = HashMap::new();
    each_row(schema::qualified(TYPES_SQL), |row| {
        let event_type: String = row.column(1, "es_catalog_types.event_type");
        let version: i32 = row.column(2, "es_catalog_types.version");
        let compiled = row
            .nullable::<Json>(3, "es_catalog_types.schema")
            .map(|Json(s)| Schema::compile(&s).map(Rc::new))
            .transpose()
            .unwrap_or_else(|e| corrupt(format!("{event_type} version {version}: {e}")));
        let paths: Vec<String> = row.column(4, "es_catalog_types.personal_data");
        let subject: Option<String> = row.nullable(5, "es_catalog_types.subject");
        match Personal::parse(&paths, subject.as_deref()) {
            Ok(Some(p)) => {
                personal
                    .entry(event_type.clone())
                    .or_default()
                    .insert(version, Rc::new(p));
            }
            Ok(None) => {}
            Err(e) => corrupt(format!("{event_type} version {version}: {e}")),
        }
        types
            .entry(event_type)
            .or_default()
            .insert(version, compiled);
    });
    let mut modes = HashMap::new();
    each_row(schema::qualified(MODES_SQL), |row| {
        let mode: String = row.column(2, "es_catalog_modes.mode");
        modes.insert(
            row.column::<String>(1, "es_catalog_modes.category"),
            Mode::parse(Some(&mode)).unwrap_or_else(|_| corrupt(format!("mode {mode}"))),
        );
    });
    let mut upcasts = vec![];
    each_row(schema::qualified(UPCASTS_SQL), |row| {
        upcasts.push((
            row.column::<String>(1, "es_upcasts.event_type"),
            row.column::<i32>(2, "es_upcasts.from_version"),
            row.column::<Json>(3, "es_upcasts.rule").0,
        ));
    });
    let upcasts = Upcasts::new(upcasts).unwrap_or_else(|e| corrupt(e));
    Catalog {
        types,
        modes,
        personal,
        upcasts: Rc::new(upcasts),
    }
}

/// The catalog as of the last change this backend has received.
pub fn current() -> Rc<Catalog> {
    let generation = relcache::generation();
    if let Some((g, c)) = CACHE.with_borrow(|c| c.clone()) {
        if g == generation {
            return c;
        }
    }
    if schema::legacy_sql() {
        // Not cached: the update that creates the tables must be seen at the next call.
        return Rc::new(Catalog::empty());
    }
    // Looked up again on every load: the extension may have been dropped and created since.
    for table in [c"es_catalog_types", c"es_catalog_modes", c"es_upcasts"] {
        relcache::watch(schema::relation(table));
    }
    // An invalidation received while loading bumps the generation: the next call reloads.
    let catalog = Rc::new(load());
    CACHE.set(Some((generation, catalog.clone())));
    catalog
}

impl Catalog {
    fn mode(&self, category: &str) -> Mode {
        self.modes
            .get(category)
            .or_else(|| self.modes.get("*"))
            .copied()
            .unwrap_or(Mode::Open)
    }

    /// Checks one event of an append against the catalog; `at` names it in messages.
    pub fn check(
        &self,
        category: &str,
        event_type: &str,
        version: i32,
        data: pg_sys::Datum,
        at: &dyn Fn() -> String,
    ) -> Result<(), Refused> {
        let mode = self.mode(category);
        if mode == Mode::Off {
            return Ok(());
        }
        match self.types.get(event_type).and_then(|t| t.get(&version)) {
            Some(Some(schema)) => {
                // SAFETY: an append's event data, a non-null jsonb datum.
                let value = unsafe { jsonb::to_value(data) };
                schema.check(&value).map_err(|v| Refused {
                    code: b"ES004",
                    message: format!(
                        "event_store: {}event_data of {event_type} (version {version}) breaks its schema at \"{}\": {}",
                        at(), v.path, v.message
                    ),
                    detail: format!("rule \"{}\" at path \"{}\"", v.rule, v.path),
                    hint: "the schema is in es_event_types".into(),
                })
            }
            Some(None) => Ok(()),
            None if mode == Mode::Strict => Err(Refused {
                code: b"ES005",
                message: format!(
                    "event_store: {}event type {event_type} (version {version}) is not in the catalog, and category \"{category}\" is strict",
                    at()
                ),
                detail: String::new(),
                hint: "define it with es_define_event_type, or set the category's mode with es_set_catalog_mode".into(),
            }),
            None => Ok(()),
        }
    }
}

/// Checks a definition before es_define_event_type stores it; with a schema, every stored
/// event of that type and version must pass it (the first that fails is reported, ES006).
#[pg_extern(stable, schema = "_event_store")]
fn _es_check_event_type(
    event_type: Option<&str>,
    version: Option<i32>,
    schema: Option<pgrx::JsonB>,
    personal_data: Option<Vec<Option<String>>>,
    subject: Option<&str>,
) {
    let paths = personal_data.unwrap_or_default();
    let paths: Vec<Option<&str>> = paths.iter().map(|p| p.as_deref()).collect();
    let compiled = check_definition(
        event_type,
        version,
        schema.as_ref().map(|s| &s.0),
        &paths,
        subject,
    )
    .unwrap_or_else(|e| raise(e));
    if let (Some(schema), Some(t), Some(v)) = (compiled, event_type, version) {
        if let Some(refusal) = first_stored_failure(&schema, t, v) {
            refusal.raise();
        }
    }
}

const STORED_SQL: &str = "SELECT stream_id, stream_version, global_position, event_data \
       FROM _event_store.log WHERE event_type = $1 AND event_version = $2 \
      ORDER BY global_position";

fn first_stored_failure(schema: &Schema, event_type: &str, version: i32) -> Option<Refused> {
    Spi::connect(|client| {
        let mut cursor = client.open_cursor(
            schema::qualified(STORED_SQL),
            &[event_type.into(), version.into()],
        );
        loop {
            let rows = cursor.fetch(1000).or_raise("reading stored events");
            if rows.is_empty() {
                return None;
            }
            for row in rows {
                let Json(mut data) = column(&row, 4, "event_store.event_data");
                // Checked as written: personal data opened (this runs as the owner); an
                // event whose subject was forgotten can no longer be checked, nor broken.
                if !crate::privacy::sealing::open_all(&mut data) {
                    continue;
                }
                if let Err(v) = schema.check(&data) {
                    let stream: String = column(&row, 1, "event_store.stream_id");
                    let at: i64 = column(&row, 2, "event_store.stream_version");
                    let position: i64 = column(&row, 3, "event_store.global_position");
                    return Some(Refused {
                        code: b"ES006",
                        message: format!(
                            "event_store: the new schema of {event_type} (version {version}) rejects a stored event: stream {stream}, version {at} (position {position}) breaks it at \"{}\": {}",
                            v.path, v.message
                        ),
                        detail: format!("rule \"{}\" at path \"{}\"", v.rule, v.path),
                        hint: "stored events never change: accept them in the schema, or define a new version with an upcast".into(),
                    });
                }
            }
        }
    })
}

#[pg_extern(immutable, parallel_safe, schema = "_event_store")]
fn _es_check_upcast(
    event_type: Option<&str>,
    from_version: Option<i32>,
    rule: Option<pgrx::JsonB>,
) {
    check_upcast(event_type, from_version, rule.as_ref().map(|r| &r.0)).unwrap_or_else(|e| raise(e))
}

/// The subject of an event whose type's catalog entry names `subject` (`Subject::of`, as
/// sealing reads it); NULL when it has none. For es_subject_export. Raises 22023 for a subject
/// that does not parse; NULL arguments give NULL.
#[pg_extern(immutable, strict, parallel_safe, schema = "_event_store")]
fn _es_subject_of(
    subject: &str,
    stream_id: &str,
    event_data: pgrx::JsonB,
    metadata: pgrx::JsonB,
) -> Option<String> {
    let s = parse_subject(subject).unwrap_or_else(|e| raise(Invalid::Value(e)));
    s.of(stream_id, &event_data.0, &metadata.0)
}

#[pg_extern(immutable, parallel_safe, schema = "_event_store")]
fn _es_check_catalog_mode(category: Option<&str>, mode: Option<&str>) {
    if category != Some("*") {
        event_store_core::validate::check_name("category", category, None)
            .unwrap_or_else(|e| raise(e));
    }
    Mode::parse(mode).unwrap_or_else(|e| raise(e));
}

v1_function!(pg_finfo__es_catalog_changed);
/// The catalog tables' statement trigger: every backend (this one included, at its next
/// command) drops its copy of the catalog.
///
/// # Safety
/// Called by PostgreSQL's trigger manager with its TriggerData as context.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn _es_catalog_changed(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: called by the trigger manager, whose context is a TriggerData (checked); its
    // relation is open for the statement.
    unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
            error!("event_store: _es_catalog_changed is a trigger function");
        }
        let trigger = &*context.cast::<pg_sys::TriggerData>();
        pg_sys::CacheInvalidateRelcacheByRelid((*trigger.tg_relation).rd_id);
    }
    pg_sys::Datum::from(0)
}

/// An event_store row upcast to its type's latest version: `event_data` rewritten and
/// `event_version` raised; the row itself when no upcast applies.
///
/// # Safety
/// `row` is a non-null datum of event_store's row type.
pub unsafe fn upcast_row(row: pg_sys::Datum) -> pg_sys::Datum {
    let catalog = current();
    if catalog.upcasts.is_empty() {
        return row;
    }
    // SAFETY: the caller passes a composite datum.
    let tuple = unsafe { PgHeapTuple::from_composite_datum(row) };
    let (Ok(Some(event_type)), Ok(Some(version))) = (
        tuple.get_by_name::<String>("event_type"),
        tuple.get_by_name::<i32>("event_version"),
    ) else {
        return row;
    };
    if !catalog.upcasts.applies(&event_type, version) {
        return row;
    }
    let Ok(Some(pgrx::JsonB(data))) = tuple.get_by_name::<pgrx::JsonB>("event_data") else {
        return row;
    };
    let Some((data, latest)) = catalog.upcasts.upcast(&event_type, version, &data) else {
        return row;
    };
    let mut tuple = tuple;
    let set = tuple
        .set_by_name("event_data", pgrx::JsonB(data))
        .and_then(|_| tuple.set_by_name("event_version", latest));
    if let Err(e) = set {
        error!("event_store: es_upcast: {e}");
    }
    tuple.into_composite_datum().expect("a tuple has a datum")
}

v1_function!(pg_finfo_es_upcast);
/// `es_upcast(event_store) RETURNS event_store` (STRICT).
///
/// # Safety
/// Called only by the fmgr, with one non-null event_store row.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn es_upcast(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the function is STRICT over event_store rows.
    unsafe { upcast_row(pg_getarg_datum_raw(fcinfo, 0)) }
}

/// The upcasts the folds apply.
pub fn upcasts() -> Rc<Upcasts> {
    current().upcasts.clone()
}
