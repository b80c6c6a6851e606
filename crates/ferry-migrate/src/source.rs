//! The sending side. Laid out as its phases: handshake, live rounds, switch-over, commit, verify.
//!
//! The one rule: before `Go` is sent, any failure resumes the source VM; after `Go`, the source never
//! resumes on its own (the destination may already run the guest), and a failure before `Running`
//! arrives leaves the VM paused here for an operator ([`MigrateError::OutcomeUnknown`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_model::bitmap::DirtyBitmap;
use ferry_vmm::PAGE_SIZE;
use ferry_wire::codec::{BatchEncoder, EncoderConfig, PageRef};
use ferry_wire::message::{self, channel_key, features, Hello, HelloAck, RoundSummary, VmConfig};
use ferry_wire::run::{RunHeader, RUN_HEADER_LEN};
use ferry_wire::{FrameType, PAGES_PAUSED};

use crate::channel::{split, tcp_window_bytes, FrameReader, FrameWriter, Stream};
use crate::digest::{digest_memory, hex};
use crate::memory::GuestMemory;
use crate::postcopy::{self, next_push_batch};
use crate::priority;
use crate::report::{Event, Phase, Report, RoundStats, Strategy};
use crate::sink::DoneReport;
use crate::vm::MigrationSource;
use crate::MigrateError;
use ferry_model::convergence::{decide, expected_postcopy_pause, ConvergenceConfig, Decision};
use ferry_model::heat::PageHeat;
use ferry_model::hotset::{endgame, Endgame, HotSet};
use ferry_model::parallelism::{auto_channels, channels_to_open, round_channels, LinkFacts};
use ferry_model::walk::{walk_order, FaultWalk};

use crate::hotpages::{self, HotTracking};

/// Pages per Pages frame.
pub const BATCH_PAGES: usize = 256;
/// Low guest memory: sent before post-copy's pause, and pushed first after it (4 MiB).
const LOW_MEMORY_PAGES: u64 = 1024;
/// At most this many low-memory pages dirtied during post-copy's live round go inside its pause.
const PAUSED_CORE_MAX_PAGES: u64 = 256;
/// Pages per Pages frame in post-copy while the guest is faulting.
const POSTCOPY_URGENT_BATCH: usize = 32;
/// Rounds of at most this many pages are sent without sender threads.
const INLINE_ROUND_PAGES: u64 = 1024;
/// Most channels one migration may open (either side refuses more).
pub const MAX_CHANNELS: u16 = 64;

/// Pages in one shard: a page always travels on channel `(page / SHARD_PAGES) % channels`, so pages
/// never overtake their own older copies on another channel.
pub const SHARD_PAGES: u64 = 512;

// A page run spans at most two shards, so its first and last pages name every shard it touches
// (the destination checks runs that way).
const _: () = assert!(ferry_wire::run::MAX_RUN_PAGES as u64 <= SHARD_PAGES);

/// The channel page `page` travels on when a migration has `channels` channels.
pub fn channel_of(page: u64, channels: u64) -> u64 {
    (page / SHARD_PAGES) % channels
}

/// How to run a migration.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Technique.
    pub strategy: Strategy,
    /// Longest pause to aim for.
    pub downtime_target: Duration,
    /// Live rounds at most.
    pub max_rounds: u32,
    /// Parallel connections; 0 lets the source choose from its cores and the measured link
    /// (parallelism.rs).
    pub channels: u16,
    /// Page encoding.
    pub encoder: EncoderConfig,
    /// Compare RAM digests after switch-over.
    pub verify: bool,
    /// How long the peer may stay silent.
    pub timeout: Duration,
    /// Set to cancel (honoured until the point of no return).
    pub cancel: Arc<AtomicBool>,
    /// Pre-copy rounds before a hybrid migration switches to post-copy.
    pub hybrid_rounds: u32,
    /// Bandwidth limit over all channels together (changeable while the migration runs).
    pub max_bandwidth: Arc<crate::rate::RateLimit>,
    /// The migration's id (random if None). A caller that keeps it can finish an interrupted
    /// post-copy later ([`crate::recovery::recover_out`]).
    pub migration_id: Option<[u8; 16]>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            strategy: Strategy::Auto,
            downtime_target: Duration::from_millis(10),
            max_rounds: 30,
            channels: 1,
            encoder: EncoderConfig::default(),
            verify: true,
            timeout: Duration::from_secs(30),
            cancel: Arc::new(AtomicBool::new(false)),
            hybrid_rounds: 2,
            max_bandwidth: Arc::new(crate::rate::RateLimit::new(0)),
            migration_id: None,
        }
    }
}

struct Link {
    /// Whether the destination accepted post-copy.
    postcopy: bool,
    /// Same host (Unix socket) and the destination accepts guest RAM as a file descriptor.
    handover: bool,
    /// The destination takes page runs (ferry_wire::run) before it runs the VM.
    runs: bool,
    /// Set to cancel; checked between batches too, so a long round stops promptly.
    cancel: Arc<AtomicBool>,
    /// Round-trip time, measured by the handshake.
    rtt: Duration,
    /// What the channel count was chosen from, when the source chose it and may change between
    /// rounds how many channels carry pages (parallelism.rs); None: fixed.
    scaling: Option<LinkFacts>,
    /// Channels that carry pages (the first `active` ones); the others only end each round.
    active: usize,
    control: FrameReader,
    writers: Vec<FrameWriter>,
    encoders: Vec<BatchEncoder>,
    /// Per-channel batch buffers, kept across rounds: fresh megabyte buffers cost a page fault
    /// per page touched (0.7 ms for a 60-page round inside post-copy's pause).
    buffers: Vec<SendBuffers>,
}

/// One channel's reusable batch buffers.
#[derive(Default)]
struct SendBuffers {
    /// Copies of the pages of a live batch.
    pages: Vec<u8>,
    /// The encoded batch.
    out: Vec<u8>,
}

impl Link {
    fn bytes(&self) -> u64 {
        self.writers.iter().map(|w| w.bytes).sum::<u64>() + self.control.bytes
    }
    fn abort(&mut self, reason: &str) {
        let _ = self.writers[0].send(FrameType::Abort, 0, &message::encode_reason(reason));
        for w in &self.writers {
            w.stream().shutdown();
        }
    }
}

/// Migrates `src` to the destination reached by `connect` (called once per channel).
pub fn migrate_out<S: MigrationSource>(
    src: &mut S,
    connect: &dyn Fn() -> std::io::Result<Stream>,
    opts: &SourceOptions,
    events: &mut dyn FnMut(Event),
) -> Result<Report, MigrateError> {
    if opts.channels > MAX_CHANNELS {
        return Err(MigrateError::Config(format!(
            "channels must be between 1 and {MAX_CHANNELS} (or 0: chosen from the link)"
        )));
    }
    let t0 = Instant::now();
    events(Event::Phase {
        phase: Phase::Handshake,
    });
    let mem = src.memory();
    let mut link = handshake(connect, opts)?;
    let cfg = VmConfig {
        memory: mem.pages() * PAGE_SIZE as u64,
        vcpus: src.vcpus(),
        strategy: opts.strategy.code(),
    };
    // Same host: hand the guest's RAM over as a file instead of copying it. The destination builds
    // its VM on the very same memory while the guest still runs here; only device state is left
    // for the pause.
    let shared = if link.handover {
        src.memory_file()
    } else {
        None
    };
    link.writers[0].send(
        FrameType::VmConfig,
        u8::from(shared.is_some()),
        &cfg.encode(),
    )?;
    if let Some(file) = &shared {
        use std::os::fd::AsFd;
        link.writers[0]
            .stream()
            .send_fd(file.as_fd())
            .map_err(MigrateError::io("handing guest memory over"))?;
    }
    // The destination builds its VM now (tens of ms here); wait, so no pause ever includes that.
    link.control.expect(
        FrameType::VmConfig,
        "waiting for the destination to create the VM",
    )?;

    let mut report = Report {
        rtt_ms: link.rtt.as_secs_f64() * 1e3,
        strategy: opts.strategy.to_string(),
        ram_bytes: cfg.memory,
        channels: link.writers.len() as u16,
        ..Report::default()
    };
    let mut paused = false;
    if !link.postcopy && matches!(opts.strategy, Strategy::Postcopy | Strategy::Hybrid) {
        link.abort("post-copy not supported by the destination");
        return Err(MigrateError::Config(
            "the destination does not support post-copy".into(),
        ));
    }
    let result = if shared.is_some() {
        handover_switch(src, &mem, &mut link, &mut report, &mut paused, events)
    } else {
        copy_phases(src, &mem, &mut link, opts, &mut report, &mut paused, events)
    };
    let (t_pause, postcopy) = match result {
        Ok(r) => r,
        Err(e) => {
            link.abort(&e.to_string());
            let _ = src.set_throttle(0);
            let _ = src.stop_dirty_log();
            if paused {
                src.resume()?;
            }
            return Err(e);
        }
    };
    if let Err(e) = commit(
        &mem,
        &mut link,
        opts,
        &mut report,
        t0,
        t_pause,
        postcopy,
        events,
    ) {
        if matches!(e, MigrateError::PeerAborted(_)) {
            // The destination failed before running the guest, and said so: it is ours again.
            let _ = src.set_throttle(0);
            let _ = src.stop_dirty_log();
            src.resume()?;
        }
        return Err(e);
    }
    Ok(report)
}

fn handshake(
    connect: &dyn Fn() -> std::io::Result<Stream>,
    opts: &SourceOptions,
) -> Result<Link, MigrateError> {
    let id = opts.migration_id.unwrap_or_else(new_migration_id);
    let (mut control, mut writers, mut postcopy, mut handover) = (None, Vec::new(), false, false);
    let mut runs = false;
    let mut scaling = None;
    // Hello and its answer cost the destination next to nothing: their exchange times the link.
    let mut rtt = Duration::MAX;
    // No count given: channel 0 announces 0 and, once its handshake has timed the link, says how
    // many channels follow (parallelism.rs).
    let mut total = opts.channels;
    let mut ch = 0;
    while ch < total.max(1) {
        let stream = connect().map_err(MigrateError::io("cannot connect to the destination"))?;
        stream.prepare(opts.timeout)?;
        let unix = stream.is_unix();
        let (mut r, mut w) = split(stream, 0)?;
        let hello = Hello {
            min_version: message::MIN_PROTOCOL_VERSION,
            max_version: message::PROTOCOL_VERSION,
            features: features::ALL,
            migration_id: id,
            channel: ch,
            channels: total,
        };
        let t = Instant::now();
        w.send(FrameType::Hello, 0, &hello.encode())?;
        let ack = HelloAck::decode(r.expect(FrameType::HelloAck, "handshake")?)?;
        rtt = rtt.min(t.elapsed());
        if let Some(why) = ack.refusal {
            return Err(MigrateError::Refused(why));
        }
        let key = channel_key(&id, ch);
        r.set_key(key);
        w.set_key(key);
        w.set_rate_limit(opts.max_bandwidth.clone());
        if ch == 0 {
            control = Some(r);
            postcopy = ack.features & features::POSTCOPY != 0;
            handover = unix && ack.features & features::FD_HANDOVER != 0;
            runs = ack.features & features::PAGE_RUNS != 0;
            if total == 0 {
                let mut facts = LinkFacts {
                    rtt,
                    cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                    window_bytes: tcp_window_bytes(),
                    max_bandwidth: Some(opts.max_bandwidth.get()).filter(|&b| b > 0),
                    // A same-host handover never ends in post-copy.
                    needs_request_channel: !handover
                        && matches!(
                            opts.strategy,
                            Strategy::Postcopy | Strategy::Hybrid | Strategy::Auto
                        ),
                };
                // The longer of the handshake's round trip and the kernel's: a TCP-terminating hop
                // (a proxy) hides the path from the kernel, a busy host inflates the handshake.
                facts.rtt = facts.rtt.max(w.rtt().unwrap_or_default());
                let scales = !handover && ack.features & features::CHANNEL_SCALING != 0;
                total = if scales {
                    channels_to_open(&facts)
                } else {
                    auto_channels(&facts)
                };
                scaling = scales.then_some(facts);
                tracing::debug!(?facts, total, scales, "channel count chosen");
                w.send(FrameType::Channels, 0, &total.to_le_bytes())?;
            }
        }
        writers.push(w);
        ch += 1;
    }
    let control = control.ok_or_else(|| MigrateError::Config("no channel".into()))?;
    let encoders = (0..total)
        .map(|_| BatchEncoder::new(opts.encoder))
        .collect();
    Ok(Link {
        postcopy,
        handover,
        runs,
        cancel: opts.cancel.clone(),
        rtt,
        scaling,
        active: total as usize,
        control,
        writers,
        encoders,
        buffers: (0..total).map(|_| SendBuffers::default()).collect(),
    })
}

/// Runs the live rounds and the final copy. Returns when the VM is paused and every page and the
/// device state are sent, with the instant the VM was paused.
fn copy_phases<S: MigrationSource>(
    src: &mut S,
    mem: &Arc<dyn GuestMemory>,
    link: &mut Link,
    opts: &SourceOptions,
    report: &mut Report,
    paused: &mut bool,
    events: &mut dyn FnMut(Event),
) -> Result<(Instant, Option<PostcopyPlan>), MigrateError> {
    let pages = mem.pages();
    let mut dirty = DirtyBitmap::full(pages);
    let mut round = 0u32;
    let mut go_postcopy = opts.strategy == Strategy::Postcopy;
    let mut hot: Option<HotTracking> = None;
    if matches!(
        opts.strategy,
        Strategy::Precopy | Strategy::Auto | Strategy::Hybrid
    ) {
        let conv = ConvergenceConfig {
            downtime_target: opts.downtime_target,
            max_rounds: if opts.strategy == Strategy::Hybrid {
                opts.hybrid_rounds.max(1)
            } else {
                opts.max_rounds
            },
            auto_converge: opts.strategy == Strategy::Auto && !link.postcopy,
            postcopy_fallback: link.postcopy && opts.strategy != Strategy::Precopy,
            postcopy_pause: (opts.strategy == Strategy::Auto && link.postcopy)
                .then(|| expected_postcopy_pause(link.rtt)),
        };
        // With post-copy at hand, auto leaves the pages of a guest walking its memory writable
        // until the switch-over (hotpages.rs): it never crawls through write-protected pages.
        hot = if opts.strategy == Strategy::Auto && link.postcopy {
            hotpages::start_tracking(src, &**mem, &opts.cancel)?
        } else {
            src.start_dirty_log()?;
            None
        };
        if let Some(h) = &hot {
            report.hot_set_pages = h.hot().count();
            events(Event::Adapt {
                what: format!(
                    "the guest walks its memory: the {} MiB it writes stay writable until the switch-over",
                    (h.hot().count() * PAGE_SIZE as u64) >> 20
                ),
            });
        }
        events(Event::Phase {
            phase: Phase::LiveCopy,
        });
        let mut throttle = 0u8;
        let mut heat = PageHeat::new(pages);
        loop {
            if opts.cancel.load(Ordering::SeqCst) {
                return Err(MigrateError::Cancelled);
            }
            // Pages the guest rewrites every round wait for the final round (heat.rs); with a
            // hot set left writable, those are its pages.
            let held = heat
                .hold_back()
                .filter(|_| round > 0 && hot.is_none())
                .map(|hot| {
                    let mut held = dirty.clone();
                    held.and(hot);
                    held
                });
            let mut to_send = match &held {
                Some(h) => {
                    let mut s = dirty.clone();
                    s.and_not(h);
                    s
                }
                None => dirty.clone(),
            };
            if let Some(h) = &hot {
                to_send.and_not(h.hot()); // owed until the switch-over
            }
            rescale(link, opts, events)?;
            let mut stats = send_round(mem, link, round, &to_send, false, report, events)?;
            // Count the round as done when the destination has applied it: bandwidth is then
            // measured end to end, and no backlog sits in socket buffers when the guest pauses.
            let t_ack = Instant::now();
            await_round_ack(link, round)?;
            stats.seconds += t_ack.elapsed().as_secs_f64();
            dirty.clear();
            match hot.as_mut() {
                Some(h) => h.collect(src, &mut dirty)?,
                None => src.collect_dirty(&mut dirty)?,
            }
            heat.observe(&dirty);
            if let Some(h) = &held {
                report.held_back_pages += h.count();
                dirty.or(h); // still owed
            }
            stats.dirtied = dirty.count();
            report.rounds.push(stats.clone());
            events(Event::Round(stats));
            round += 1;
            let mut decision = decide(&conv, &report.rounds, dirty.count(), throttle);
            if let (Some(h), Decision::SwitchOver | Decision::Postcopy) = (&hot, decision) {
                // The hot set is owed too: in the pause when it fits, else pushed after it.
                let bw = report
                    .rounds
                    .iter()
                    .rev()
                    .take(3)
                    .map(|r| r.bandwidth())
                    .fold(0.0, f64::max);
                report.hot_set_pages = h.hot().count();
                dirty.or(h.hot());
                decision = match endgame(h.hot().count(), bw, opts.downtime_target, true) {
                    Endgame::InPause => Decision::SwitchOver,
                    Endgame::Postcopy => Decision::Postcopy,
                };
            }
            match decision {
                Decision::Continue => {}
                Decision::Throttle(p) => {
                    throttle = p;
                    report.max_throttle = report.max_throttle.max(p);
                    src.set_throttle(p)?;
                    events(Event::Adapt {
                        what: format!("throttling the guest to {p}%"),
                    });
                }
                Decision::SwitchOver => break,
                Decision::Postcopy => {
                    // Let the destination drop its stale copies of the pages dirtied so far now,
                    // while the guest still runs here: punching them out inside the pause would
                    // lengthen it (a populated destination, scattered pages: tens of ms).
                    link.writers[0].send(
                        FrameType::Discard,
                        0,
                        &postcopy::encode_start(0, &dirty, &[]),
                    )?;
                    link.control.expect(
                        FrameType::Discard,
                        "waiting for the destination to drop stale pages",
                    )?;
                    go_postcopy = true;
                    events(Event::Adapt {
                        what: format!("switching to post-copy after {round} rounds"),
                    });
                    break;
                }
            }
        }
    }
    if go_postcopy {
        let walk = hot.map(|h| h.set);
        return postcopy_switch(
            src, mem, link, opts, report, paused, round, dirty, walk, events,
        );
    }
    events(Event::Phase {
        phase: Phase::SwitchOver,
    });
    let t_pause = Instant::now();
    src.pause()?;
    *paused = true;
    if opts.strategy != Strategy::StopAndCopy {
        // Dirty logging stays on: turning it off rewrites the memory slots (milliseconds, inside
        // the pause). On success this VM is done; on failure the error path turns it off.
        let t = Instant::now();
        src.collect_dirty_final(&mut dirty)?;
        tracing::debug!(
            us = t.elapsed().as_micros() as u64,
            "dirty log read in the pause"
        );
        src.set_throttle(0)?;
    }
    let stats = send_round(mem, link, round, &dirty, true, report, events)?;
    report.rounds.push(stats);
    let state = src.save_state()?;
    let mut payload = round.to_le_bytes().to_vec();
    payload.extend_from_slice(&state);
    link.writers[0].send(FrameType::DeviceState, 0, &payload)?;
    expect_ready(link)?;
    if opts.cancel.load(Ordering::SeqCst) {
        return Err(MigrateError::Cancelled);
    }
    report.strategy_used = if round == 0 && opts.strategy == Strategy::StopAndCopy {
        Strategy::StopAndCopy.to_string()
    } else {
        Strategy::Precopy.to_string()
    };
    Ok((t_pause, None))
}

/// Same-host switch-over: RAM is already shared with the destination; pause and send device state.
fn handover_switch<S: MigrationSource>(
    src: &mut S,
    mem: &Arc<dyn GuestMemory>,
    link: &mut Link,
    report: &mut Report,
    paused: &mut bool,
    events: &mut dyn FnMut(Event),
) -> Result<(Instant, Option<PostcopyPlan>), MigrateError> {
    events(Event::Phase {
        phase: Phase::SwitchOver,
    });
    let t_pause = Instant::now();
    src.pause()?;
    *paused = true;
    // An empty round marks every channel as done with pages.
    send_round(
        mem,
        link,
        0,
        &DirtyBitmap::new(mem.pages()),
        true,
        report,
        events,
    )?;
    let state = src.save_state()?;
    let mut payload = 0u32.to_le_bytes().to_vec();
    payload.extend_from_slice(&state);
    link.writers[0].send(FrameType::DeviceState, 0, &payload)?;
    expect_ready(link)?;
    if link.cancel.load(Ordering::SeqCst) {
        return Err(MigrateError::Cancelled);
    }
    report.strategy_used = HANDOVER.to_string();
    Ok((t_pause, None))
}

/// Name of the same-host strategy in reports.
pub const HANDOVER: &str = "fd-handover";

/// What post-copy must still send once the destination runs.
struct PostcopyPlan {
    /// Every page the destination lacks.
    needed: DirtyBitmap,
    /// The subset the guest wrote just before the pause: pushed first.
    hot: DirtyBitmap,
    /// Where the guest walks next, if it walks its memory: the hot pages go in walk order from
    /// there (ferry_model::walk).
    head: Option<u64>,
    /// The destination resumes without waiting for Go ([`postcopy::START_RUNS`]).
    go_implied: bool,
}

/// Pauses, tells the destination which pages it still lacks, and hands it the device state. Returns
/// the pages to push once the destination runs.
#[allow(clippy::too_many_arguments)]
fn postcopy_switch<S: MigrationSource>(
    src: &mut S,
    mem: &Arc<dyn GuestMemory>,
    link: &mut Link,
    opts: &SourceOptions,
    report: &mut Report,
    paused: &mut bool,
    round: u32,
    mut dirty: DirtyBitmap,
    mut walk: Option<HotSet>,
    events: &mut dyn FnMut(Event),
) -> Result<(Instant, Option<PostcopyPlan>), MigrateError> {
    let pages = mem.pages();
    let mut data = None;
    let mut core_live = None;
    let next_round = if round == 0 {
        // Nothing copied yet: every page with data is needed, the rest are zero at the destination.
        // Work that out while the guest still runs (dirty logging covers pages written meanwhile).
        // The guest's core goes now, live: low memory holds the page tables, the kernel's text and
        // its stacks on every common kernel, and without them the first instructions after
        // resuming fault one page after another across the network (4 ms of the guest's pause,
        // measured on the demo guest). The acknowledgement also lets the destination finish
        // building its VM before anything pauses.
        src.start_dirty_log()?;
        data = mem.data_pages();
        dirty = DirtyBitmap::new(pages);
        let mut core = low_memory(pages);
        if let Some(d) = &data {
            core.and(d);
        }
        let stats = send_round(mem, link, 0, &core, false, report, events)?;
        await_round_ack(link, 0)?;
        report.rounds.push(stats);
        core_live = Some(core);
        1
    } else {
        round
    };
    events(Event::Phase {
        phase: Phase::SwitchOver,
    });
    let t_pause = Instant::now();
    src.pause()?;
    *paused = true;
    // Dirty logging stays on (see copy_phases): turning it off would lengthen the pause.
    let t = Instant::now();
    src.collect_dirty_final(&mut dirty)?;
    tracing::debug!(
        us = t.elapsed().as_micros() as u64,
        "dirty log read in the pause"
    );
    src.set_throttle(0)?;
    // Where a walking guest goes next: its probes written since they were last armed end there.
    let head = walk.as_mut().and_then(|w| {
        w.observe(&dirty);
        w.head()
    });
    // Core pages written since go inside the pause when they are few (a stack, counters: tens of
    // pages, microseconds); the guest would fault on them first thing.
    let mut core_paused = low_memory(pages);
    core_paused.and(&dirty);
    if core_paused.count() > PAUSED_CORE_MAX_PAGES {
        core_paused = DirtyBitmap::new(pages);
    }
    let stats = send_round(mem, link, next_round, &core_paused, true, report, events)?;
    report.rounds.push(stats);
    tracing::debug!(
        us = t_pause.elapsed().as_micros() as u64,
        pages = core_paused.count(),
        "post-copy: paused core round sent"
    );
    // Pages written since the last round are the ones the guest is using now: pushed first.
    let mut hot = dirty;
    hot.and_not(&core_paused);
    let mut needed = match data {
        Some(d) => d,
        None if round == 0 => DirtyBitmap::full(pages),
        None => DirtyBitmap::new(pages),
    };
    if let Some(core) = &core_live {
        needed.and_not(core);
    }
    needed.or(&hot);
    let state = src.save_state()?;
    tracing::debug!(
        us = t_pause.elapsed().as_micros() as u64,
        "post-copy: state saved"
    );
    let go_implied = link.rtt >= postcopy::FAST_COMMIT_RTT;
    link.writers[0].send(
        FrameType::PostcopyStart,
        if go_implied { postcopy::START_RUNS } else { 0 },
        &postcopy::encode_start(next_round, &needed, &state),
    )?;
    report.fast_commit = go_implied;
    if go_implied {
        // From here the destination may run the guest: the outcome is known only from Running.
        report.strategy_used = if round == 0 {
            Strategy::Postcopy
        } else {
            Strategy::Hybrid
        }
        .to_string();
        report.postcopy_pages = needed.count();
        return Ok((
            t_pause,
            Some(PostcopyPlan {
                needed,
                hot,
                head,
                go_implied,
            }),
        ));
    }
    tracing::debug!(
        us = t_pause.elapsed().as_micros() as u64,
        "post-copy: start sent"
    );
    expect_ready(link)?;
    tracing::debug!(
        us = t_pause.elapsed().as_micros() as u64,
        "post-copy: ready"
    );
    if opts.cancel.load(Ordering::SeqCst) {
        return Err(MigrateError::Cancelled);
    }
    report.strategy_used = if round == 0 {
        Strategy::Postcopy
    } else {
        Strategy::Hybrid
    }
    .to_string();
    report.postcopy_pages = needed.count();
    Ok((
        t_pause,
        Some(PostcopyPlan {
            needed,
            hot,
            head,
            go_implied: false,
        }),
    ))
}

/// The first [`LOW_MEMORY_PAGES`] pages of a guest of `pages` pages.
fn low_memory(pages: u64) -> DirtyBitmap {
    let mut low = DirtyBitmap::new(pages);
    (0..LOW_MEMORY_PAGES.min(pages)).for_each(|p| low.set(p));
    low
}

/// A fresh random migration id (keep it to finish an interrupted post-copy later).
pub fn new_migration_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut id);
    id
}

/// Pages and bytes the sender threads of one round have put on the wire so far.
#[derive(Default)]
struct RoundProgress {
    pages: AtomicU64,
    bytes: AtomicU64,
    /// CPU time of the round's copy threads, ns.
    cpu_ns: AtomicU64,
}

/// Sends every page in `dirty` across all channels, then a RoundEnd on each.
fn send_round(
    mem: &Arc<dyn GuestMemory>,
    link: &mut Link,
    round: u32,
    dirty: &DirtyBitmap,
    paused: bool,
    report: &mut Report,
    events: &mut dyn FnMut(Event),
) -> Result<RoundStats, MigrateError> {
    let t = Instant::now();
    let before = link.bytes();
    // The bulk round leaves out pages the memory knows to be zero (never touched): the
    // destination's RAM is fresh, so they are zero there too, and its page checks start as zero
    // pages. Sending them as zero flags cost 1.5 s for an idle 2 GiB guest (2.8 us a page).
    let with_data = if round == 0 {
        mem.data_pages().map(|mut d| {
            d.and(dirty);
            d
        })
    } else {
        None
    };
    let dirty = with_data.as_ref().unwrap_or(dirty);
    let total = dirty.count();
    let active = link.active.clamp(1, link.writers.len());
    let n = active as u64;
    let done = RoundProgress::default();
    let cancel = link.cancel.clone();
    let runs = link.runs;
    // A small round (a final round, post-copy's core) goes from this thread, channel after
    // channel: starting a sender thread per channel cost about 0.4 ms each here, inside the pause.
    let results: Vec<Result<(), MigrateError>> = if total <= INLINE_ROUND_PAGES {
        link.writers
            .iter_mut()
            .zip(link.encoders.iter_mut())
            .zip(link.buffers.iter_mut())
            .enumerate()
            .take(active)
            .map(|(ch, ((w, enc), bufs))| {
                send_shard(
                    &**mem, w, enc, bufs, round, dirty, paused, runs, ch as u64, n, &done, &cancel,
                    None,
                )
            })
            .collect()
    } else {
        std::thread::scope(|s| {
            let (finished_tx, finished) = std::sync::mpsc::channel::<()>();
            let handles: Vec<_> = link
                .writers
                .iter_mut()
                .zip(link.encoders.iter_mut())
                .zip(link.buffers.iter_mut())
                .enumerate()
                .take(active)
                .map(|(ch, ((w, enc), bufs))| {
                    let (mem, done, finished_tx) = (mem.clone(), &done, finished_tx.clone());
                    let cancel = cancel.clone();
                    s.spawn(move || {
                        // The guest runs: it keeps its CPU (priority.rs).
                        let mut bulk = (!paused).then(priority::Bulk::enter);
                        let r = send_shard(
                            &*mem,
                            w,
                            enc,
                            bufs,
                            round,
                            dirty,
                            paused,
                            runs,
                            ch as u64,
                            n,
                            done,
                            &cancel,
                            bulk.as_mut(),
                        );
                        if let Some(b) = &bulk {
                            done.cpu_ns
                                .fetch_add(b.cpu_time().as_nanos() as u64, Ordering::Relaxed);
                        }
                        let _ = finished_tx.send(());
                        r
                    })
                })
                .collect();
            // Wake on each sender's completion (no polling delay at switch-over), report progress meanwhile.
            let mut remaining = handles.len();
            while remaining > 0 {
                match finished.recv_timeout(Duration::from_millis(100)) {
                    Ok(()) => remaining -= 1,
                    Err(_) => {
                        let bytes = before + done.bytes.load(Ordering::Relaxed);
                        events(Event::Progress {
                            round,
                            done: done.pages.load(Ordering::Relaxed),
                            total,
                            bytes,
                        });
                    }
                }
            }
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or(Err(MigrateError::Config("sender thread panicked".into())))
                })
                .collect()
        })
    };
    for r in results {
        r?;
    }
    // Channels that carried nothing this round still end it: the destination counts every one.
    for w in &mut link.writers[active..] {
        send_round_end(w, round)?;
    }
    let bytes = link.bytes() - before;
    report.pages_sent += total;
    let cpu_ns = done.cpu_ns.load(Ordering::Relaxed);
    if cpu_ns > 0 {
        // What CPU share the live copy got (a busy host: issue 12 item 5).
        report.live_copy_cpu_ms += cpu_ns as f64 / 1e6;
        report.live_copy_ms += t.elapsed().as_secs_f64() * 1e3;
        report.live_copy_cpu_cores = report.live_copy_cpu_ms / report.live_copy_ms;
    }
    Ok(RoundStats {
        round,
        pages: total,
        bytes,
        seconds: t.elapsed().as_secs_f64(),
        dirtied: 0,
    })
}

#[allow(clippy::too_many_arguments)]
fn send_shard(
    mem: &dyn GuestMemory,
    w: &mut FrameWriter,
    enc: &mut BatchEncoder,
    bufs: &mut SendBuffers,
    round: u32,
    dirty: &DirtyBitmap,
    paused: bool,
    runs: bool,
    ch: u64,
    channels: u64,
    done: &RoundProgress,
    cancel: &AtomicBool,
    mut bulk: Option<&mut priority::Bulk>,
) -> Result<(), MigrateError> {
    if !paused && bufs.pages.len() < BATCH_PAGES * PAGE_SIZE {
        bufs.pages.resize(BATCH_PAGES * PAGE_SIZE, 0);
    }
    let SendBuffers { pages: buf, out } = bufs;
    let mut gfns = Vec::with_capacity(BATCH_PAGES);
    let mut run_list = Vec::new();
    let flags = if paused { PAGES_PAUSED } else { 0 };
    let mut flush =
        |gfns: &mut Vec<u64>, buf: &mut [u8], out: &mut Vec<u8>| -> Result<(), MigrateError> {
            if gfns.is_empty() {
                return Ok(());
            }
            if !paused {
                // The guest runs: take a copy, so the encoder sees one consistent version of each page.
                for (i, &gfn) in gfns.iter().enumerate() {
                    mem.read_page(gfn, &mut buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
                }
            }
            let refs: Vec<PageRef<'_>> = gfns
                .iter()
                .enumerate()
                .map(|(i, &gfn)| {
                    let data = if paused {
                        // SAFETY: the guest is paused for the whole send, so nothing writes this page
                        // while the encoder reads it (no copy needed).
                        unsafe { mem.page(gfn) }
                    } else {
                        &buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]
                    };
                    PageRef { gfn, data }
                })
                .collect();
            out.clear();
            if !runs {
                enc.encode(&refs, out);
            } else {
                // Long stretches of raw pages travel as page runs: straight from guest RAM (or
                // this batch's copy) to the socket, and at the destination straight into RAM.
                enc.encode_runs(&refs, out, &mut run_list);
                for r in run_list.drain(..) {
                    let (first, count) = (refs[r.start].gfn, r.len() as u64);
                    let data = if paused {
                        // SAFETY: the guest is paused for the whole send; the run's pages are
                        // consecutive guest pages (the encoder checked their numbers).
                        unsafe { mem.run(first, count) }
                    } else {
                        &buf[r.start * PAGE_SIZE..r.end * PAGE_SIZE]
                    };
                    let header = RunHeader {
                        first,
                        count: count as u32,
                    };
                    w.send_parts(FrameType::PageRun, flags, &[&header.encode(), data])?;
                    done.bytes.fetch_add(
                        (ferry_wire::HEADER_LEN + RUN_HEADER_LEN + data.len()) as u64,
                        Ordering::Relaxed,
                    );
                }
            }
            if !out.is_empty() {
                w.send(FrameType::Pages, flags, out)?;
                done.bytes.fetch_add(
                    (ferry_wire::HEADER_LEN + out.len()) as u64,
                    Ordering::Relaxed,
                );
            }
            done.pages.fetch_add(gfns.len() as u64, Ordering::Relaxed);
            if let Some(b) = bulk.as_deref_mut() {
                b.progress((gfns.len() * PAGE_SIZE) as u64);
            }
            gfns.clear();
            Ok(())
        };
    for p in dirty.iter().filter(|&p| channel_of(p, channels) == ch) {
        gfns.push(p);
        if gfns.len() == BATCH_PAGES {
            if cancel.load(Ordering::SeqCst) {
                return Err(MigrateError::Cancelled);
            }
            flush(&mut gfns, buf, out)?;
        }
    }
    flush(&mut gfns, buf, out)?;
    send_round_end(w, round)
}

fn send_round_end(w: &mut FrameWriter, round: u32) -> Result<(), MigrateError> {
    let end = RoundSummary {
        round,
        pages: 0,
        digest: [0; 16],
    };
    w.send(FrameType::RoundEnd, 0, &end.encode())
}

/// Between rounds (the destination has acknowledged the last one on every channel): lets as many
/// channels carry pages as the link now needs, if the source chose the count
/// (parallelism.rs). Every channel hears the new count ahead of its next pages.
fn rescale(
    link: &mut Link,
    opts: &SourceOptions,
    events: &mut dyn FnMut(Event),
) -> Result<(), MigrateError> {
    let Some(facts) = link.scaling else {
        return Ok(());
    };
    let now = LinkFacts {
        rtt: link.writers[0].rtt().unwrap_or_default().max(link.rtt),
        max_bandwidth: Some(opts.max_bandwidth.get()).filter(|&b| b > 0),
        ..facts
    };
    let opened = link.writers.len() as u16;
    let n = round_channels(&now, opened);
    if usize::from(n) == link.active {
        return Ok(());
    }
    for w in &mut link.writers {
        w.send(FrameType::Channels, 0, &n.to_le_bytes())?;
    }
    tracing::debug!(
        rtt = ?now.rtt,
        limit = ?now.max_bandwidth,
        from = link.active,
        to = n,
        "channels carrying pages"
    );
    events(Event::Adapt {
        what: format!(
            "{n} of {opened} channels carry pages (round trip {:.1} ms{})",
            now.rtt.as_secs_f64() * 1e3,
            now.max_bandwidth
                .map(|b| format!(", limit {} MB/s", b / 1_000_000))
                .unwrap_or_default()
        ),
    });
    link.active = usize::from(n);
    Ok(())
}

/// The source's RAM digest, computed once the destination runs: on a thread at background
/// priority, because the guest now runs on the destination and the hashing is only a check (on a
/// host shared with the destination it took CPU from the guest's vCPU for 100-200 ms).
fn background_digest(mem: &dyn GuestMemory) -> [u8; 16] {
    std::thread::scope(|s| {
        s.spawn(|| {
            priority::background();
            digest_memory(mem)
        })
        .join()
        .unwrap_or_else(|_| digest_memory(mem))
    })
}

/// Point of no return, then verification.
#[allow(clippy::too_many_arguments)]
fn commit(
    mem: &Arc<dyn GuestMemory>,
    link: &mut Link,
    opts: &SourceOptions,
    report: &mut Report,
    t0: Instant,
    t_pause: Instant,
    postcopy: Option<PostcopyPlan>,
    events: &mut dyn FnMut(Event),
) -> Result<(), MigrateError> {
    // An Abort before Running means the destination never ran the guest (it sends Running before
    // any later Abort): the caller may resume. Anything else leaves the outcome unknown.
    let unknown = |e: MigrateError| match e {
        MigrateError::PeerAborted(_) => e,
        e => MigrateError::OutcomeUnknown(e.to_string()),
    };
    if let Some(plan) = postcopy {
        // The VM will run on the destination and wait for these pages: we keep every one of them
        // until the destination confirms it has them all. Go is sent from inside the push, once
        // the threads that serve the guest's faults are listening.
        let t = Instant::now();
        push_pages(mem, link, &plan, opts, report, t_pause, events)?;
        report.postcopy_ms = t.elapsed().as_secs_f64() * 1e3;
        report.total_ms = t0.elapsed().as_secs_f64() * 1e3;
        return Ok(());
    }
    link.writers[0]
        .send(FrameType::Go, 0, &[])
        .map_err(unknown)?;
    link.control
        .expect(
            FrameType::Running,
            "commit (waiting for the destination to run)",
        )
        .map_err(unknown)?;
    report.downtime_ms = t_pause.elapsed().as_secs_f64() * 1e3;
    report.total_ms = t0.elapsed().as_secs_f64() * 1e3;
    report.throughput_mbps = copy_throughput(&report.rounds);
    // From here the VM runs on the destination; what follows only checks the result.
    events(Event::Phase {
        phase: Phase::Verify,
    });
    // After a handover there is one copy of RAM, shared: nothing crossed the wire to compare.
    let verify = opts.verify && report.strategy_used != HANDOVER;
    let digest = if verify {
        background_digest(&**mem)
    } else {
        [0; 16]
    };
    report.source_digest = if verify { hex(&digest) } else { String::new() };
    let summary = RoundSummary {
        round: report.rounds.len() as u32,
        pages: report.pages_sent,
        digest,
    };
    let done = link.writers[0]
        .send(FrameType::Complete, u8::from(verify), &summary.encode())
        .and_then(|_| {
            link.control
                .expect(FrameType::Done, "verification")
                .map(DoneReport::decode)
        })
        .and_then(|d| d.map_err(MigrateError::from));
    match done {
        Ok(d) => {
            report.digest_match = d.digest_match;
            report.guest_observed = d.guest_observed;
        }
        Err(e) => tracing::warn!("destination runs the VM, but verification did not complete: {e}"),
    }
    report.bytes_sent = link.bytes();
    for w in &link.writers {
        w.stream().shutdown();
    }
    events(Event::Phase { phase: Phase::Done });
    Ok(())
}

/// Bytes per second over the live and paused rounds, in MB/s.
fn copy_throughput(rounds: &[RoundStats]) -> f64 {
    let secs: f64 = rounds.iter().map(|r| r.seconds).sum();
    let bytes: u64 = rounds.iter().map(|r| r.bytes).sum();
    if secs > 0.0 {
        bytes as f64 / secs / 1e6
    } else {
        0.0
    }
}

/// Post-copy commit and push: sends Go, serves the destination's fault requests first, pushes the rest, then sends the
/// digest and waits for the destination to confirm it has every page.
///
/// With two or more channels, requested pages travel on channel 0 by themselves (sent at once, by
/// their own thread, even if the push already sent them), and the background push on channel 1: a
/// request never queues behind megabytes of pushed pages in the same connection (QEMU's "postcopy
/// preempt" does the same).
fn push_pages(
    mem: &Arc<dyn GuestMemory>,
    link: &mut Link,
    plan: &PostcopyPlan,
    opts: &SourceOptions,
    report: &mut Report,
    t_pause: Instant,
    events: &mut dyn FnMut(Event),
) -> Result<(), MigrateError> {
    use std::collections::VecDeque;
    use std::sync::{Condvar, Mutex};

    let needed = &plan.needed;
    let asked = AtomicU64::new(0);
    let (pushed, push_bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let requests = (Mutex::new(VecDeque::<u64>::new()), Condvar::new());
    // When the destination said it runs the VM (before that, a failure leaves the outcome unknown).
    let running_at = std::sync::OnceLock::<Instant>::new();
    // Likely-first accesses: low memory (page tables, boot structures, most kernels' text: the
    // MMU and the first instructions after resuming need them, and they were written long ago, so
    // the dirty log does not show them), then the pages written just before the pause.
    let mut hot: VecDeque<u64> = (0..LOW_MEMORY_PAGES.min(needed.pages()))
        .filter(|&p| needed.get(p))
        .collect();
    match plan.head {
        Some(head) => hot.extend(walk_order(plan.hot.iter(), head)),
        None => hot.extend(plan.hot.iter()),
    }
    // No lock: the pusher, which yields its CPU to everything, must never hold up the request path.
    let sent = ferry_model::bitmap::AtomicBitmap::new(needed.pages());
    let stop = AtomicBool::new(false);
    let urgent_sent = AtomicU64::new(0);
    // Where a walking guest goes next (set by the request server, taken by the pusher).
    let follow = AtomicU64::new(NO_FOLLOW);
    let total = needed.count();
    let Link {
        control,
        writers,
        encoders,
        ..
    } = link;
    for enc in encoders.iter_mut() {
        // The destination's content of these pages is gone: deltas against it would be wrong.
        enc.disable_xbzrle();
    }
    let (urgent_w, push_w) = writers.split_at_mut(1);
    let (urgent_enc, push_enc) = encoders.split_at_mut(1);
    // Channel 0 serves requests (its own thread), carries the push too when it is the only channel,
    // and sends Complete at the end: one lock orders those uses.
    let urgent_ch = Mutex::new((&mut urgent_w[0], &mut urgent_enc[0]));
    let dedicated = !push_w.is_empty();
    let result = std::thread::scope(|s| -> Result<(), MigrateError> {
        let reader = s.spawn(|| -> Result<DoneReport, MigrateError> {
            priority::urgent(); // fault requests arrive here

            let r = (|| loop {
                let (h, p) = control.recv("post-copy")?;
                match h.kind {
                    FrameType::PageRequest => {
                        let pages = message::decode_page_request(p)?;
                        asked.fetch_add(pages.len() as u64, Ordering::Relaxed);
                        if let Ok(mut q) = requests.0.lock() {
                            q.extend(pages);
                        }
                        requests.1.notify_all();
                    }
                    FrameType::Running => {
                        // Under the queue's lock, so a pusher waiting for it cannot miss it.
                        if let Ok(_q) = requests.0.lock() {
                            let _ = running_at.set(Instant::now());
                        }
                        requests.1.notify_all();
                    }
                    // The acknowledgement of the round sent inside the pause (no Ready/Go
                    // exchange consumed it): nothing to do.
                    FrameType::RoundEnd => {}
                    FrameType::Done if running_at.get().is_some() => {
                        return Ok(DoneReport::decode(p)?)
                    }
                    other => {
                        return Err(MigrateError::Unexpected {
                            got: other,
                            during: "post-copy",
                        })
                    }
                }
            })();
            stop.store(true, Ordering::SeqCst);
            requests.1.notify_all();
            r
        });
        // Channel 0's own thread: requested pages, the moment they are asked for (with one channel
        // it shares the channel, and the queue, with the push; after the push it serves alone).
        let urgent = {
            let (requests, sent, stop, urgent_sent, urgent_ch, follow) =
                (&requests, &sent, &stop, &urgent_sent, &urgent_ch, &follow);
            s.spawn(move || -> Result<(), MigrateError> {
                priority::urgent(); // and leave from here
                let mut buf = vec![0u8; POSTCOPY_URGENT_BATCH * PAGE_SIZE];
                let mut out = Vec::new();
                let mut walk = FaultWalk::new();
                let mut around = Vec::new();
                loop {
                    let pages: Vec<u64> = {
                        let q = requests
                            .0
                            .lock()
                            .map_err(|_| MigrateError::Config("lock poisoned".into()))?;
                        let mut q = requests
                            .1
                            .wait_while(q, |q| q.is_empty() && !stop.load(Ordering::SeqCst))
                            .map_err(|_| MigrateError::Config("lock poisoned".into()))?;
                        if q.is_empty() {
                            return Ok(());
                        }
                        let n = q.len().min(POSTCOPY_URGENT_BATCH);
                        let v: Vec<u64> = q.drain(..n).filter(|&p| needed.get(p)).collect();
                        v
                    };
                    // A guest walking its memory gets the pages ahead of its fault too, and the
                    // push moves there (ferry_model::walk), in arrival order of the faults.
                    around.clear();
                    for &p in &pages {
                        let answer = walk.fault(p);
                        let end = (p + 1 + answer.around).min(needed.pages());
                        around.extend(
                            (p + 1..end).filter(|&q| needed.get(q) && sent.test_and_set(q)),
                        );
                        if let Some(f) = answer.push_from {
                            follow.store(f.min(needed.pages()), Ordering::Relaxed);
                        }
                    }
                    let mut pages = pages;
                    pages.sort_unstable();
                    pages.dedup();
                    for &p in &pages {
                        sent.test_and_set(p);
                    }
                    let mut ch = urgent_ch
                        .lock()
                        .map_err(|_| MigrateError::Config("lock poisoned".into()))?;
                    let (w, enc) = &mut *ch;
                    // The faulting pages in a frame of their own: the guest waits for them only.
                    send_pages(&**mem, w, enc, &pages, &mut buf, &mut out)?;
                    for chunk in around.chunks(BATCH_PAGES) {
                        send_pages(&**mem, w, enc, chunk, &mut buf, &mut out)?;
                    }
                    urgent_sent.fetch_add((pages.len() + around.len()) as u64, Ordering::Relaxed);
                }
            })
        };
        // Everything that serves the destination listens now: let it resume the guest.
        let go = match urgent_ch.lock() {
            Ok(_) if plan.go_implied => Ok(()),
            Ok(mut ch) => ch.0.send(FrameType::Go, 0, &[]),
            Err(_) => Err(MigrateError::Config("lock poisoned".into())),
        };
        events(Event::Phase {
            phase: Phase::Postcopy,
        });
        // The background push: channel 1 when there is one, else channel 0 shared with requests.
        let mut push_ch = push_w.first_mut().zip(push_enc.first_mut());
        let mut cursor = plan.head.unwrap_or(0);
        let mut buf = vec![0u8; BATCH_PAGES * PAGE_SIZE];
        let mut out = Vec::with_capacity(BATCH_PAGES * PAGE_SIZE + 4096);
        let mut last_request = Instant::now() - Duration::from_secs(1);
        let mut no_requests = VecDeque::new();
        let (finished_tx, finished) = std::sync::mpsc::channel::<()>();
        let (requests, sent, stop, urgent_ch, pushed, push_bytes, follow) = (
            &requests,
            &sent,
            &stop,
            &urgent_ch,
            &pushed,
            &push_bytes,
            &follow,
        );
        let running_at = &running_at;
        let mut push_loop = move |idle: &mut priority::IdleWindow| -> Result<(), MigrateError> {
            {
                // The push starts once the guest runs there. Without Go (fast commit), pages pushed
                // before the destination armed its fault tracking would land as plain pages and
                // then be dropped as stale. With Go, pushed pages landing while the destination
                // resumes its vCPUs delayed the resume by up to 3 ms (the Go frame reached the
                // destination's loop late, or the resume itself took 1.7-2.4 ms; 512 MiB working
                // set, timestamps on both hosts); waiting for Running costs the push one one-way
                // trip. Engine downtime over 20 runs: 1.1-1.8 ms, was 1.3-4.8 ms.
                let q = requests
                    .0
                    .lock()
                    .map_err(|_| MigrateError::Config("lock poisoned".into()))?;
                let _q = requests
                    .1
                    .wait_while(q, |_| {
                        running_at.get().is_none() && !stop.load(Ordering::SeqCst)
                    })
                    .map_err(|_| MigrateError::Config("lock poisoned".into()))?;
            }
            loop {
                idle.tick();
                if stop.load(Ordering::SeqCst) {
                    break Err(MigrateError::PeerClosed("post-copy"));
                }
                // The guest walks its memory: push where it goes, ahead of its faults (the pages
                // written before the pause are behind such a guest, pushed in turn).
                let f = follow.swap(NO_FOLLOW, Ordering::Relaxed);
                if f != NO_FOLLOW {
                    cursor = f;
                    hot.clear();
                }
                let batch = if dedicated {
                    // Not the request queue's lock: a pusher descheduled while holding it (it
                    // yields its CPU to everything) kept arriving requests waiting for it.
                    next_push_batch(
                        needed,
                        sent,
                        &mut cursor,
                        &mut no_requests,
                        &mut hot,
                        BATCH_PAGES,
                    )
                } else {
                    let Ok(mut q) = requests.0.lock() else {
                        break Err(MigrateError::Config("lock poisoned".into()));
                    };
                    if !q.is_empty() {
                        last_request = Instant::now();
                    }
                    // Sharing the channel with requests: small batches while the guest is faulting.
                    let max = if last_request.elapsed() < Duration::from_millis(20) {
                        POSTCOPY_URGENT_BATCH
                    } else {
                        BATCH_PAGES
                    };
                    next_push_batch(needed, sent, &mut cursor, &mut q, &mut hot, max)
                };
                if batch.is_empty() {
                    break Ok(());
                }
                let sent_now = match push_ch.as_mut() {
                    Some((w, enc)) => {
                        send_pages(&**mem, w, enc, &batch, &mut buf, &mut out).map(|_| w.bytes)
                    }
                    None => match urgent_ch.lock() {
                        Ok(mut ch) => {
                            let (w, enc) = &mut *ch;
                            send_pages(&**mem, w, enc, &batch, &mut buf, &mut out).map(|_| w.bytes)
                        }
                        Err(_) => Err(MigrateError::Config("lock poisoned".into())),
                    },
                };
                let bytes = match sent_now {
                    Ok(b) => b,
                    Err(e) => break Err(e),
                };
                pushed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                push_bytes.store(bytes, Ordering::Relaxed);
            }
        };
        let pusher = go.is_ok().then(|| {
            s.spawn(move || -> Result<(), MigrateError> {
                // The guest waits on requested pages, served by other threads: the push takes
                // what CPU they leave (on two cores it otherwise delayed the guest by milliseconds).
                let mut idle = priority::IdleWindow::enter();
                let r = push_loop(&mut idle);
                let _ = finished_tx.send(());
                r
            })
        });

        // Progress while the push runs; wake the moment it ends.
        let pushed_result = match pusher {
            None => go,
            Some(h) => {
                while finished.recv_timeout(Duration::from_millis(100)).is_err() && !h.is_finished()
                {
                    events(Event::Progress {
                        round: u32::MAX,
                        done: pushed.load(Ordering::Relaxed),
                        total,
                        bytes: push_bytes.load(Ordering::Relaxed),
                    });
                }
                h.join().unwrap_or(Err(MigrateError::Config(
                    "post-copy pusher panicked".into(),
                )))
            }
        };
        let pushed = pushed.load(Ordering::Relaxed);
        // Requests are served until the destination has every page (Done), not only until the push
        // is sent: a fault on a page still crossing the link behind the push would otherwise wait
        // for the whole pipeline to drain (133 ms at 1 Gbit/s with 20 ms RTT).
        let finish = pushed_result.and_then(|()| {
            events(Event::Phase {
                phase: Phase::Verify,
            });
            let digest = if opts.verify {
                background_digest(&**mem)
            } else {
                [0; 16]
            };
            report.source_digest = if opts.verify {
                hex(&digest)
            } else {
                String::new()
            };
            let summary = RoundSummary {
                round: report.rounds.len() as u32,
                pages: report.pages_sent + pushed + urgent_sent.load(Ordering::Relaxed),
                digest,
            };
            let mut ch = urgent_ch
                .lock()
                .map_err(|_| MigrateError::Config("lock poisoned".into()))?;
            ch.0.send(
                FrameType::Complete,
                u8::from(opts.verify),
                &summary.encode(),
            )
        });
        if finish.is_err() {
            stop.store(true, Ordering::SeqCst);
            requests.1.notify_all();
            if let Ok(ch) = urgent_ch.lock() {
                ch.0.stream().shutdown();
            }
        }
        let done = match (finish, reader.join()) {
            (Ok(()), Ok(done)) => done,
            (Ok(()), Err(_)) => Err(MigrateError::Config("post-copy reader panicked".into())),
            // The destination's own word on why (its Abort) beats our failed send.
            (Err(_), Ok(Err(aborted @ MigrateError::PeerAborted(_)))) => Err(aborted),
            (Err(e), _) => Err(e),
        };
        // The reader set `stop` as it ended: the request server ends too.
        requests.1.notify_all();
        let urgent_result = urgent.join().unwrap_or(Err(MigrateError::Config(
            "post-copy sender panicked".into(),
        )));
        report.pages_sent += pushed + urgent_sent.load(Ordering::Relaxed);
        report.postcopy_requests = asked.load(Ordering::Relaxed);
        let done = done?;
        if let Err(e) = urgent_result {
            // Every page arrived (Done) even so: worth a warning, not a failure.
            tracing::warn!("post-copy request server: {e}");
        }
        report.digest_match = done.digest_match;
        report.guest_observed = done.guest_observed;
        Ok(())
    });
    // Before the destination said it runs, nobody knows whether it does: the guest stays paused
    // here either way, and the error says which case this is.
    let Some(&running) = running_at.get() else {
        return Err(match result {
            // The destination sends Running before any later Abort: it never ran the guest.
            Err(aborted @ MigrateError::PeerAborted(_)) => aborted,
            Err(e) => MigrateError::OutcomeUnknown(e.to_string()),
            Ok(()) => {
                MigrateError::OutcomeUnknown("the destination never said it runs the VM".into())
            }
        });
    };
    report.downtime_ms = running.duration_since(t_pause).as_secs_f64() * 1e3;
    report.throughput_mbps = copy_throughput(&report.rounds);
    result.map_err(|e| MigrateError::PostcopyInterrupted(e.to_string()))?;
    report.bytes_sent = link.bytes();
    for w in &link.writers {
        w.stream().shutdown();
    }
    events(Event::Phase { phase: Phase::Done });
    Ok(())
}

/// No walk to follow (see `follow` in [`push_pages`]).
const NO_FOLLOW: u64 = u64::MAX;

/// Reads `pages` from guest memory (a copy: the source is paused, but this keeps one code path),
/// encodes them as one batch and sends it.
pub(crate) fn send_pages(
    mem: &dyn GuestMemory,
    w: &mut FrameWriter,
    enc: &mut BatchEncoder,
    pages: &[u64],
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), MigrateError> {
    if pages.is_empty() {
        return Ok(());
    }
    buf.resize(pages.len() * PAGE_SIZE, 0);
    for (i, &p) in pages.iter().enumerate() {
        mem.read_page(p, &mut buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
    }
    let refs: Vec<PageRef<'_>> = pages
        .iter()
        .enumerate()
        .map(|(i, &gfn)| PageRef {
            gfn,
            data: &buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE],
        })
        .collect();
    out.clear();
    enc.encode(&refs, out);
    w.send(FrameType::Pages, 0, out)
}

/// Waits for the destination to say it has applied round `round` on every channel.
fn await_round_ack(link: &mut Link, round: u32) -> Result<(), MigrateError> {
    let p = link.control.expect(
        FrameType::RoundEnd,
        "waiting for the destination to apply a round",
    )?;
    let ack = RoundSummary::decode(p)?;
    if ack.round != round {
        return Err(MigrateError::Wire(ferry_wire::WireError::Malformed(
            "round acknowledgement out of order",
        )));
    }
    Ok(())
}

/// Waits for Ready; acknowledgements of the final round may arrive first and are skipped.
fn expect_ready(link: &mut Link) -> Result<(), MigrateError> {
    loop {
        let (h, _) = link
            .control
            .recv("switch-over (waiting for the destination to load state)")?;
        match h.kind {
            FrameType::Ready => return Ok(()),
            FrameType::RoundEnd => continue,
            got => {
                return Err(MigrateError::Unexpected {
                    got,
                    during: "switch-over",
                })
            }
        }
    }
}
