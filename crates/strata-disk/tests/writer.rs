//! The background spill writer: many submitters against a model, reads while
//! writes are queued, back-pressure of the bounded queue, device failures
//! and bad records reaching their tickets (and only theirs), drop finishing
//! the queue without committing, and reopen after a commit (through a crash
//! of the volatile device) finding every record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use strata_disk::device::{BlockDevice, DeviceError, Fault, FaultyDevice, MemDevice};
use strata_disk::record::{ChecksumKind, CodecPolicy, Dtype, RecordMeta};
use strata_disk::store::{Extent, ExtentStore, ReadBuf, StoreConfig, StoreError};
use strata_disk::writer::{SpillWriter, WriterError, WRITER_BATCH_RECORDS_MAX, WRITER_QUEUE_DEPTH};

const BLOCK_BYTES: u64 = 512;

/// Seed from `STRATA_TEST_SEED` if set, else a fixed default; printed by
/// every assertion that uses it.
fn seed(default: u64) -> u64 {
    std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn config(policy: CodecPolicy, spare_blocks: u64) -> StoreConfig {
    StoreConfig {
        cap_bytes: None,
        policy,
        checksum: ChecksumKind::Crc32c,
        spare_blocks,
    }
}

fn meta(len: usize) -> RecordMeta {
    RecordMeta {
        dtype: Dtype::Bytes,
        shape: vec![len as u64],
    }
}

fn shared_faulty(blocks: u64) -> Arc<FaultyDevice<MemDevice>> {
    Arc::new(FaultyDevice::new(
        MemDevice::new(blocks * BLOCK_BYTES, BLOCK_BYTES).unwrap(),
    ))
}

fn random_payload(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let mut payload = vec![0u8; len];
    if rng.gen_bool(0.5) {
        rng.fill_bytes(&mut payload);
    } else {
        let byte: u8 = rng.gen();
        payload.fill(byte);
    }
    payload
}

#[test]
fn many_submitters_then_reopen_after_a_crash_finds_every_record() {
    let seed = seed(0x5B17);
    let threads = 4u64;
    let per_thread = 60usize;
    let device = shared_faulty(8192);
    let store = ExtentStore::create(Arc::clone(&device), config(CodecPolicy::Auto, 8)).unwrap();
    let writer = SpillWriter::new(store).unwrap();
    let model: Vec<(Extent, Vec<u8>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let writer = &writer;
                scope.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(seed ^ thread);
                    let mut buf = ReadBuf::new();
                    let mut done = Vec::new();
                    let mut pending = Vec::new();
                    for i in 0..per_thread {
                        let len = rng.gen_range(0..2500);
                        let payload = random_payload(&mut rng, len);
                        pending.push((writer.submit(payload.clone(), meta(len)), payload));
                        // Every few submits, resolve the oldest and read it
                        // back while later writes are still queued.
                        if i % 4 == 3 {
                            let (ticket, payload) = pending.remove(0);
                            let extent = ticket.wait().unwrap_or_else(|e| {
                                panic!("seed {seed} thread {thread} record {i}: {e}")
                            });
                            let view = writer.get_into(extent, &mut buf).unwrap();
                            assert_eq!(view.payload(), payload.as_slice(), "seed {seed}");
                            done.push((extent, payload));
                        }
                    }
                    for (ticket, payload) in pending {
                        done.push((ticket.wait().unwrap(), payload));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap())
            .collect()
    });
    writer.commit().unwrap();
    let total = threads * per_thread as u64;
    let stats = writer.stats();
    assert_eq!(
        (stats.submitted, stats.written, stats.failed),
        (total, total, 0),
        "seed {seed}: {stats:?}"
    );
    assert!(
        stats.batches <= total,
        "seed {seed}: {} batches for {total} records",
        stats.batches
    );
    writer.check_invariants();
    let mut owners: HashMap<u64, usize> = HashMap::new();
    for (index, (extent, _)) in model.iter().enumerate() {
        for block in extent.blocks() {
            assert!(
                owners.insert(block, index).is_none(),
                "seed {seed}: block {block} in two records"
            );
        }
    }
    let extents: Vec<Extent> = model.iter().map(|(extent, _)| *extent).collect();
    for ((extent, payload), result) in model.iter().zip(writer.get_many(&extents)) {
        assert_eq!(&result.unwrap().payload, payload, "seed {seed} {extent:?}");
    }

    // The commit made everything durable: a crash loses nothing.
    let store = writer.into_store();
    drop(store);
    device.crash().unwrap();
    device.recover();
    let store = ExtentStore::open(Arc::clone(&device), config(CodecPolicy::Auto, 8)).unwrap();
    assert_eq!(store.stats().records, total, "seed {seed}");
    for ((extent, payload), result) in model.iter().zip(store.get_many(&extents)) {
        assert_eq!(
            &result.unwrap().payload,
            payload,
            "seed {seed} {extent:?} after crash"
        );
    }
    store.check_invariants();
}

/// A device whose writes take a while, so the queue fills up.
struct SlowDevice {
    inner: MemDevice,
    write_delay: Duration,
}

impl BlockDevice for SlowDevice {
    fn block_bytes(&self) -> u64 {
        self.inner.block_bytes()
    }
    fn len_bytes(&self) -> u64 {
        self.inner.len_bytes()
    }
    fn read_at(&self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.inner.read_at(offset_bytes, buf)
    }
    fn write_at(&self, offset_bytes: u64, data: &[u8]) -> Result<(), DeviceError> {
        std::thread::sleep(self.write_delay);
        self.inner.write_at(offset_bytes, data)
    }
    fn flush(&self) -> Result<(), DeviceError> {
        self.inner.flush()
    }
}

#[test]
fn a_full_queue_holds_submitters_back() {
    let device = SlowDevice {
        inner: MemDevice::new(4096 * BLOCK_BYTES, BLOCK_BYTES).unwrap(),
        write_delay: Duration::from_millis(20),
    };
    let store = ExtentStore::create(device, config(CodecPolicy::None, 4)).unwrap();
    let writer = SpillWriter::new(store).unwrap();
    let records = 4 * WRITER_QUEUE_DEPTH;
    let tickets: Vec<_> = (0..records)
        .map(|i| writer.submit(vec![i as u8; 100], meta(100)))
        .collect();
    let stats = writer.stats();
    let bound = (WRITER_QUEUE_DEPTH + WRITER_BATCH_RECORDS_MAX) as u64;
    // The submitter outran the device, so the queue filled up, yet never
    // more than the bound was held.
    assert!(
        stats.pending_max >= WRITER_QUEUE_DEPTH as u64 && stats.pending_max <= bound,
        "{stats:?}, bound {bound}"
    );
    assert!(
        stats.written < records as u64,
        "the submitter waited for every write: {stats:?}"
    );
    for (i, ticket) in tickets.into_iter().enumerate() {
        let extent = ticket.wait().unwrap();
        assert_eq!(writer.get(extent).unwrap().payload, vec![i as u8; 100]);
    }
    // Batches coalesce: far fewer than one write per record.
    let stats = writer.stats();
    assert!(
        stats.batches < records as u64 / 2,
        "{} batches for {records} records",
        stats.batches
    );
    writer.check_invariants();
}

#[test]
fn device_errors_reach_the_tickets() {
    let device = shared_faulty(1024);
    let store = ExtentStore::create(Arc::clone(&device), config(CodecPolicy::None, 0)).unwrap();
    let data_start = store.layout().data_start;
    let writer = SpillWriter::new(store).unwrap();

    // A bad block and no spare, under records of one block each from
    // data_start.
    device
        .inject(Fault::WriteError {
            block: data_start + 2,
        })
        .unwrap();
    let tickets: Vec<_> = (0..5u8)
        .map(|i| writer.submit(vec![i; 300], meta(300)))
        .collect();
    writer.flush().unwrap();
    let outcomes: Vec<_> = tickets.into_iter().map(|t| t.wait()).collect();
    // The batch meets the bad block with no spare left and is refused as a
    // whole; the writer then puts its records one by one, and the store,
    // which now knows the block is bad, places them past it. Every ticket
    // succeeds; the figures record the bad block and the failed write.
    let expected: Vec<u64> = [0u64, 1, 3, 4, 5].iter().map(|i| data_start + i).collect();
    for (i, outcome) in outcomes.iter().enumerate() {
        let extent = outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("record {i}: {e}: {outcomes:?}"));
        assert_eq!(
            *extent,
            Extent {
                start: expected[i],
                len: 1
            },
            "{outcomes:?}"
        );
        assert_eq!(writer.get(*extent).unwrap().payload, vec![i as u8; 300]);
    }
    let stats = writer.with_store(|store| store.stats());
    assert_eq!(
        (
            stats.bad_blocks,
            stats.remaps,
            stats.spares_left,
            stats.write_errors
        ),
        (1, 0, 0, 1),
        "{stats:?}"
    );
    // The block stays set aside for the session even if the device
    // recovers: a block that failed once is not trusted again.
    device.clear_all();
    let later = writer.submit(vec![9u8; 300], meta(300)).wait().unwrap();
    assert_eq!(
        later,
        Extent {
            start: data_start + 6,
            len: 1
        }
    );
    device.clear_all();

    // Every operation fails: every ticket gets the device error, and the
    // commit reports it too.
    device.inject(Fault::ErrorAfterOps { ops: 0 }).unwrap();
    let tickets: Vec<_> = (0..3u8)
        .map(|i| writer.submit(vec![i; 700], meta(700)))
        .collect();
    for ticket in tickets {
        let outcome = ticket.wait();
        assert!(
            matches!(
                outcome,
                Err(WriterError::Store {
                    source: StoreError::Device {
                        source: DeviceError::InjectedFault { block: None, .. },
                        ..
                    }
                })
            ),
            "{outcome:?}"
        );
    }
    let commit = writer.commit();
    assert!(
        matches!(
            commit,
            Err(WriterError::Store {
                source: StoreError::Device { .. }
            })
        ),
        "{commit:?}"
    );
    let stats = writer.stats();
    assert_eq!(
        (stats.submitted, stats.written, stats.failed),
        (9, 6, 3),
        "{stats:?}"
    );
    device.clear_all();
    writer.check_invariants();
}

#[test]
fn a_bad_record_fails_alone_and_encoding_errors_reach_the_ticket() {
    let store = ExtentStore::create(
        MemDevice::new(512 * BLOCK_BYTES, BLOCK_BYTES).unwrap(),
        config(CodecPolicy::Small, 4),
    )
    .unwrap();
    let writer = SpillWriter::new(store).unwrap();
    let good = writer.submit(vec![1u8; 64], meta(64));
    let bad = writer.submit(
        vec![2u8; 64],
        RecordMeta {
            dtype: Dtype::F64,
            shape: vec![3],
        },
    );
    let after = writer.submit(vec![3u8; 64], meta(64));
    let bad = bad.wait();
    assert!(
        matches!(
            bad,
            Err(WriterError::Store {
                source: StoreError::Encode { .. }
            })
        ),
        "{bad:?}"
    );
    for (ticket, byte) in [(good, 1u8), (after, 3)] {
        let extent = ticket.wait().unwrap();
        assert_eq!(writer.get(extent).unwrap().payload, vec![byte; 64]);
    }
    let stats = writer.stats();
    assert_eq!((stats.written, stats.failed), (2, 1), "{stats:?}");
}

#[test]
fn drop_finishes_queued_writes_without_committing() {
    let device = shared_faulty(2048);
    let store = ExtentStore::create(Arc::clone(&device), config(CodecPolicy::Fast, 4)).unwrap();
    let writer = SpillWriter::new(store).unwrap();
    let committed = writer.submit(vec![7u8; 1000], meta(1000));
    writer.commit().unwrap();
    let committed = committed.wait().unwrap();
    let tickets: Vec<_> = (0..100u8)
        .map(|i| writer.submit(vec![i; 1000], meta(1000)))
        .collect();
    drop(writer);
    // Every ticket resolved during the drop.
    for ticket in tickets {
        assert!(ticket.is_ready());
        ticket.wait().unwrap();
    }
    // Nothing after the commit is durable: a crash leaves one record.
    device.crash().unwrap();
    device.recover();
    let store = ExtentStore::open(Arc::clone(&device), config(CodecPolicy::Fast, 4)).unwrap();
    assert_eq!(
        store.extents().collect::<Vec<_>>(),
        vec![committed],
        "{:?}",
        store.stats()
    );
    assert_eq!(store.get(committed).unwrap().payload, vec![7u8; 1000]);
}

#[test]
fn frees_and_reads_go_through_the_writer() {
    let store = ExtentStore::create(
        MemDevice::new(512 * BLOCK_BYTES, BLOCK_BYTES).unwrap(),
        config(CodecPolicy::None, 4),
    )
    .unwrap();
    let writer = SpillWriter::new(store).unwrap();
    let extents: Vec<Extent> = (0..4u8)
        .map(|i| writer.submit(vec![i; 10], meta(10)))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.wait().unwrap())
        .collect();
    writer.free(extents[1]).unwrap();
    assert!(matches!(
        writer.free(extents[1]),
        Err(StoreError::NotAllocated { .. })
    ));
    let results = writer.get_many(&extents);
    assert!(matches!(results[1], Err(StoreError::NotAllocated { .. })));
    assert_eq!(results[2].as_ref().unwrap().payload, vec![2u8; 10]);
    assert_eq!(writer.with_store(|store| store.stats().records), 3);
    writer.flush().unwrap();
    let store = writer.into_store();
    store.check_invariants();
    assert_eq!(store.extents().count(), 3);
}
