//! A batch: records of one partition copied out of librdkafka into one buffer by the poll
//! loop and handed to the partition's worker.

/// Records of one partition copied out of librdkafka into one buffer, so the poll loop
/// does not allocate per record and workers can own them.
#[derive(Debug, Default)]
pub struct Batch {
    pub partition: i32,
    pub generation: u64,
    data: Vec<u8>,
    pub(super) records: Vec<Span>,
    /// The broker no longer holds offsets from this one up to the record after it in this
    /// batch (found where the partition resumed; see [`crate::kafka::fetch_start`]).
    pub(super) missing_from: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    pub(super) offset: i64,
    /// The broker timestamp, if the record has one.
    pub(super) timestamp: Option<i64>,
    pub(super) key: Option<(u32, u32)>,
    pub(super) payload: Option<(u32, u32)>,
}

impl Batch {
    pub fn reset(&mut self, partition: i32, generation: u64) {
        self.partition = partition;
        self.generation = generation;
        self.data.clear();
        self.records.clear();
        self.missing_from = None;
    }

    #[inline]
    pub fn push(&mut self, offset: i64, timestamp: Option<i64>, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let mut put = |bytes: Option<&[u8]>| {
            bytes.map(|b| {
                let start = self.data.len() as u32;
                self.data.extend_from_slice(b);
                (start, b.len() as u32)
            })
        };
        let key = put(key);
        let payload = put(payload);
        self.records.push(Span {
            offset,
            timestamp,
            key,
            payload,
        });
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub(super) fn get(&self, span: Option<(u32, u32)>) -> Option<&[u8]> {
        span.map(|(s, l)| &self.data[s as usize..(s + l) as usize])
    }
}
