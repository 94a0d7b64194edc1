//! Where a partition must resume reading, and whether the broker really served from there.
//!
//! Kafka serves a fetch from any offset. tansu 0.6 answers a fetch that starts inside a
//! record batch with the next batch, or with nothing when that batch is the last one, so
//! records would be skipped silently or never read. A [`FetchStart`] notices both: a first
//! record past the start, or silence, means seeking further back (16, 256, 4096 … records);
//! records before the start are the caller's already. Against Kafka it costs nothing, or
//! one re-read record on a partition without new records.

use std::time::{Duration, Instant};

/// A partition that served nothing for this long after its start or a seek is sought
/// further back: ten times the longest a fetch waits for data (`fetch.wait.max.ms` is
/// 100 ms in every app's consumer). Each step back on tansu costs this much, and a
/// resume inside a 10,000-record batch takes four or five steps; seeking back too early
/// only re-reads records.
pub const SILENT_FETCH: Duration = Duration::from_secs(1);

/// Records fetched before a seek may still arrive: at most one seek per this long.
const SEEK_SETTLE: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct FetchStart {
    offset: i64,
    back: i64,
    sought: Option<Instant>,
    /// Since the start was set or the last seek.
    since: Instant,
    /// A record at or before the start arrived: the fetch position is sound.
    anchored: bool,
    /// How long a partition may serve nothing before it is sought further back.
    silence: Duration,
}

/// What a record means for a partition resuming at a [`FetchStart`].
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// At the start, or past it after a record before it (reading is contiguous): reading
    /// is sound from here on and the guard is no longer needed.
    Resumed,
    /// Past the start although the search went back to offset 0: the broker holds nothing
    /// from `missing_from` up to this record (retention deleted it, or it never existed).
    /// Reading goes on from here, and the guard is no longer needed.
    Gap { missing_from: i64 },
    /// Before the start: the caller has it already.
    Before,
    /// Past the start: the broker skipped records. Drop it, and seek to the offset if
    /// one is given.
    Skipped(Option<i64>),
}

impl FetchStart {
    pub fn at(offset: i64) -> Self {
        Self {
            offset,
            back: 0,
            sought: None,
            since: Instant::now(),
            anchored: false,
            silence: SILENT_FETCH,
        }
    }

    /// The same guard for a reader whose fetches are answered at once (a small
    /// `fetch.wait.max.ms`), which can take silence for an answer sooner than
    /// [`SILENT_FETCH`]. Seeking back too early only re-reads records.
    pub fn silent_after(self, silence: Duration) -> Self {
        Self { silence, ..self }
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    pub fn arrived(&mut self, offset: i64) -> Arrival {
        if offset < self.offset {
            self.anchored = true;
            return Arrival::Before;
        }
        if offset == self.offset || self.anchored {
            return Arrival::Resumed;
        }
        if self.sought.is_some_and(|t| t.elapsed() < SEEK_SETTLE) {
            return Arrival::Skipped(None);
        }
        if self.back > self.offset {
            return Arrival::Gap {
                missing_from: self.offset,
            };
        }
        Arrival::Skipped(Some(self.further_back()))
    }

    /// Where to seek if nothing was served for [`SILENT_FETCH`] (or the reader's own
    /// silence) since the start or the last seek.
    pub fn silent(&mut self) -> Option<i64> {
        (!self.anchored && self.back <= self.offset && self.since.elapsed() >= self.silence)
            .then(|| self.further_back())
    }

    fn further_back(&mut self) -> i64 {
        // 16, 256, 4096, 65536 records: few steps (each silent one costs a wait), and
        // records re-read before the start are only skipped.
        self.back = (self.back * 16).max(16);
        self.sought = Some(Instant::now());
        self.since = Instant::now();
        (self.offset - self.back).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_past_its_offset_seeks_back_and_skips_what_was_read() {
        let mut start = FetchStart::at(400);
        // The broker served the next batch: records 400..511 would be lost.
        assert_eq!(start.arrived(511), Arrival::Skipped(Some(384)));
        assert_eq!(start.arrived(512), Arrival::Skipped(None), "one seek per answer");
        start.sought = None;
        assert_eq!(start.arrived(511), Arrival::Skipped(Some(144)), "further back");
        assert_eq!(start.arrived(145), Arrival::Before, "already read");
        assert_eq!(start.arrived(400), Arrival::Resumed);
    }

    #[test]
    fn a_real_gap_is_reported_once_the_search_reaches_offset_zero() {
        let mut start = FetchStart::at(300);
        let mut seeks = vec![];
        while let Arrival::Skipped(Some(to)) = start.arrived(1000) {
            seeks.push(to);
            start.sought = None;
        }
        assert_eq!(seeks, [284, 44, 0], "bounded search down to offset 0");
        assert_eq!(start.arrived(1000), Arrival::Gap { missing_from: 300 });
        let mut settling = FetchStart::at(3);
        assert_eq!(settling.arrived(10), Arrival::Skipped(Some(0)));
        assert_eq!(
            settling.arrived(10),
            Arrival::Skipped(None),
            "a record fetched before the seek to 0 proves nothing yet"
        );
    }

    #[test]
    fn a_partition_that_serves_nothing_is_sought_back_until_a_record_comes() {
        let mut start = FetchStart::at(100);
        start.since = Instant::now() - SILENT_FETCH;
        assert_eq!(start.silent(), Some(84));
        assert_eq!(start.silent(), None, "waits again after a seek");
        assert_eq!(start.arrived(99), Arrival::Before, "a record before the offset");
        start.since = Instant::now() - SILENT_FETCH;
        assert_eq!(start.silent(), None, "an anchored partition is not moved again");
    }

    #[test]
    fn a_reader_answered_at_once_takes_silence_sooner() {
        let mut quick = FetchStart::at(100).silent_after(Duration::from_millis(300));
        let mut default = FetchStart::at(100);
        for start in [&mut quick, &mut default] {
            start.since = Instant::now() - Duration::from_millis(300);
        }
        assert_eq!(quick.silent(), Some(84));
        assert_eq!(default.silent(), None, "the default waits {SILENT_FETCH:?}");
    }
}
