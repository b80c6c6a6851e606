//! How the embedded store lays out its redb tables and encodes a key's stamps.

use redb::{MultimapTableDefinition, TableDefinition};

use crate::error::StoreError;
use crate::types::{KeyValue, LeaseId, Revision};

/// Key → stamps header + value (see [`encode`]).
pub(super) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Lease id → (time to live in ms, deadline in ms since the Unix epoch).
pub(super) const LEASES: TableDefinition<i64, (u64, u64)> = TableDefinition::new("leases");
/// Lease id → the keys attached to it.
pub(super) const LEASE_KEYS: MultimapTableDefinition<i64, &str> =
    MultimapTableDefinition::new("lease_keys");
/// Counters: [`META_REVISION`], [`META_LEASE_SEQ`], [`META_SCHEMA`].
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The store's current revision.
pub(super) const META_REVISION: &str = "revision";
/// The last lease id handed out.
pub(super) const META_LEASE_SEQ: &str = "lease_seq";
/// The layout version of the file.
pub(super) const META_SCHEMA: &str = "schema";
/// The layout this code reads and writes.
pub(super) const SCHEMA: u64 = 1;

const HEADER: usize = 32;

/// A key's stored stamps and value: create, mod revision, version, lease (0 = none), each
/// little-endian 8 bytes, then the value.
pub(super) fn encode(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + kv.value.len());
    out.extend_from_slice(&kv.create_revision.0.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.0.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&kv.lease.map_or(0, |l| l.0).to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

/// Decodes what [`encode`] wrote for `key`.
pub(super) fn decode(key: &str, bytes: &[u8]) -> Result<KeyValue, StoreError> {
    if bytes.len() < HEADER {
        return Err(StoreError::Corrupt(format!(
            "record of key {key:?} is {} bytes, shorter than its {HEADER}-byte header",
            bytes.len()
        )));
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        b
    };
    let lease = i64::from_le_bytes(word(3));
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: Revision(u64::from_le_bytes(word(0))),
        mod_revision: Revision(u64::from_le_bytes(word(1))),
        version: u64::from_le_bytes(word(2)),
        lease: (lease != 0).then_some(LeaseId(lease)),
        value: bytes[HEADER..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_short_records() {
        let kv = KeyValue {
            key: "a/b".into(),
            value: b"hello".to_vec(),
            create_revision: Revision(3),
            mod_revision: Revision(9),
            version: 4,
            lease: Some(LeaseId(77)),
        };
        assert_eq!(decode("a/b", &encode(&kv)).unwrap(), kv);
        let none = KeyValue {
            lease: None,
            value: vec![],
            ..kv
        };
        assert_eq!(decode("a/b", &encode(&none)).unwrap(), none);
        assert!(matches!(
            decode("a/b", &[0u8; 31]),
            Err(StoreError::Corrupt(_))
        ));
    }
}
