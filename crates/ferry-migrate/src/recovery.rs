//! Finishing a post-copy migration whose link failed.
//!
//! After such a failure the guest is paused on the destination, which holds every page it received
//! (its RAM is still registered with userfaultfd, so a missing page can never read as zero), and the
//! source holds every page, paused too. Nothing runs, nothing is lost. Recovery is one new
//! connection with the interrupted migration's id:
//!
//! ```text
//! source                                        destination (paused, waiting)
//!   | -- Hello(RECOVER, same id) -------------->|  any other id is refused
//!   | <----------------------------- HelloAck --|
//!   | <------------------------------ Missing --|  bitmap of the pages it still lacks
//!   | -- Pages ... ---------------------------->|  placed atomically, as in post-copy
//!   | -- Complete(digest of the source's RAM) ->|  every page there? RAM digest equal?
//!   | <---------------------------------- Done --|  then, and only then, the guest runs again
//! ```
//!
//! Until `Done` the guest stays paused on both sides, so a failed recovery can be retried.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ferry_model::bitmap::DirtyBitmap;
use ferry_vmm::PAGE_SIZE;
use ferry_wire::codec::{BatchDecoder, BatchEncoder};
use ferry_wire::message::{self, channel_key, features, Hello, HelloAck, RoundSummary};
use ferry_wire::FrameType;

use crate::channel::{split, Stream};
use crate::digest::{digest_memory, hex};
use crate::postcopy;
use crate::report::Report;
use crate::sink::{accept_channel, refuse, DoneReport, ReceiveOptions, Recovery, ScratchStore};
use crate::source::{send_pages, SourceOptions, BATCH_PAGES};
use crate::vm::{MigrationSink, MigrationSource};
use crate::MigrateError;

/// What the destination saw of a completed recovery.
#[derive(Clone, Copy, Debug)]
pub struct Recovered {
    /// Pages that arrived over the recovery connection.
    pub pages: u64,
    /// Whether the RAM digest matched the source's (None if the source did not ask).
    pub digest_match: Option<bool>,
}

/// Destination: accepts one recovery connection for `rec`, takes the missing pages, checks them and
/// resumes the guest. On error the guest stays paused and `rec` can be used again.
pub fn recover_in<K: MigrationSink>(
    accept: &mut dyn FnMut() -> std::io::Result<Stream>,
    sink: &mut K,
    rec: &Recovery,
    opts: &ReceiveOptions,
) -> Result<Recovered, MigrateError> {
    let (mut r, mut w, hello) = accept_channel(accept, opts, Some((&rec.id, 0)))?;
    if hello.features & features::RECOVER == 0 {
        let why = "this host waits to finish an interrupted post-copy, not for a new migration";
        refuse(&mut w, why);
        return Err(MigrateError::Refused(why.into()));
    }
    let shared = &rec.shared;
    let pc = shared
        .postcopy
        .get()
        .ok_or_else(|| MigrateError::Config("no interrupted post-copy here".into()))?;
    let missing = pc.missing();
    w.send(
        FrameType::Missing,
        0,
        &postcopy::encode_start(0, &missing, &[]),
    )?;
    let mut decoder = BatchDecoder::new();
    let mut scratch = ScratchStore::new(shared.mem.pages());
    let before = pc.arrived_count.load(Ordering::SeqCst);
    loop {
        let (h, p) = r.recv("post-copy recovery")?;
        match h.kind {
            FrameType::Pages => {
                decoder.decode(p, &mut scratch)?;
                pc.place(&scratch, &shared.hashes)?;
                scratch.clear();
            }
            FrameType::Complete => {
                let summary = RoundSummary::decode(p)?;
                let (want, got) = (pc.needed.count(), pc.arrived_count.load(Ordering::SeqCst));
                if got != want {
                    let why = format!("recovery ended with {got} of {want} pages");
                    refuse(&mut w, &why);
                    return Err(MigrateError::Config(why));
                }
                pc.target.disarm()?;
                let digest_match =
                    (h.flags & 1 != 0).then(|| shared.hashes.digest() == summary.digest);
                if digest_match == Some(false) {
                    // Keep it paused: a guest with wrong memory must not run.
                    refuse(&mut w, "RAM digest differs after recovery");
                    return Err(MigrateError::Config(
                        "RAM digest differs after recovery; the guest stays paused".into(),
                    ));
                }
                shared.running.store(true, Ordering::SeqCst);
                sink.resume()?;
                let done = DoneReport {
                    digest_match,
                    guest_observed: None,
                };
                let _ = w.send(FrameType::Done, 0, &done.encode());
                return Ok(Recovered {
                    pages: got - before,
                    digest_match,
                });
            }
            got => {
                return Err(MigrateError::Unexpected {
                    got,
                    during: "post-copy recovery",
                })
            }
        }
    }
}

/// Source: reconnects to the destination of the interrupted post-copy `opts.migration_id` and
/// sends it the pages it still lacks. The source's guest stays paused (it runs on the destination
/// from here); on error nothing changed and recovery can be tried again.
pub fn recover_out<S: MigrationSource>(
    src: &mut S,
    connect: &dyn Fn() -> std::io::Result<Stream>,
    opts: &SourceOptions,
) -> Result<Report, MigrateError> {
    let id = opts.migration_id.ok_or_else(|| {
        MigrateError::Config("recovery needs the id of the interrupted migration".into())
    })?;
    let t0 = Instant::now();
    let mem = src.memory();
    let stream = connect().map_err(MigrateError::io("cannot connect to the destination"))?;
    stream.prepare(opts.timeout)?;
    let (mut r, mut w) = split(stream, 0)?;
    let hello = Hello {
        min_version: message::MIN_PROTOCOL_VERSION,
        max_version: message::PROTOCOL_VERSION,
        features: features::ALL | features::RECOVER,
        migration_id: id,
        channel: 0,
        channels: 1,
    };
    w.send(FrameType::Hello, 0, &hello.encode())?;
    let ack = HelloAck::decode(r.expect(FrameType::HelloAck, "recovery handshake")?)?;
    if let Some(why) = ack.refusal {
        return Err(MigrateError::Refused(why));
    }
    let key = channel_key(&id, 0);
    r.set_key(key);
    w.set_key(key);
    let (_, missing, _) = postcopy::decode_start(
        r.expect(
            FrameType::Missing,
            "recovery (waiting for the missing pages)",
        )?,
        mem.pages(),
    )?;
    let missing: DirtyBitmap = missing;
    let mut enc = BatchEncoder::new(opts.encoder);
    // The destination's copies of these pages are gone: deltas against them would be wrong.
    enc.disable_xbzrle();
    let (mut buf, mut out) = (Vec::new(), Vec::with_capacity(BATCH_PAGES * PAGE_SIZE));
    let pages: Vec<u64> = missing.iter().collect();
    for batch in pages.chunks(BATCH_PAGES) {
        send_pages(&*mem, &mut w, &mut enc, batch, &mut buf, &mut out)?;
    }
    let digest = if opts.verify {
        digest_memory(&*mem)
    } else {
        [0; 16]
    };
    let summary = RoundSummary {
        round: 0,
        pages: pages.len() as u64,
        digest,
    };
    w.send(
        FrameType::Complete,
        u8::from(opts.verify),
        &summary.encode(),
    )?;
    let done = DoneReport::decode(r.expect(FrameType::Done, "recovery (verification)")?)?;
    let mem: Arc<dyn crate::GuestMemory> = mem;
    Ok(Report {
        strategy: "postcopy-recovery".into(),
        strategy_used: "postcopy-recovery".into(),
        ram_bytes: mem.pages() * PAGE_SIZE as u64,
        total_ms: t0.elapsed().as_secs_f64() * 1e3,
        bytes_sent: w.bytes + r.bytes,
        pages_sent: pages.len() as u64,
        channels: 1,
        source_digest: if opts.verify {
            hex(&digest)
        } else {
            String::new()
        },
        digest_match: done.digest_match,
        postcopy_pages: pages.len() as u64,
        ..Report::default()
    })
}
