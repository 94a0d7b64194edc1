//! Headers of records Tributary forwards (dead letters, late records), so the value can stay
//! byte-for-byte what was read: where it came from and, for dead letters, why.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

/// Why a record was dead-lettered.
pub const ERROR: &str = "tributary.error";
/// A dead letter whose value was cut to fit the topic: the original size in bytes.
pub const ORIGINAL_SIZE: &str = "tributary.original.size";

/// A dead letter whose key was cut: the original key size in bytes.
pub const ORIGINAL_KEY_SIZE: &str = "tributary.original.key.size";
/// Dead letters keep at most this much of a key.
pub const MAX_DEAD_LETTER_KEY: usize = 1024;

/// A dead letter's key and value cut to fit (`max_value` bytes of value,
/// [`MAX_DEAD_LETTER_KEY`] of key), with the original sizes added to `headers` where cut.
pub fn fit_dead_letter<'a>(
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    max_value: usize,
    mut headers: OwnedHeaders,
) -> (Option<&'a [u8]>, Option<&'a [u8]>, OwnedHeaders) {
    let mut cut = |bytes: Option<&'a [u8]>, max: usize, header: &'static str| {
        let b = bytes?;
        if b.len() > max {
            headers = std::mem::replace(&mut headers, OwnedHeaders::new()).insert(Header {
                key: header,
                value: Some(b.len().to_string().as_bytes()),
            });
        }
        Some(&b[..b.len().min(max)])
    };
    let key = cut(key, MAX_DEAD_LETTER_KEY, ORIGINAL_KEY_SIZE);
    let payload = cut(payload, max_value, ORIGINAL_SIZE);
    (key, payload, headers)
}

/// The format header of a rollup or anomaly record (see [`crate::codec::FORMAT_HEADER`]).
pub fn record_format() -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(1).insert(Header {
        key: crate::codec::FORMAT_HEADER,
        value: Some(crate::codec::RECORD_FORMAT_TEXT.as_bytes()),
    })
}

/// The value of a record's [`crate::codec::FORMAT_HEADER`], if it has one.
pub fn format_of<M: Message>(msg: &M) -> Option<&[u8]> {
    msg.headers()?
        .iter()
        .find(|h| h.key == crate::codec::FORMAT_HEADER)
        .and_then(|h| h.value)
}

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

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;

    fn header(h: &OwnedHeaders, name: &str) -> Option<String> {
        h.iter()
            .find(|x| x.key == name)
            .and_then(|x| x.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn a_dead_letter_too_large_for_the_topic_is_cut_and_says_so() {
        let (key, value) = (vec![b'k'; 5000], vec![b'v'; 100_000]);
        let (k, v, h) = fit_dead_letter(
            Some(&key),
            Some(&value),
            65_536,
            dead_letter("t", "g", 0, 7, "why"),
        );
        assert_eq!(k.map(<[u8]>::len), Some(MAX_DEAD_LETTER_KEY));
        assert_eq!(v.map(<[u8]>::len), Some(65_536));
        assert_eq!(header(&h, ORIGINAL_SIZE).as_deref(), Some("100000"));
        assert_eq!(header(&h, ORIGINAL_KEY_SIZE).as_deref(), Some("5000"));
        assert_eq!(header(&h, ERROR).as_deref(), Some("why"), "the reason is kept");

        let (k, v, h) = fit_dead_letter(
            Some(b"key"),
            Some(b"{"),
            65_536,
            dead_letter("t", "g", 0, 7, "why"),
        );
        assert_eq!(
            (k, v),
            (Some(&b"key"[..]), Some(&b"{"[..])),
            "small records pass whole"
        );
        assert_eq!(header(&h, ORIGINAL_SIZE), None);
        assert_eq!(header(&h, ORIGINAL_KEY_SIZE), None);
    }
}
