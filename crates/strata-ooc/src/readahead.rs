//! Adaptive read-ahead for accesses without a schedule (pure logic: no I/O,
//! no threads; the thread that acts on it is in [`manager`]).
//!
//! A reader that hands the buffer manager no schedule (a custom kernel
//! walking an array) still often reads chunks in a pattern: one after the
//! other, every `n`-th, backwards. [`ReadAhead`] watches the keys it is fed
//! (chunk indices, `u64`; the caller maps its keys so that neighbours in
//! an array are neighbours here) and answers each access with the keys to
//! read ahead now, as a [`KeyRun`], in the manner of the Linux page-cache
//! read-ahead:
//!
//! - **Detection.** An access that continues no known stream is remembered
//!   as a *seed* (the last [`SEEDS_MAX`]). It also starts a tentative
//!   stream with the nearest seed, stride `key - seed` when that is at most
//!   [`STRIDE_MAX_CHUNKS`] either way. A stream expects `last + stride`
//!   next; once [`CONFIRM_ACCESSES`] accesses in a row kept its stride, read
//!   ahead starts. Seeds are not consumed by a pairing, so two arrays read
//!   in lockstep (`a0 b0 a1 b1 ...`) each find their stream whatever the
//!   distance between them. Up to [`STREAMS_MAX`] streams are tracked; a
//!   new one replaces the least recently used.
//! - **Window.** A stream's window (chunks kept read ahead of its last
//!   access) starts at [`WINDOW_MIN_CHUNKS`]. When no more than half of it
//!   is left ahead of the reader, it is refilled; if the access that
//!   triggered the refill had been read ahead (a hit), the window doubles
//!   first, up to [`WINDOW_MAX_CHUNKS`] and the byte budget the caller
//!   passes. Refilling only once half the window is used issues large,
//!   rare batches instead of one key per access.
//! - **Collapse.** An access that breaks a stream's stride starts afresh
//!   (a seed, then a new stream at the minimum window); the broken stream
//!   ages out. A chunk read ahead and evicted unused
//!   ([`ReadAhead::on_wasted`]) halves its stream's window (down to the
//!   minimum) and pulls the read-ahead back, so the cache is not flooded
//!   again.
//!
//! ```
//! use strata_ooc::readahead::{KeyRun, ReadAhead};
//!
//! let mut ahead = ReadAhead::new();
//! let (budget_bytes, chunk_bytes) = (u64::MAX, 4096);
//! assert_eq!(ahead.access(10, budget_bytes, chunk_bytes), None); // a seed
//! assert_eq!(ahead.access(11, budget_bytes, chunk_bytes), None); // a tentative stream
//! // The third access confirms the stride: read ahead the minimum window.
//! let run = ahead.access(12, budget_bytes, chunk_bytes).expect("a stream");
//! assert_eq!(run, KeyRun { first: 13, stride: 1, count: 2 });
//! // 13 was read ahead and only one chunk is left ahead: refill, doubled.
//! let run = ahead.access(13, budget_bytes, chunk_bytes).expect("a refill");
//! assert_eq!(run.keys().collect::<Vec<_>>(), [15, 16, 17]);
//! ahead.check_invariants();
//! ```

pub mod manager;

use std::collections::VecDeque;

/// Streams tracked at once (interleaved operands, a row and a column...).
pub const STREAMS_MAX: usize = 8;
/// Recent accesses that continued no stream, kept to pair with the next.
pub const SEEDS_MAX: usize = 8;
/// Largest stride (in keys, either direction) a stream may have; accesses
/// farther apart are unrelated.
pub const STRIDE_MAX_CHUNKS: u64 = 64;
/// Accesses in a row with one stride before read-ahead starts (two equal
/// steps: one step alone is as likely chance).
pub const CONFIRM_ACCESSES: u32 = 3;
/// A stream's first window, in chunks.
pub const WINDOW_MIN_CHUNKS: u64 = 2;
/// Largest window, in chunks (the caller's byte budget may cap it lower).
pub const WINDOW_MAX_CHUNKS: u64 = 64;
/// Buckets of [`ReadAheadStats::window_histogram`]: bucket `i` counts
/// batches issued with a window in `[2^i, 2^(i+1))`.
pub const WINDOW_HISTOGRAM_BUCKETS: usize = WINDOW_MAX_CHUNKS.ilog2() as usize + 1;

const _: () = assert!(WINDOW_MIN_CHUNKS >= 1 && WINDOW_MIN_CHUNKS <= WINDOW_MAX_CHUNKS);
const _: () = assert!(CONFIRM_ACCESSES >= 2, "a stride needs two accesses");
const _: () = assert!(STRIDE_MAX_CHUNKS >= 1 && STRIDE_MAX_CHUNKS <= i64::MAX as u64);
const _: () = assert!(STREAMS_MAX >= 2 && SEEDS_MAX >= 2, "interleaved streams");

/// Keys to read ahead: `first`, `first + stride`, ... (`count` keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRun {
    /// The first key.
    pub first: u64,
    /// Step between keys (negative for a backward stream; never 0).
    pub stride: i64,
    /// Keys in the run (at least one).
    pub count: u64,
}

impl KeyRun {
    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = u64> {
        let KeyRun { first, stride, .. } = *self;
        (0..self.count).map(move |i| step(first, stride, i).expect("a run stays in range"))
    }

    /// The last key.
    pub fn last(&self) -> u64 {
        step(self.first, self.stride, self.count - 1).expect("a run stays in range")
    }
}

/// One tracked stream, as [`ReadAhead::streams`] shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamView {
    /// The stream's last access.
    pub last_key: u64,
    /// Step between its accesses (never 0).
    pub stride: i64,
    /// Accesses in a row that kept the stride (saturating).
    pub run_accesses: u32,
    /// Chunks it keeps read ahead (0 before read-ahead starts).
    pub window_chunks: u64,
    /// The farthest key read ahead so far, if any (behind `last_key` when
    /// the reader overtook the read-ahead).
    pub ahead_end: Option<u64>,
}

/// Counters of a [`ReadAhead`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadAheadStats {
    /// Accesses fed.
    pub accesses: u64,
    /// Accesses that continued a tracked stream's stride.
    pub stream_accesses: u64,
    /// Accesses to a key read ahead earlier (hits).
    pub covered_accesses: u64,
    /// Streams that reached [`CONFIRM_ACCESSES`].
    pub streams_confirmed: u64,
    /// Read-ahead batches returned.
    pub batches: u64,
    /// Keys in them.
    pub issued_keys: u64,
    /// [`ReadAhead::on_wasted`] calls.
    pub wasted_reports: u64,
    /// Of those, the ones that shrank a stream's window.
    pub wasted_shrinks: u64,
    /// Largest window a batch was issued with.
    pub window_max_chunks: u64,
    /// Batches by window size; see [`WINDOW_HISTOGRAM_BUCKETS`].
    pub window_histogram: [u64; WINDOW_HISTOGRAM_BUCKETS],
}

#[derive(Clone, Copy, Debug)]
struct Stream {
    last_key: u64,
    stride: i64,
    run_accesses: u32,
    window_chunks: u64,
    ahead_end: Option<u64>,
    /// The tick of its last access (least recently used goes first).
    used_tick: u64,
}

impl Stream {
    fn expected(&self) -> Option<u64> {
        step(self.last_key, self.stride, 1)
    }

    fn view(&self) -> StreamView {
        StreamView {
            last_key: self.last_key,
            stride: self.stride,
            run_accesses: self.run_accesses,
            window_chunks: self.window_chunks,
            ahead_end: self.ahead_end,
        }
    }
}

/// The detector; see the module documentation.
#[derive(Clone, Debug, Default)]
pub struct ReadAhead {
    streams: Vec<Stream>,
    /// Oldest first, distinct.
    seeds: VecDeque<u64>,
    /// Accesses so far (the clock of `used_tick`).
    tick: u64,
    stats: ReadAheadStats,
}

/// `key + stride * steps`, if it is a `u64`.
fn step(key: u64, stride: i64, steps: u64) -> Option<u64> {
    let offset = i128::from(stride) * i128::from(steps);
    u64::try_from(i128::from(key) + offset).ok()
}

/// How many strides `to` lies past `from` in the stride's direction;
/// `None` when it lies behind or off the stride.
fn steps_between(from: u64, to: u64, stride: i64) -> Option<u64> {
    let distance = if stride > 0 {
        to.checked_sub(from)?
    } else {
        from.checked_sub(to)?
    };
    let magnitude = stride.unsigned_abs();
    distance
        .is_multiple_of(magnitude)
        .then(|| distance / magnitude)
}

/// Keys `first, first + stride, ...` that fit in a `u64`.
fn keys_in_range(first: u64, stride: i64) -> u64 {
    let magnitude = stride.unsigned_abs();
    let room = if stride > 0 { u64::MAX - first } else { first };
    (room / magnitude).saturating_add(1)
}

impl ReadAhead {
    /// A detector with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters so far.
    pub fn stats(&self) -> ReadAheadStats {
        self.stats
    }

    /// The tracked streams, in no particular order.
    pub fn streams(&self) -> impl Iterator<Item = StreamView> + '_ {
        self.streams.iter().map(Stream::view)
    }

    /// Streams reading ahead now (the caller may split its budget among
    /// them).
    pub fn active_streams(&self) -> usize {
        self.streams.iter().filter(|s| s.window_chunks > 0).count()
    }

    /// Feeds one access; returns the keys to read ahead now, if any. The
    /// window is capped at `budget_bytes / chunk_bytes` chunks (no cap for
    /// chunks of 0 bytes) besides [`WINDOW_MAX_CHUNKS`]. A run may name keys
    /// past the end of the caller's array: it knows no array.
    pub fn access(&mut self, key: u64, budget_bytes: u64, chunk_bytes: u64) -> Option<KeyRun> {
        self.tick += 1;
        self.stats.accesses += 1;
        let cap_chunks = budget_bytes
            .checked_div(chunk_bytes)
            .unwrap_or(u64::MAX)
            .min(WINDOW_MAX_CHUNKS);
        // Several streams may expect the key: the longest-lived wins.
        let matched = self
            .streams
            .iter()
            .enumerate()
            .filter(|(_, s)| s.expected() == Some(key))
            .max_by_key(|(_, s)| (s.run_accesses, s.used_tick))
            .map(|(index, _)| index);
        match matched {
            Some(index) => self.advance(index, key, cap_chunks),
            None => {
                self.start_stream(key);
                None
            }
        }
    }

    /// The caller evicted (or found evicted) read-ahead chunk `key` before
    /// it was used: the stream that read it halves its window (not below
    /// the minimum) and keeps no more than that ahead; if `key` is still
    /// ahead of the reader, it is read again when the reader nears it.
    /// Returns whether a stream had read `key` ahead (between its last
    /// access and its farthest read-ahead).
    pub fn on_wasted(&mut self, key: u64) -> bool {
        self.stats.wasted_reports += 1;
        let Some(stream) = self.streams.iter_mut().find(|s| {
            s.ahead_end.is_some_and(|end| {
                steps_between(s.last_key, key, s.stride).is_some()
                    && steps_between(key, end, s.stride).is_some()
            })
        }) else {
            return false;
        };
        let end = stream.ahead_end.expect("matched on it");
        stream.window_chunks =
            (stream.window_chunks / 2).max(WINDOW_MIN_CHUNKS.min(stream.window_chunks));
        // A key past the last access is read again when the reader nears it.
        let mut new_end = if key == stream.last_key {
            end
        } else {
            step(key, -stream.stride, 1).expect("the last access lies before it")
        };
        let ahead = steps_between(stream.last_key, new_end, stream.stride).unwrap_or(0);
        if ahead > stream.window_chunks {
            new_end = step(stream.last_key, stream.stride, stream.window_chunks)
                .expect("nearer than a key already read ahead");
        }
        stream.ahead_end = Some(new_end);
        self.stats.wasted_shrinks += 1;
        true
    }

    /// A matched access of stream `index`.
    fn advance(&mut self, index: usize, key: u64, cap_chunks: u64) -> Option<KeyRun> {
        self.stats.stream_accesses += 1;
        let stream = &mut self.streams[index];
        stream.last_key = key;
        stream.run_accesses = stream.run_accesses.saturating_add(1);
        stream.used_tick = self.tick;
        let (stride, run_accesses) = (stream.stride, stream.run_accesses);
        // A stream that caught up with another's position duplicates it.
        let mut position = 0;
        self.streams.retain(|s| {
            position += 1;
            position - 1 == index || s.last_key != key || s.stride != stride
        });
        let stream = self
            .streams
            .iter_mut()
            .find(|s| s.last_key == key && s.stride == stride)
            .expect("the advanced stream");
        if run_accesses < CONFIRM_ACCESSES {
            return None;
        }
        if run_accesses == CONFIRM_ACCESSES {
            self.stats.streams_confirmed += 1;
        }
        let ahead = stream
            .ahead_end
            .and_then(|end| steps_between(key, end, stride));
        let hit = ahead.is_some();
        if hit {
            self.stats.covered_accesses += 1;
        }
        let ahead = ahead.unwrap_or(0);
        stream.window_chunks = stream.window_chunks.min(cap_chunks);
        if ahead > stream.window_chunks / 2 {
            return None;
        }
        let grown = if hit {
            stream.window_chunks.saturating_mul(2)
        } else {
            stream.window_chunks
        };
        stream.window_chunks = grown.max(WINDOW_MIN_CHUNKS).min(cap_chunks);
        let base = match stream.ahead_end {
            Some(end) if hit => end,
            _ => key,
        };
        let first = step(base, stride, 1)?;
        let count = stream
            .window_chunks
            .saturating_sub(ahead)
            .min(keys_in_range(first, stride));
        if count == 0 {
            return None;
        }
        let run = KeyRun {
            first,
            stride,
            count,
        };
        stream.ahead_end = Some(run.last());
        let window_chunks = stream.window_chunks;
        self.stats.batches += 1;
        self.stats.issued_keys += count;
        self.stats.window_max_chunks = self.stats.window_max_chunks.max(window_chunks);
        self.stats.window_histogram[window_chunks.ilog2() as usize] += 1;
        Some(run)
    }

    /// An access that continued no stream: pairs it with the nearest seed
    /// (the most recent among equals) and remembers it as a seed.
    fn start_stream(&mut self, key: u64) {
        let nearest = self
            .seeds
            .iter()
            .rev()
            .filter(|&&seed| seed != key && key.abs_diff(seed) <= STRIDE_MAX_CHUNKS)
            .min_by_key(|&&seed| key.abs_diff(seed))
            .copied();
        if let Some(seed) = nearest {
            let stride = i64::try_from(i128::from(key) - i128::from(seed))
                .expect("bounded by STRIDE_MAX_CHUNKS");
            if let Some(same) = self
                .streams
                .iter_mut()
                .find(|s| s.last_key == key && s.stride == stride)
            {
                same.used_tick = self.tick;
            } else {
                let stream = Stream {
                    last_key: key,
                    stride,
                    run_accesses: 2,
                    window_chunks: 0,
                    ahead_end: None,
                    used_tick: self.tick,
                };
                if self.streams.len() < STREAMS_MAX {
                    self.streams.push(stream);
                } else {
                    let oldest = self
                        .streams
                        .iter_mut()
                        .min_by_key(|s| s.used_tick)
                        .expect("the table is full");
                    *oldest = stream;
                }
            }
        }
        self.seeds.retain(|&seed| seed != key);
        if self.seeds.len() == SEEDS_MAX {
            self.seeds.pop_front();
        }
        self.seeds.push_back(key);
    }

    /// Checks every internal invariant in O(streams + seeds); panics with
    /// the values.
    pub fn check_invariants(&self) {
        assert!(
            self.streams.len() <= STREAMS_MAX,
            "{} streams > {STREAMS_MAX}",
            self.streams.len()
        );
        assert!(
            self.seeds.len() <= SEEDS_MAX,
            "{} seeds > {SEEDS_MAX}",
            self.seeds.len()
        );
        for (i, seed) in self.seeds.iter().enumerate() {
            assert!(
                !self.seeds.iter().skip(i + 1).any(|s| s == seed),
                "seed {seed} twice in {:?}",
                self.seeds
            );
        }
        for (i, s) in self.streams.iter().enumerate() {
            assert!(
                s.stride != 0 && s.stride.unsigned_abs() <= STRIDE_MAX_CHUNKS,
                "stream {s:?}: stride out of range"
            );
            assert!(
                s.run_accesses >= 2,
                "stream {s:?}: a stream has two accesses"
            );
            assert!(
                s.used_tick <= self.tick,
                "stream {s:?} used after tick {}",
                self.tick
            );
            assert!(
                s.window_chunks <= WINDOW_MAX_CHUNKS,
                "stream {s:?}: window > {WINDOW_MAX_CHUNKS}"
            );
            if s.window_chunks > 0 || s.ahead_end.is_some() {
                assert!(
                    s.run_accesses >= CONFIRM_ACCESSES,
                    "stream {s:?} reads ahead before {CONFIRM_ACCESSES} accesses"
                );
            }
            if let Some(end) = s.ahead_end {
                let aligned = steps_between(s.last_key, end, s.stride)
                    .or_else(|| steps_between(end, s.last_key, s.stride));
                let ahead = aligned
                    .unwrap_or_else(|| panic!("stream {s:?}: read-ahead end off the stride"));
                if steps_between(s.last_key, end, s.stride).is_some() {
                    assert!(
                        ahead <= WINDOW_MAX_CHUNKS,
                        "stream {s:?}: {ahead} chunks ahead > {WINDOW_MAX_CHUNKS}"
                    );
                }
            }
            assert!(
                !self
                    .streams
                    .iter()
                    .skip(i + 1)
                    .any(|o| o.last_key == s.last_key && o.stride == s.stride),
                "stream {s:?} tracked twice"
            );
        }
        let st = &self.stats;
        assert!(
            st.covered_accesses <= st.stream_accesses && st.stream_accesses <= st.accesses,
            "covered {} <= stream {} <= all {} accesses broken",
            st.covered_accesses,
            st.stream_accesses,
            st.accesses
        );
        assert_eq!(st.accesses, self.tick, "accesses counted vs the clock");
        let histogram_total: u64 = st.window_histogram.iter().sum();
        assert_eq!(
            histogram_total, st.batches,
            "window histogram {:?} vs {} batches",
            st.window_histogram, st.batches
        );
        assert!(
            st.issued_keys >= st.batches && st.window_max_chunks <= WINDOW_MAX_CHUNKS,
            "{} keys in {} batches, window max {}",
            st.issued_keys,
            st.batches,
            st.window_max_chunks
        );
        assert!(
            st.wasted_shrinks <= st.wasted_reports,
            "{} shrinks of {} waste reports",
            st.wasted_shrinks,
            st.wasted_reports
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `trace` with no budget cap; returns each access's run.
    fn feed(ahead: &mut ReadAhead, trace: &[u64]) -> Vec<Option<KeyRun>> {
        trace
            .iter()
            .map(|&key| {
                let run = ahead.access(key, u64::MAX, 1);
                ahead.check_invariants();
                run
            })
            .collect()
    }

    fn run(first: u64, stride: i64, count: u64) -> Option<KeyRun> {
        Some(KeyRun {
            first,
            stride,
            count,
        })
    }

    #[test]
    fn sequential_hand_trace() {
        let mut ahead = ReadAhead::new();
        let runs = feed(&mut ahead, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(
            runs,
            [
                None,
                None,
                run(3, 1, 2), // window 2: 3, 4
                run(5, 1, 3), // 1 left ahead: window 4, up to 7
                None,         // 3 left ahead
                run(8, 1, 6), // 2 left: window 8, up to 13
                None,
                None,
                None,
                run(14, 1, 12), // 4 left: window 16, up to 25
            ]
        );
        let stats = ahead.stats();
        assert_eq!(stats.covered_accesses, 7, "{stats:?}");
        assert_eq!(stats.window_max_chunks, 16, "{stats:?}");
        assert_eq!(stats.window_histogram[1..5], [1, 1, 1, 1], "{stats:?}");
    }

    #[test]
    fn step_and_ranges_at_the_edges() {
        assert_eq!(step(5, -2, 2), Some(1));
        assert_eq!(step(1, -2, 1), None);
        assert_eq!(step(u64::MAX - 1, 1, 2), None);
        assert_eq!(steps_between(3, 9, 3), Some(2));
        assert_eq!(steps_between(3, 8, 3), None);
        assert_eq!(steps_between(9, 3, 3), None);
        assert_eq!(steps_between(9, 3, -3), Some(2));
        assert_eq!(keys_in_range(4, -2), 3); // 4, 2, 0
        assert_eq!(keys_in_range(u64::MAX - 3, 2), 2);
    }

    #[test]
    fn backward_scan_stops_at_zero() {
        let mut ahead = ReadAhead::new();
        let runs = feed(&mut ahead, &[5, 4, 3, 2]);
        assert_eq!(runs, [None, None, run(2, -1, 2), run(0, -1, 1)]);
    }

    #[test]
    fn budget_caps_the_window() {
        let mut ahead = ReadAhead::new();
        // 3 chunks of 100 bytes fit in 350 bytes.
        let runs: Vec<_> = (0..12).map(|k| ahead.access(k, 350, 100)).collect();
        ahead.check_invariants();
        assert_eq!(runs[2], run(3, 1, 2));
        assert_eq!(runs[3], run(5, 1, 2)); // would be 4, capped at 3
        assert_eq!(ahead.stats().window_max_chunks, 3);
        // A budget below one chunk stops read-ahead.
        let mut ahead = ReadAhead::new();
        let runs: Vec<_> = (0..12).map(|k| ahead.access(k, 99, 100)).collect();
        assert!(runs.iter().all(Option::is_none), "{runs:?}");
        // Chunks of no bytes cost nothing.
        assert_eq!(ReadAhead::new().access(0, 0, 0), None);
    }

    #[test]
    fn wasted_halves_and_pulls_back() {
        let mut ahead = ReadAhead::new();
        feed(&mut ahead, &[0, 1, 2, 3, 4, 5]); // window 8, read ahead up to 13
        let stream = ahead
            .streams()
            .find(|s| s.window_chunks > 0)
            .expect("a stream");
        assert_eq!((stream.window_chunks, stream.ahead_end), (8, Some(13)));
        assert!(ahead.on_wasted(9));
        let stream = ahead
            .streams()
            .find(|s| s.window_chunks > 0)
            .expect("a stream");
        // Window 4; 9 is read again: the read-ahead ends at 8.
        assert_eq!((stream.window_chunks, stream.ahead_end), (4, Some(8)));
        assert!(!ahead.on_wasted(100), "no stream read 100 ahead");
        ahead.check_invariants();
        // 6: 2 ahead <= 4 / 2, a hit: window 8 again, from 9 to 14.
        assert_eq!(ahead.access(6, u64::MAX, 1), run(9, 1, 6));
    }
}
