//! The receiving side: one thread per channel applies pages; the main thread walks the switch-over
//! states (waiting for state, loaded, running, verified). Until `Go` arrives nothing runs here, and
//! any failure drops the half-built VM while the source resumes its own. In post-copy the guest runs
//! here before every page has arrived; if the link then fails, the VM is paused and kept.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferry_model::bitmap::{AtomicBitmap, DirtyBitmap};
use ferry_vmm::PAGE_SIZE;
use ferry_wire::codec::{BatchDecoder, CodecError, PageStore, MAX_BATCH_PAGES};
use ferry_wire::message::{
    self, channel_key, features, Hello, HelloAck, RoundSummary, VmConfig, PROTOCOL_VERSION,
};
use ferry_wire::{FrameType, WireError, PAGES_PAUSED};

use crate::channel::{split, FrameReader, FrameWriter, Received, RunTarget, Stream};
use crate::digest::PageHashes;
use crate::memory::{GuestMemory, RamStore};
use crate::postcopy::{self, PostcopyTarget};
use crate::vm::{GuestObserved, MigrationSink, SinkFactory};
use crate::MigrateError;

/// How to receive.
#[derive(Clone, Debug)]
pub struct ReceiveOptions {
    /// How long the source may stay silent.
    pub timeout: Duration,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
        }
    }
}

/// A VM that arrived and runs here.
pub struct Incoming<K> {
    /// The VM.
    pub sink: K,
    /// Whether the RAM digest matched the source's (None if the source did not ask).
    pub digest_match: Option<bool>,
    /// The pause as the guest saw it.
    pub guest_observed: Option<GuestObserved>,
    /// Bytes received.
    pub bytes: u64,
    /// Time from the first frame to running, in ms.
    pub total_ms: f64,
    /// Set when a post-copy link failed: the VM is paused here, waiting for pages the source keeps.
    pub postcopy_incomplete: Option<String>,
    /// What finishing that post-copy needs ([`crate::recovery::recover_in`]).
    pub recovery: Option<Recovery>,
}

/// An interrupted post-copy, kept so the source can reconnect and send the pages still missing.
pub struct Recovery {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: [u8; 16],
}

impl Recovery {
    /// Pages the destination still lacks.
    pub fn missing_pages(&self) -> u64 {
        self.shared.postcopy.get().map_or(0, |pc| {
            pc.needed.count() - pc.arrived_count.load(Ordering::SeqCst)
        })
    }
}

/// The destination's final word to the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoneReport {
    /// Digest comparison result, if one was asked for.
    pub digest_match: Option<bool>,
    /// Guest-observed pause, if seen yet.
    pub guest_observed: Option<GuestObserved>,
}

impl DoneReport {
    /// Encodes the Done payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut flags = 0u8;
        if let Some(m) = self.digest_match {
            flags |= 1 | (u8::from(m) << 1);
        }
        let g = self.guest_observed.unwrap_or_default();
        if self.guest_observed.is_some() {
            flags |= 4 | (u8::from(g.sequence_continues) << 3);
        }
        let mut v = vec![flags];
        v.extend_from_slice(&g.gap_ns.to_le_bytes());
        v.extend_from_slice(&g.after_max_gap_ns.to_le_bytes());
        v
    }

    /// Decodes the Done payload.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        if b.len() != 17 {
            return Err(WireError::Malformed("Done payload must be 17 bytes"));
        }
        let f = b[0];
        let word = |i: usize| -> Result<u64, WireError> {
            Ok(u64::from_le_bytes(
                b[i..i + 8]
                    .try_into()
                    .map_err(|_| WireError::Malformed("Done"))?,
            ))
        };
        Ok(Self {
            digest_match: (f & 1 != 0).then_some(f & 2 != 0),
            guest_observed: (f & 4 != 0).then_some(GuestObserved {
                gap_ns: word(1)?,
                sequence_continues: f & 8 != 0,
                after_max_gap_ns: word(9)?,
            }),
        })
    }
}

enum Msg {
    RoundEnd(usize, u32),
    DeviceState(u32, Vec<u8>),
    /// Round, pages still needed, device state, and whether Go is implied (see
    /// [`postcopy::START_RUNS`]).
    PostcopyStart(u32, DirtyBitmap, Vec<u8>, bool),
    Discard(DirtyBitmap),
    Go,
    Complete(RoundSummary, bool),
    Failed(MigrateError),
    Closed,
}

/// Post-copy bookkeeping shared by the page pump and the fault handler.
pub(crate) struct Postcopy {
    pub(crate) target: Arc<dyn PostcopyTarget>,
    /// Pages the source still had to send when the guest started here.
    pub(crate) needed: DirtyBitmap,
    /// Needed pages that have arrived (no lock: the fault thread reads it while pumps set it).
    pub(crate) arrived: AtomicBitmap,
    pub(crate) arrived_count: AtomicU64,
    /// Faulted pages requested and not yet arrived, with when they were asked for.
    pub(crate) waiting: Mutex<Vec<(u64, Instant)>>,
    /// How long faults waited for their page (for the debug log at the end).
    pub(crate) fault_wait: Mutex<FaultWait>,
}

/// How long the guest's faults waited for pages requested from the source.
#[derive(Debug, Default)]
pub(crate) struct FaultWait {
    /// Faults served by a request.
    pub(crate) count: u64,
    /// Longest wait.
    pub(crate) max: Duration,
    /// Waits of over 1 ms.
    pub(crate) over_1ms: u64,
}

impl Postcopy {
    /// Installs decoded pages and counts the needed ones that are new.
    pub(crate) fn place(
        &self,
        scratch: &ScratchStore,
        hashes: &PageHashes,
    ) -> Result<(), MigrateError> {
        // Consecutive pages go in with one system call (pushed batches are sorted).
        for (first, run) in scratch.runs() {
            self.target.place(first, run)?;
        }
        for (gfn, data) in scratch.pages() {
            hashes.set(gfn, data);
            let fresh = self.arrived.test_and_set(gfn);
            if fresh && self.needed.get(gfn) {
                self.arrived_count.fetch_add(1, Ordering::SeqCst);
                self.served(gfn);
            }
        }
        Ok(())
    }

    /// Notes how long a requested page kept its fault waiting.
    fn served(&self, gfn: u64) {
        let Ok(mut w) = self.waiting.try_lock() else {
            return;
        };
        if let Some(i) = w.iter().position(|&(p, _)| p == gfn) {
            let waited = w.swap_remove(i).1.elapsed();
            if let Ok(mut f) = self.fault_wait.lock() {
                f.count += 1;
                f.max = f.max.max(waited);
                f.over_1ms += u64::from(waited > Duration::from_millis(1));
            }
        }
    }

    /// Pages still missing.
    pub(crate) fn missing(&self) -> DirtyBitmap {
        let mut m = self.needed.clone();
        m.and_not(&self.arrived.snapshot());
        m
    }
}

/// What every channel's thread shares.
pub(crate) struct Shared {
    pub(crate) mem: Arc<dyn GuestMemory>,
    pub(crate) hashes: PageHashes,
    pub(crate) running: AtomicBool,
    pub(crate) postcopy: OnceLock<Postcopy>,
}

/// Receives one VM: `accept` yields the source's connections (one per channel).
pub fn receive<F: SinkFactory>(
    accept: &mut dyn FnMut() -> std::io::Result<Stream>,
    factory: &mut F,
    opts: &ReceiveOptions,
) -> Result<Incoming<F::Sink>, MigrateError> {
    let (mut r0, mut w0, hello) = accept_channel(accept, opts, None)?;
    let channels = if hello.channels == 0 {
        // The source picks the count once this handshake has timed the link.
        let p = r0.expect(FrameType::Channels, "handshake")?;
        let n = message::decode_channel_count(p)?;
        if n == 0 || n > crate::source::MAX_CHANNELS {
            return Err(WireError::Malformed("channel count out of range").into());
        }
        n
    } else {
        hello.channels
    };
    let mut readers = vec![];
    for ch in 1..channels {
        let (r, _w, _) = accept_channel(accept, opts, Some((&hello.migration_id, ch)))?;
        readers.push(r);
    }
    let t0 = Instant::now();
    let (h, p) = r0.recv("configuration")?;
    if h.kind != FrameType::VmConfig {
        return Err(MigrateError::Unexpected {
            got: h.kind,
            during: "configuration",
        });
    }
    let cfg = VmConfig::decode(p)?;
    let mut sink = if h.flags & 1 != 0 {
        // Same host: the source hands its RAM over as a file; nothing will be copied.
        let memory = r0
            .stream()
            .recv_fd()
            .map_err(MigrateError::io("receiving guest memory"))?;
        factory.create_shared(&cfg, memory)?
    } else {
        factory.create(&cfg)?
    };
    w0.send(FrameType::VmConfig, 0, &cfg.encode())?; // built: the source may start copying
    let mem = sink.memory();
    let shared = Arc::new(Shared {
        hashes: PageHashes::new(mem.pages()),
        mem,
        running: AtomicBool::new(false),
        postcopy: OnceLock::new(),
    });
    let w0 = Arc::new(Mutex::new(w0));
    let (tx, rx) = channel();
    readers.insert(0, r0);
    let channels = readers.len();
    let scaling = hello.features & features::CHANNEL_SCALING != 0;
    let mut pumps = Vec::new();
    for (ch, mut r) in readers.into_iter().enumerate() {
        let (tx, shared) = (tx.clone(), shared.clone());
        pumps.push(std::thread::spawn(move || {
            if let Err(e) = pump(ch, channels, scaling, &mut r, &shared, &tx) {
                let _ = tx.send(Msg::Failed(e));
            }
            r.bytes
        }));
    }
    drop(tx);
    let mut state = SwitchOver {
        sink: &mut sink,
        w0: &w0,
        shared: &shared,
        t0,
        total_ms: 0.0,
    };
    let outcome = state.run(&rx, channels);
    let total_ms = state.total_ms;
    match outcome {
        Ok(end) => {
            let bytes = if end.postcopy_incomplete.is_none() {
                // The source closes its end after Done; collect what the pumps counted.
                pumps.into_iter().filter_map(|h| h.join().ok()).sum::<u64>()
            } else {
                0
            } + w0.lock().map(|w| w.bytes).unwrap_or(0);
            let guest_observed = sink.guest_observed();
            let recovery = end.postcopy_incomplete.is_some().then(|| Recovery {
                shared: shared.clone(),
                id: hello.migration_id,
            });
            Ok(Incoming {
                sink,
                digest_match: end.digest_match,
                guest_observed,
                bytes,
                total_ms,
                recovery,
                postcopy_incomplete: end.postcopy_incomplete,
            })
        }
        Err(e) => {
            if let Ok(mut w) = w0.lock() {
                let _ = w.send(FrameType::Abort, 0, &message::encode_reason(&e.to_string()));
                w.stream().shutdown();
            }
            Err(e)
        }
    }
}

pub(crate) fn accept_channel(
    accept: &mut dyn FnMut() -> std::io::Result<Stream>,
    opts: &ReceiveOptions,
    expect: Option<(&[u8; 16], u16)>,
) -> Result<(FrameReader, FrameWriter, Hello), MigrateError> {
    let stream = accept().map_err(MigrateError::io("accepting a migration connection"))?;
    stream.prepare(opts.timeout)?;
    let unix = stream.is_unix();
    let (mut r, mut w) = split(stream, 0)?;
    let hello = match r
        .expect(FrameType::Hello, "handshake")
        .and_then(|p| Ok(Hello::decode(p)?))
    {
        Ok(h) => h,
        Err(e) => {
            refuse(&mut w, &e.to_string());
            return Err(e);
        }
    };
    let refusal = match (hello.negotiate_version(), expect) {
        (Err(e), _) => Some(e.to_string()),
        (Ok(_), Some((id, ch))) if &hello.migration_id != id || hello.channel != ch => {
            Some("channel does not belong to the migration in progress".to_string())
        }
        (Ok(_), None) if hello.channel != 0 => Some("first channel must be channel 0".to_string()),
        _ => None,
    };
    if let Some(why) = refusal {
        refuse(&mut w, &why);
        return Err(MigrateError::Refused(why));
    }
    let ack = HelloAck {
        version: PROTOCOL_VERSION,
        // RAM travels as a file only between processes on one host.
        features: hello.features
            & features::ALL
            & if unix {
                u64::MAX
            } else {
                !features::FD_HANDOVER
            },
        refusal: None,
    };
    w.send(FrameType::HelloAck, 0, &ack.encode())?;
    let key = channel_key(&hello.migration_id, hello.channel);
    r.set_key(key);
    w.set_key(key);
    Ok((r, w, hello))
}

pub(crate) fn refuse(w: &mut FrameWriter, why: &str) {
    let ack = HelloAck {
        version: PROTOCOL_VERSION,
        features: 0,
        refusal: Some(why.to_string()),
    };
    let _ = w.send(FrameType::HelloAck, 0, &ack.encode());
}

/// Applies frames of one channel until the source closes it.
fn pump(
    ch: usize,
    channels: usize,
    scaling: bool,
    r: &mut FrameReader,
    shared: &Shared,
    tx: &Sender<Msg>,
) -> Result<(), MigrateError> {
    // Bulk pages yield to the guests running on this host until they are on the downtime path:
    // a page sent while the source is paused, or (channel 0, which also carries the control
    // frames and the pages a post-copy guest waits for) the switch-over's first frame.
    let mut bulk = crate::priority::Bulk::enter();
    let mut decoder = BatchDecoder::new();
    let mut store = RamStore::new(shared.mem.clone());
    let mut scratch = ScratchStore::new(shared.mem.pages());
    let mut idle = None;
    let mut crcs = Vec::new();
    let mut run_target = RunTarget {
        mem: &*shared.mem,
        channel: ch as u64,
        channels: channels as u64,
    };
    loop {
        // Page runs land in place only while the guest cannot run here: once post-copy starts or
        // the VM runs, a run is a protocol error (the source sends none then).
        let before_guest =
            shared.postcopy.get().is_none() && !shared.running.load(Ordering::SeqCst);
        let got = r.recv_or_run(
            "page transfer",
            before_guest.then_some(&run_target),
            &mut crcs,
        );
        let (h, p) = match got {
            Ok(Received::Frame(h, p)) => (h, p),
            Ok(Received::Run(run, flags)) => {
                if flags & PAGES_PAUSED != 0 {
                    bulk.restore();
                }
                bulk.progress(u64::from(run.count) * ferry_vmm::PAGE_SIZE as u64);
                for (i, &c) in crcs.iter().enumerate() {
                    shared.hashes.set_crc(run.first + i as u64, c);
                }
                continue;
            }
            Err(MigrateError::PeerClosed(_)) => {
                let _ = tx.send(Msg::Closed);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if h.kind == FrameType::Pages {
            if h.flags & PAGES_PAUSED != 0 {
                bulk.restore();
            }
            bulk.progress(p.len() as u64);
        }
        match h.kind {
            FrameType::Pages => match shared.postcopy.get() {
                Some(pc) => {
                    if ch != 0 {
                        // The background push: let the guest and the requested pages (channel 0)
                        // have the CPU first, and stay below them afterwards.
                        idle.get_or_insert_with(|| {
                            crate::priority::background();
                            crate::priority::IdleWindow::enter()
                        })
                        .tick();
                    }
                    // The guest may be running: pages go in atomically, through the fault tracker.
                    decoder.decode(p, &mut scratch)?;
                    pc.place(&scratch, &shared.hashes)?;
                    scratch.clear();
                }
                None if shared.running.load(Ordering::SeqCst) => {
                    return Err(MigrateError::Unexpected {
                        got: h.kind,
                        during: "post-switch-over (the VM runs)",
                    })
                }
                None => {
                    decoder.decode(p, &mut store)?;
                    store.record_hashes(Some(&shared.hashes));
                }
            },
            FrameType::RoundEnd => {
                let _ = tx.send(Msg::RoundEnd(ch, RoundSummary::decode(p)?.round));
            }
            // How many channels carry the pages that follow (the source changes it only between
            // acknowledged rounds, so no page is in flight on two channels).
            FrameType::Channels if scaling => {
                let n = message::decode_channel_count(p)?;
                if n == 0 || usize::from(n) > channels {
                    return Err(
                        WireError::Malformed("more channels carrying pages than opened").into(),
                    );
                }
                run_target.channels = u64::from(n);
            }
            FrameType::DeviceState if ch == 0 => {
                bulk.restore();
                if p.len() < 4 {
                    return Err(WireError::Malformed("device state frame too short").into());
                }
                let round = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                let _ = tx.send(Msg::DeviceState(round, p[4..].to_vec()));
            }
            FrameType::Discard if ch == 0 => {
                bulk.restore();
                let (_, pages, _) = postcopy::decode_start(p, shared.mem.pages())?;
                let _ = tx.send(Msg::Discard(pages));
            }
            FrameType::PostcopyStart if ch == 0 => {
                bulk.restore();
                if channels > 1 {
                    // From now on this channel carries only control frames and the pages the
                    // running guest faulted on (alone, it would carry the whole push too).
                    crate::priority::urgent();
                }
                let (round, needed, state) = postcopy::decode_start(p, shared.mem.pages())?;
                let runs = h.flags & postcopy::START_RUNS != 0;
                let _ = tx.send(Msg::PostcopyStart(round, needed, state.to_vec(), runs));
            }
            FrameType::Go if ch == 0 => {
                bulk.restore();
                let _ = tx.send(Msg::Go);
            }
            FrameType::Complete if ch == 0 => {
                let _ = tx.send(Msg::Complete(RoundSummary::decode(p)?, h.flags & 1 != 0));
            }
            other => {
                return Err(MigrateError::Unexpected {
                    got: other,
                    during: "page transfer",
                })
            }
        }
    }
}

/// Decoded pages of one post-copy batch, held until they are placed atomically.
pub(crate) struct ScratchStore {
    pages: u64,
    data: Vec<u8>,
    gfns: Vec<u64>,
}

impl ScratchStore {
    pub(crate) fn new(pages: u64) -> Self {
        Self {
            pages,
            data: vec![0; MAX_BATCH_PAGES * PAGE_SIZE],
            gfns: Vec::with_capacity(MAX_BATCH_PAGES),
        }
    }
    fn pages(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.gfns
            .iter()
            .enumerate()
            .map(|(i, &g)| (g, &self.data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]))
    }
    /// Maximal runs of consecutive page numbers held in consecutive slots: (first page, bytes).
    fn runs(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let mut i = 0;
        std::iter::from_fn(move || {
            let first = *self.gfns.get(i)?;
            let start = i;
            i += 1;
            while self.gfns.get(i) == Some(&(first + (i - start) as u64)) {
                i += 1;
            }
            Some((first, &self.data[start * PAGE_SIZE..i * PAGE_SIZE]))
        })
    }
    pub(crate) fn clear(&mut self) {
        self.gfns.clear();
    }
}

impl PageStore for ScratchStore {
    fn page_mut(&mut self, gfn: u64) -> Result<&mut [u8], CodecError> {
        if gfn >= self.pages {
            return Err(CodecError::GfnOutOfRange(gfn));
        }
        // The decoder asks twice per page (check, then write): answer with the same slot.
        let i = match self.gfns.iter().rposition(|&g| g == gfn) {
            Some(i) => i,
            None if self.gfns.len() < MAX_BATCH_PAGES => {
                self.gfns.push(gfn);
                self.gfns.len() - 1
            }
            None => return Err(CodecError::BadPageCount(self.gfns.len() + 1)),
        };
        Ok(&mut self.data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE])
    }
}

/// Sets a flag when dropped (stops the fault server however the switch-over ends).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Resolves guest faults on missing pages: zero pages at once (the source said they are zero),
/// the rest by asking the source, which serves such requests ahead of its background push.
fn serve_faults(shared: &Shared, w0: &Mutex<FrameWriter>, stop: &AtomicBool) {
    let Some(pc) = shared.postcopy.get() else {
        return;
    };
    let zero = [0u8; PAGE_SIZE];
    while !stop.load(Ordering::SeqCst) {
        let page = match pc.target.next_fault(Duration::from_millis(20)) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("post-copy fault handling stopped: {e}");
                return;
            }
        };
        let result = if !pc.needed.get(page) {
            pc.target.place(page, &zero)
        } else if !pc.arrived.get(page) {
            // Statistics only: never wait for a pump that holds the list.
            if let Ok(mut w) = pc.waiting.try_lock() {
                w.push((page, Instant::now()));
            }
            w0.lock()
                .map_err(|_| MigrateError::Config("writer lock poisoned".into()))
                .and_then(|mut w| {
                    w.send(
                        FrameType::PageRequest,
                        0,
                        &message::encode_page_request(&[page]),
                    )
                })
        } else {
            Ok(()) // arrived meanwhile; placing it woke the guest
        };
        if let Err(e) = result {
            tracing::warn!("post-copy fault on page {page}: {e}");
        }
    }
}

/// How a receive ended (the VM runs here, or waits for pages, paused).
struct Finish {
    digest_match: Option<bool>,
    postcopy_incomplete: Option<String>,
}

/// The destination's switch-over states: waiting for state, loaded, running, verified.
struct SwitchOver<'a, K> {
    sink: &'a mut K,
    w0: &'a Arc<Mutex<FrameWriter>>,
    shared: &'a Arc<Shared>,
    t0: Instant,
    total_ms: f64,
}

impl<K: MigrationSink> SwitchOver<'_, K> {
    fn send(&self, kind: FrameType, payload: &[u8]) -> Result<(), MigrateError> {
        self.w0
            .lock()
            .map_err(|_| MigrateError::Config("writer lock poisoned".into()))?
            .send(kind, 0, payload)
    }

    fn run(&mut self, rx: &Receiver<Msg>, channels: usize) -> Result<Finish, MigrateError> {
        let mut last_round: Vec<Option<u32>> = vec![None; channels];
        let mut pending: Option<(u32, Vec<u8>, Option<DirtyBitmap>)> = None;
        let mut loaded = false;
        let mut acked: Option<u32> = None;
        // Post-copy preparation done while the source still runs (see FrameType::Discard).
        let mut early_target: Option<Arc<dyn PostcopyTarget>> = None;
        let mut discarded: Option<DirtyBitmap> = None;
        let faults_stop = Arc::new(AtomicBool::new(false));
        let _stop_on_exit = StopOnDrop(faults_stop.clone());
        let running = || self.shared.running.load(Ordering::SeqCst);
        let mut go_implied = false;
        loop {
            // No timeout here: each channel's socket times out on a silent source and reports it;
            // a long round (a slow or rate-limited link) sends nothing to this loop for a while.
            let msg = rx
                .recv()
                .unwrap_or(Msg::Failed(MigrateError::PeerClosed("transfer")));
            match msg {
                Msg::RoundEnd(ch, r) => {
                    last_round[ch] = Some(r);
                    // Acknowledge a round once every channel has applied it (the source times its
                    // rounds, and decides when to pause, by these).
                    if acked.is_none_or(|a| r > a)
                        && last_round.iter().all(|l| l.is_some_and(|l| l >= r))
                    {
                        acked = Some(r);
                        let ack = RoundSummary {
                            round: r,
                            pages: 0,
                            digest: [0; 16],
                        };
                        self.send(FrameType::RoundEnd, &ack.encode())?;
                    }
                }
                Msg::DeviceState(r, s) => pending = Some((r, s, None)),
                Msg::PostcopyStart(r, needed, s, runs) => {
                    go_implied = runs;
                    pending = Some((r, s, Some(needed)));
                }
                Msg::Discard(pages) if !loaded => {
                    let target = match &early_target {
                        Some(t) => t.clone(),
                        None => early_target.insert(self.sink.postcopy_target()?).clone(),
                    };
                    target.discard(&pages)?;
                    discarded
                        .get_or_insert_with(|| DirtyBitmap::new(pages.pages()))
                        .or(&pages);
                    self.send(FrameType::Discard, &[])?; // done: the source may pause now
                }
                Msg::Discard(_) => {
                    return Err(MigrateError::Unexpected {
                        got: FrameType::Discard,
                        during: "post-switch-over",
                    })
                }
                Msg::Go if loaded && !go_implied => self.run_here()?,
                Msg::Go => {
                    return Err(MigrateError::Unexpected {
                        got: FrameType::Go,
                        during: "switch-over (state not loaded)",
                    })
                }
                Msg::Complete(summary, verify) => {
                    if !running() {
                        return Err(MigrateError::Unexpected {
                            got: FrameType::Complete,
                            during: "switch-over",
                        });
                    }
                    if let Some(pc) = self.shared.postcopy.get() {
                        // Pages pushed on another channel may still be landing: wait for them.
                        let want = pc.needed.count();
                        let deadline = Instant::now() + Duration::from_secs(30);
                        while pc.arrived_count.load(Ordering::SeqCst) < want
                            && Instant::now() < deadline
                        {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        let got = pc.arrived_count.load(Ordering::SeqCst);
                        if got != want {
                            return Err(MigrateError::Config(format!(
                                "post-copy ended with {got} of {want} pages"
                            )));
                        }
                        faults_stop.store(true, Ordering::SeqCst);
                        pc.target.disarm()?;
                        if let Ok(f) = pc.fault_wait.lock() {
                            tracing::debug!(
                                faults = f.count,
                                max = ?f.max,
                                over_1ms = f.over_1ms,
                                "post-copy: how long faults waited for requested pages"
                            );
                        }
                    }
                    let digest_match =
                        verify.then(|| self.shared.hashes.digest() == summary.digest);
                    // Give the guest a moment to show its first heartbeat here.
                    let deadline = Instant::now() + Duration::from_millis(500);
                    while self.sink.guest_observed().is_none() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    let done = DoneReport {
                        digest_match,
                        guest_observed: self.sink.guest_observed(),
                    };
                    let _ = self.send(FrameType::Done, &done.encode());
                    return Ok(Finish {
                        digest_match,
                        postcopy_incomplete: None,
                    });
                }
                Msg::Failed(e) if !running() => return Err(e),
                Msg::Closed if !running() => {
                    return Err(MigrateError::PeerClosed("transfer (before switch-over)"))
                }
                Msg::Failed(e) if self.shared.postcopy.get().is_some() => {
                    return self.postcopy_lost(&e.to_string())
                }
                Msg::Closed if self.shared.postcopy.get().is_some() => {
                    return self.postcopy_lost("source closed")
                }
                Msg::Failed(e) => {
                    tracing::warn!("link failed after switch-over ({e}); the VM runs here");
                    return Ok(Finish {
                        digest_match: None,
                        postcopy_incomplete: None,
                    });
                }
                Msg::Closed => {
                    tracing::warn!("source closed before verification; the VM runs here");
                    return Ok(Finish {
                        digest_match: None,
                        postcopy_incomplete: None,
                    });
                }
            }
            if !loaded {
                if let Some((r, state, needed)) = &pending {
                    if last_round.iter().all(|l| l.is_some_and(|l| l >= *r)) {
                        let t = Instant::now();
                        if let Some(needed) = needed {
                            let target = match early_target.take() {
                                Some(t) => t,
                                None => self.sink.postcopy_target()?,
                            };
                            // Only pages this host still holds need dropping: those discarded
                            // before the pause are gone already, and in pure post-copy nothing
                            // arrived at all. Punching holes run by run is what costs here.
                            let mut stale = needed.clone();
                            match &discarded {
                                Some(d) => stale.and_not(d),
                                None => {
                                    if let Some(present) = self.shared.mem.data_pages() {
                                        stale.and(&present);
                                    }
                                }
                            }
                            target.discard(&stale)?;
                            tracing::debug!(
                                us = t.elapsed().as_micros() as u64,
                                stale = stale.count(),
                                "post-copy: stale pages dropped"
                            );
                            target.arm()?;
                            tracing::debug!(
                                us = t.elapsed().as_micros() as u64,
                                "post-copy: armed"
                            );
                            let pc = Postcopy {
                                target,
                                needed: needed.clone(),
                                arrived: AtomicBitmap::new(needed.pages()),
                                arrived_count: AtomicU64::new(0),
                                waiting: Mutex::new(Vec::new()),
                                fault_wait: Mutex::new(FaultWait::default()),
                            };
                            let _ = self.shared.postcopy.set(pc);
                            // Serving faults from before the resume: the guest's first access
                            // must not wait for a thread to start.
                            let (shared, w0, stop) =
                                (self.shared.clone(), self.w0.clone(), faults_stop.clone());
                            std::thread::spawn(move || {
                                crate::priority::urgent();
                                serve_faults(&shared, &w0, &stop)
                            });
                        }
                        self.sink.restore_state(state)?;
                        tracing::debug!(us = t.elapsed().as_micros() as u64, "state restored");
                        loaded = true;
                        if go_implied {
                            self.run_here()?;
                        } else {
                            self.send(FrameType::Ready, &[])?;
                        }
                    }
                }
            }
        }
    }

    /// Resumes the VM here and tells the source.
    fn run_here(&mut self) -> Result<(), MigrateError> {
        self.shared.running.store(true, Ordering::SeqCst);
        self.sink.resume()?;
        self.total_ms = self.t0.elapsed().as_secs_f64() * 1e3;
        self.send(FrameType::Running, &[]).ok();
        Ok(())
    }

    /// The link died while the guest still needs pages from the source: pause it here and keep it.
    fn postcopy_lost(&mut self, why: &str) -> Result<Finish, MigrateError> {
        self.sink.pause()?;
        let missing = self
            .shared
            .postcopy
            .get()
            .map(|pc| pc.needed.count() - pc.arrived_count.load(Ordering::SeqCst))
            .unwrap_or(0);
        Ok(Finish {
            digest_match: None,
            postcopy_incomplete: Some(format!(
                "post-copy link lost ({why}): the VM is paused here, {missing} pages are still on the source"
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{split, Stream};
    use crate::synthetic::SyntheticMemory;
    use ferry_wire::run::RunHeader;
    use std::os::unix::net::UnixStream;

    /// Channel `ch` of `channels`: a pump reading frames the test writes. Returns the pump's result.
    fn pump_frames(
        ch: usize,
        channels: usize,
        scaling: bool,
        write: impl FnOnce(&mut FrameWriter),
    ) -> (Result<(), MigrateError>, Arc<dyn GuestMemory>) {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut r, _) = split(Stream::Unix(a), 0).unwrap();
        let (_, mut w) = split(Stream::Unix(b), 0).unwrap();
        write(&mut w);
        drop(w); // end of stream: the pump returns Ok once it has applied everything
        let mem: Arc<dyn GuestMemory> = Arc::new(SyntheticMemory::new(4096));
        let shared = Shared {
            hashes: PageHashes::new(mem.pages()),
            mem: mem.clone(),
            running: AtomicBool::new(false),
            postcopy: OnceLock::new(),
        };
        let (tx, _rx) = channel();
        (pump(ch, channels, scaling, &mut r, &shared, &tx), mem)
    }

    fn run_of(w: &mut FrameWriter, first: u64, count: usize, byte: u8) {
        let h = RunHeader {
            first,
            count: count as u32,
        };
        let data = vec![byte; count * PAGE_SIZE];
        w.send_parts(FrameType::PageRun, 0, &[&h.encode(), &data])
            .unwrap();
    }

    #[test]
    fn a_channel_count_narrows_the_pages_a_channel_may_carry() {
        // Channel 1 of 2 owns pages 512..1024; once one channel carries everything, it owns none.
        let (r, mem) = pump_frames(1, 2, true, |w| run_of(w, 600, 8, 7));
        r.unwrap();
        let mut page = vec![0u8; PAGE_SIZE];
        mem.read_page(600, &mut page);
        assert!(page.iter().all(|&b| b == 7), "the run landed");
        let (r, _) = pump_frames(1, 2, true, |w| {
            w.send(FrameType::Channels, 0, &1u16.to_le_bytes()).unwrap();
            run_of(w, 600, 8, 7);
        });
        let e = format!("{:?}", r.unwrap_err());
        assert!(e.contains("outside this channel"), "{e}");
        // Channel 0, told that one channel carries pages, takes pages of every shard.
        let (r, _) = pump_frames(0, 2, true, |w| {
            w.send(FrameType::Channels, 0, &1u16.to_le_bytes()).unwrap();
            run_of(w, 600, 8, 7);
        });
        r.unwrap();
    }

    #[test]
    fn a_hostile_channel_count_is_refused() {
        for n in [0u16, 3, 65] {
            let (r, _) = pump_frames(0, 2, true, |w| {
                w.send(FrameType::Channels, 0, &n.to_le_bytes()).unwrap();
            });
            assert!(r.is_err(), "{n} channels of 2");
        }
        let (r, _) = pump_frames(0, 2, true, |w| {
            w.send(FrameType::Channels, 0, &[1]).unwrap();
        });
        assert!(r.is_err(), "a short count");
        // Without the feature the frame has no business mid-stream.
        let (r, _) = pump_frames(0, 2, false, |w| {
            w.send(FrameType::Channels, 0, &1u16.to_le_bytes()).unwrap();
        });
        assert!(matches!(r, Err(MigrateError::Unexpected { .. })));
    }

    #[test]
    fn done_report_round_trips() {
        for d in [
            DoneReport::default(),
            DoneReport {
                digest_match: Some(true),
                guest_observed: None,
            },
            DoneReport {
                digest_match: Some(false),
                guest_observed: Some(GuestObserved {
                    gap_ns: 1234,
                    sequence_continues: true,
                    after_max_gap_ns: 5678,
                }),
            },
        ] {
            assert_eq!(DoneReport::decode(&d.encode()).unwrap(), d);
        }
        assert!(DoneReport::decode(&[1, 2]).is_err());
    }

    #[test]
    fn scratch_runs_split_at_gaps_and_reorderings() {
        let mut s = ScratchStore::new(100);
        for (i, gfn) in [5u64, 6, 7, 9, 8, 10].into_iter().enumerate() {
            s.page_mut(gfn).unwrap()[0] = i as u8;
        }
        let runs: Vec<(u64, usize, u8)> = s
            .runs()
            .map(|(first, b)| (first, b.len() / PAGE_SIZE, b[0]))
            .collect();
        assert_eq!(runs, [(5, 3, 0), (9, 1, 3), (8, 1, 4), (10, 1, 5)]);
        assert!(s.page_mut(100).is_err());
    }
}
