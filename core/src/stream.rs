//! Streams are named `category-id`: reducers, category reads and consumer groups go by the
//! category. The SQL side has the same rule once, `_es_category(text)` in sql/schema.sql;
//! tests/fold/reducers.rs checks that the two agree.

/// The category of the store's own streams (`event_store-privacy`: exports and erasures):
/// only the store appends to them, so their events can be trusted as its record.
pub const SYSTEM_CATEGORY: &str = "event_store";

/// The store's own stream for records of `kind`.
pub fn system_stream(kind: &str) -> String {
    format!("{SYSTEM_CATEGORY}-{kind}")
}

/// The stream's category: its id up to the first `-` (all of it when there is none).
pub fn category(stream_id: &str) -> &str {
    stream_id.split('-').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{category, system_stream, SYSTEM_CATEGORY};

    #[test]
    fn category_is_the_id_up_to_the_first_dash() {
        assert_eq!(category("user-123"), "user");
        assert_eq!(category("user-123-x"), "user");
        assert_eq!(category("user"), "user");
        assert_eq!(category("-1"), "");
        assert_eq!(category(""), "");
        assert_eq!(category(&system_stream("privacy")), SYSTEM_CATEGORY);
    }
}
