//! Headers of records Tributary forwards (dead letters, late records), so the value can stay
//! byte-for-byte what was read: where it came from and, for dead letters, why.

use rdkafka::message::{Header, OwnedHeaders};

/// Why a record was dead-lettered.
pub const ERROR: &str = "tributary.error";
/// A dead letter whose value was cut to fit the topic: the original size in bytes.
pub const ORIGINAL_SIZE: &str = "tributary.original.size";

/// `tributary.group`, `tributary.source.topic`, `tributary.source.partition`,
/// `tributary.source.offset`.
pub fn provenance(topic: &str, group: &str, partition: i32, offset: i64) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(6)
        .insert(Header {
            key: "tributary.group",
            value: Some(group.as_bytes()),
        })
        .insert(Header {
            key: "tributary.source.topic",
            value: Some(topic.as_bytes()),
        })
        .insert(Header {
            key: "tributary.source.partition",
            value: Some(partition.to_string().as_bytes()),
        })
        .insert(Header {
            key: "tributary.source.offset",
            value: Some(offset.to_string().as_bytes()),
        })
}

/// Provenance plus the reason, for the dead-letter topic.
pub fn dead_letter(topic: &str, group: &str, partition: i32, offset: i64, reason: &str) -> OwnedHeaders {
    provenance(topic, group, partition, offset).insert(Header {
        key: ERROR,
        value: Some(reason.as_bytes()),
    })
}
