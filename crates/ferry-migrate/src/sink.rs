//! The receiving side: one thread per channel applies pages; the main thread walks the switch-over
//! states (waiting for state, loaded, running, verified). Until `Go` arrives nothing runs here, and
//! any failure drops the half-built VM while the source resumes its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_wire::codec::BatchDecoder;
use ferry_wire::message::{
    self, channel_key, features, Hello, HelloAck, RoundSummary, VmConfig, PROTOCOL_VERSION,
};
use ferry_wire::{FrameType, WireError};

use crate::channel::{split, FrameReader, FrameWriter, Stream};
use crate::digest::PageHashes;
use crate::memory::RamStore;
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
        v
    }

    /// Decodes the Done payload.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        if b.len() != 9 {
            return Err(WireError::Malformed("Done payload must be 9 bytes"));
        }
        let f = b[0];
        let gap_ns = u64::from_le_bytes(
            b[1..9]
                .try_into()
                .map_err(|_| WireError::Malformed("Done"))?,
        );
        Ok(Self {
            digest_match: (f & 1 != 0).then_some(f & 2 != 0),
            guest_observed: (f & 4 != 0).then_some(GuestObserved {
                gap_ns,
                sequence_continues: f & 8 != 0,
            }),
        })
    }
}

enum Msg {
    RoundEnd(usize, u32),
    DeviceState(u32, Vec<u8>),
    Go,
    Complete(RoundSummary, bool),
    Failed(MigrateError),
    Closed,
}

/// Receives one VM: `accept` yields the source's connections (one per channel).
pub fn receive<F: SinkFactory>(
    accept: &mut dyn FnMut() -> std::io::Result<Stream>,
    factory: &mut F,
    opts: &ReceiveOptions,
) -> Result<Incoming<F::Sink>, MigrateError> {
    let (mut r0, mut w0, hello) = accept_channel(accept, opts, None)?;
    let mut readers = vec![];
    for ch in 1..hello.channels {
        let (r, _w, h) = accept_channel(accept, opts, Some((&hello.migration_id, ch)))?;
        debug_assert_eq!(h.channel, ch);
        readers.push(r);
    }
    let t0 = Instant::now();
    let cfg = VmConfig::decode(r0.expect(FrameType::VmConfig, "configuration")?)?;
    let mut sink = factory.create(&cfg)?;
    let mem = sink.memory();
    let hashes = Arc::new(PageHashes::new(mem.pages()));
    let running = Arc::new(AtomicBool::new(false));
    let (tx, rx) = channel();
    readers.insert(0, r0);
    let channels = readers.len();
    let mut bytes_handles = Vec::new();
    for (ch, r) in readers.into_iter().enumerate() {
        let (tx, mem, hashes, running) = (tx.clone(), mem.clone(), hashes.clone(), running.clone());
        bytes_handles.push(std::thread::spawn(move || {
            let mut r = r;
            let mut store = RamStore::new(mem);
            if let Err(e) = pump(ch, &mut r, &mut store, &hashes, &running, &tx) {
                let _ = tx.send(Msg::Failed(e));
            }
            r.bytes
        }));
    }
    drop(tx);
    let outcome = switch_over(
        &mut sink, &mut w0, &rx, channels, &hashes, &running, opts, t0,
    );
    match outcome {
        Ok((digest_match, total_ms)) => {
            // The source closes its end after Done; collect what the pumps counted.
            let bytes = bytes_handles
                .into_iter()
                .filter_map(|h| h.join().ok())
                .sum::<u64>()
                + w0.bytes;
            let guest_observed = sink.guest_observed();
            Ok(Incoming {
                sink,
                digest_match,
                guest_observed,
                bytes,
                total_ms,
            })
        }
        Err(e) => {
            let _ = w0.send(FrameType::Abort, 0, &message::encode_reason(&e.to_string()));
            w0.stream().shutdown();
            Err(e)
        }
    }
}

fn accept_channel(
    accept: &mut dyn FnMut() -> std::io::Result<Stream>,
    opts: &ReceiveOptions,
    expect: Option<(&[u8; 16], u16)>,
) -> Result<(FrameReader, FrameWriter, Hello), MigrateError> {
    let stream = accept().map_err(MigrateError::io("accepting a migration connection"))?;
    stream
        .set_read_timeout(Some(opts.timeout))
        .map_err(MigrateError::io("socket option"))?;
    stream
        .set_write_timeout(Some(opts.timeout))
        .map_err(MigrateError::io("socket option"))?;
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
        features: hello.features & features::ALL,
        refusal: None,
    };
    w.send(FrameType::HelloAck, 0, &ack.encode())?;
    let key = channel_key(&hello.migration_id, hello.channel);
    r.set_key(key);
    w.set_key(key);
    Ok((r, w, hello))
}

fn refuse(w: &mut FrameWriter, why: &str) {
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
    r: &mut FrameReader,
    store: &mut RamStore,
    hashes: &PageHashes,
    running: &AtomicBool,
    tx: &Sender<Msg>,
) -> Result<(), MigrateError> {
    let mut decoder = BatchDecoder::new();
    loop {
        let (h, p) = match r.recv("page transfer") {
            Ok(f) => f,
            Err(MigrateError::PeerClosed(_)) => {
                let _ = tx.send(Msg::Closed);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match h.kind {
            FrameType::Pages => {
                if running.load(Ordering::SeqCst) {
                    return Err(MigrateError::Unexpected {
                        got: h.kind,
                        during: "post-switch-over (the VM runs)",
                    });
                }
                decoder.decode(p, store)?;
                store.record_hashes(Some(hashes));
            }
            FrameType::RoundEnd => {
                let _ = tx.send(Msg::RoundEnd(ch, RoundSummary::decode(p)?.round));
            }
            FrameType::DeviceState if ch == 0 => {
                if p.len() < 4 {
                    return Err(WireError::Malformed("device state frame too short").into());
                }
                let round = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                let _ = tx.send(Msg::DeviceState(round, p[4..].to_vec()));
            }
            FrameType::Go if ch == 0 => {
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

#[allow(clippy::too_many_arguments)]
fn switch_over<K: MigrationSink>(
    sink: &mut K,
    w0: &mut FrameWriter,
    rx: &Receiver<Msg>,
    channels: usize,
    hashes: &PageHashes,
    running: &AtomicBool,
    opts: &ReceiveOptions,
    t0: Instant,
) -> Result<(Option<bool>, f64), MigrateError> {
    let mut last_round: Vec<Option<u32>> = vec![None; channels];
    let mut pending: Option<(u32, Vec<u8>)> = None;
    let mut loaded = false;
    let mut total_ms = 0.0;
    loop {
        let msg = rx
            .recv_timeout(opts.timeout + Duration::from_secs(1))
            .map_err(|_| MigrateError::PeerClosed("transfer"))?;
        match msg {
            Msg::RoundEnd(ch, r) => last_round[ch] = Some(r),
            Msg::DeviceState(r, s) => pending = Some((r, s)),
            Msg::Go if loaded => {
                running.store(true, Ordering::SeqCst);
                sink.resume()?;
                total_ms = t0.elapsed().as_secs_f64() * 1e3;
                w0.send(FrameType::Running, 0, &[]).ok();
            }
            Msg::Go => {
                return Err(MigrateError::Unexpected {
                    got: FrameType::Go,
                    during: "switch-over (state not loaded)",
                })
            }
            Msg::Complete(summary, verify) => {
                if !running.load(Ordering::SeqCst) {
                    return Err(MigrateError::Unexpected {
                        got: FrameType::Complete,
                        during: "switch-over",
                    });
                }
                let digest_match = verify.then(|| hashes.digest() == summary.digest);
                // Give the guest a moment to show its first heartbeat here.
                let deadline = Instant::now() + Duration::from_millis(500);
                while sink.guest_observed().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
                let done = DoneReport {
                    digest_match,
                    guest_observed: sink.guest_observed(),
                };
                let _ = w0.send(FrameType::Done, 0, &done.encode());
                return Ok((digest_match, total_ms));
            }
            Msg::Failed(e) => return Err(e),
            Msg::Closed if !running.load(Ordering::SeqCst) => {
                return Err(MigrateError::PeerClosed("transfer (before switch-over)"))
            }
            Msg::Closed => {
                tracing::warn!("source closed before verification; the VM runs here");
                return Ok((None, total_ms));
            }
        }
        if !loaded {
            if let Some((r, state)) = &pending {
                if last_round.iter().all(|l| l.is_some_and(|l| l >= *r)) {
                    sink.restore_state(state)?;
                    loaded = true;
                    w0.send(FrameType::Ready, 0, &[])?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                }),
            },
        ] {
            assert_eq!(DoneReport::decode(&d.encode()).unwrap(), d);
        }
        assert!(DoneReport::decode(&[1, 2]).is_err());
    }
}
