//! The ClickHouse server version and what each feature the sink uses needs.
//!
//! The version is read once per connection (`SELECT version()`); every feature switch is a
//! method here, so no other module compares version numbers.

use std::fmt;

/// A ClickHouse server version, as `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Major (year-based since 18.x).
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl ServerVersion {
    /// Parses `version()` output such as `18.16.1` or `24.8.4.13`.
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(ServerVersion { major, minor })
    }

    const fn at_least(self, major: u32, minor: u32) -> bool {
        self.major > major || (self.major == major && self.minor >= minor)
    }

    /// Whether the server knows `insert_deduplication_token` and the MergeTree setting
    /// `non_replicated_deduplication_window` (22.2 and later).
    pub fn supports_insert_deduplication_token(self) -> bool {
        self.at_least(22, 2)
    }

    /// Whether the server knows the `async_insert` setting (21.11 and later). From 26.3 it is
    /// on by default, so the sink always sends it switched off: an INSERT must return only once
    /// its rows are in a part, or an ack could precede the write.
    pub fn knows_async_insert(self) -> bool {
        self.at_least(21, 11)
    }

    /// Whether the client's `RowBinaryWithNamesAndTypes` validation works (24.10 and later).
    pub fn supports_row_validation(self) -> bool {
        self.at_least(24, 10)
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions_and_gates_features() {
        let debian = ServerVersion::parse("18.16.1").unwrap();
        assert!(!debian.supports_insert_deduplication_token());
        assert!(!debian.supports_row_validation());
        assert!(!debian.knows_async_insert());
        let current = ServerVersion::parse("26.9.1.1").unwrap();
        assert!(current.supports_insert_deduplication_token());
        assert!(current.supports_row_validation());
        assert!(current.knows_async_insert());
        assert!(ServerVersion::parse("22.2.1")
            .unwrap()
            .supports_insert_deduplication_token());
        assert!(!ServerVersion::parse("22.1.9")
            .unwrap()
            .supports_insert_deduplication_token());
        assert!(ServerVersion::parse("21.11.2")
            .unwrap()
            .knows_async_insert());
        assert!(!ServerVersion::parse("21.10.9")
            .unwrap()
            .knows_async_insert());
        assert_eq!(ServerVersion::parse("garbage"), None);
    }
}
