//! PostgreSQL keeps timestamps as microseconds since 2000-01-01; the hash recipe and the
//! stream read use Unix microseconds.

/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
pub const PG_EPOCH_US: i64 = 946_684_800_000_000;

#[cfg(test)]
mod tests {
    #[test]
    fn thirty_years_of_microseconds() {
        // 10,957 days from 1970-01-01 to 2000-01-01.
        assert_eq!(super::PG_EPOCH_US, 10_957 * 86_400 * 1_000_000);
    }
}
