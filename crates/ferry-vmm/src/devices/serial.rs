//! COM1: vm-superio's 16550 model whose output is timestamped byte by byte on the host.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

use super::heartbeat::{is_heartbeat, HeartbeatLog};
use crate::clock::monotonic_ns;

/// COM1 raises no interrupts in ferry's guests; this trigger does nothing.
#[derive(Debug)]
pub struct NoIrq;

impl Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// Where guest console output goes, and the heartbeat log it feeds.
pub struct Console {
    out: Option<Box<dyn Write + Send>>,
    pass_heartbeats: bool,
    /// Heartbeat timing, shared with whoever reports on the VM.
    pub heartbeats: Arc<Mutex<HeartbeatLog>>,
    /// Console text (heartbeats removed), kept for reports and tests.
    pub text: Arc<Mutex<Vec<u8>>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("passthrough", &self.out.is_some())
            .finish()
    }
}

impl Console {
    /// A console that copies every byte (heartbeats too, if `pass_heartbeats`) to `out`, unbuffered.
    pub fn new(
        out: Option<Box<dyn Write + Send>>,
        pass_heartbeats: bool,
        heartbeats: HeartbeatLog,
    ) -> Self {
        Self {
            out,
            pass_heartbeats,
            heartbeats: Arc::new(Mutex::new(heartbeats)),
            text: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let now = monotonic_ns();
        for &b in buf {
            let hb = is_heartbeat(b);
            if hb {
                if let Ok(mut log) = self.heartbeats.lock() {
                    log.record(b, now);
                }
            } else if let Ok(mut text) = self.text.lock() {
                if text.len() < (1 << 20) {
                    text.push(b);
                }
            }
            if let Some(out) = self.out.as_mut() {
                if !hb || self.pass_heartbeats {
                    // A closed console (reader gone) must not stop the guest.
                    let _ = out.write_all(&[b]).and_then(|_| out.flush());
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Register state of COM1, for migration.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    /// DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub regs: [u8; 9],
    /// Bytes queued for the guest to read.
    pub in_buffer: Vec<u8>,
}

/// COM1 as the vCPU threads see it.
#[derive(Debug)]
pub struct SerialDevice {
    inner: Serial<NoIrq, NoEvents, Console>,
}

impl SerialDevice {
    /// A fresh 16550 writing to `console`.
    pub fn new(console: Console) -> Self {
        Self {
            inner: Serial::new(NoIrq, console),
        }
    }

    /// Register write at `offset` (0..8) from the guest.
    pub fn write(&mut self, offset: u8, value: u8) {
        let _ = self.inner.write(offset, value);
    }

    /// Register read at `offset` from the guest.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.inner.read(offset)
    }

    /// The console behind the port.
    pub fn console(&self) -> &Console {
        self.inner.writer()
    }

    /// Saves the register state.
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.inner.state();
        SerialSnapshot {
            regs: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// Restores register state saved by [`SerialDevice::snapshot`], keeping this device's console.
    pub fn restore(&mut self, snap: &SerialSnapshot) -> Result<(), String> {
        let r = snap.regs;
        let state = SerialState {
            baud_divisor_low: r[0],
            baud_divisor_high: r[1],
            interrupt_enable: r[2],
            interrupt_identification: r[3],
            line_control: r[4],
            line_status: r[5],
            modem_control: r[6],
            modem_status: r[7],
            scratch: r[8],
            in_buffer: snap.in_buffer.clone(),
        };
        let console = std::mem::replace(
            self.inner.writer_mut(),
            Console::new(None, false, HeartbeatLog::default()),
        );
        self.inner =
            Serial::from_state(&state, NoIrq, NoEvents, console).map_err(|e| format!("{e:?}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::HeartbeatSnapshot;

    /// A console that keeps everything, fed `bytes` through the 16550 one register write at a time.
    fn fed(bytes: impl IntoIterator<Item = u8>) -> SerialDevice {
        let mut dev = SerialDevice::new(Console::new(
            Some(Box::new(std::io::sink())),
            true,
            HeartbeatLog::default(),
        ));
        for b in bytes {
            dev.write(0, b);
        }
        dev
    }

    #[test]
    fn a_guest_that_prints_only_text_has_no_heartbeats() {
        // `dots:N` progress, or any outside guest's console: text, never timed as heartbeats.
        let dev = fed(b"booting\n".iter().copied().chain([b'.'; 5000]));
        let log = dev.console().heartbeats.lock().unwrap();
        assert_eq!(log.snapshot(), HeartbeatSnapshot::default());
        assert_eq!(log.max_gap_since(0), None);
        assert_eq!(log.median_gap(), None);
        assert_eq!(dev.console().text.lock().unwrap().len(), 8 + 5000);
    }

    #[test]
    fn a_guest_that_prints_nothing_has_an_empty_log() {
        let dev = fed([]);
        let log = dev.console().heartbeats.lock().unwrap();
        assert_eq!(log.snapshot().count, 0);
        assert_eq!(log.max_gap_since(u64::MAX), None);
        assert_eq!(log.arrival_gap_ns, None);
        assert!(dev.console().text.lock().unwrap().is_empty());
    }

    #[test]
    fn garbage_on_com1_is_recorded_without_panic() {
        let mut x = 1u32;
        let garbage = (0..3_000_000).map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        });
        let mut dev = fed(garbage);
        // Register writes at every offset, reads too: the model takes them all.
        for off in 0..8 {
            dev.write(off, 0xFF);
            let _ = dev.read(off);
        }
        let log = dev.console().heartbeats.lock().unwrap();
        assert!(log.snapshot().count > 1_000_000);
        assert!(log.seq_breaks > 0);
        let _ = (log.max_gap_since(0), log.median_gap());
        // Text is kept up to 1 MiB, the rest dropped.
        assert_eq!(dev.console().text.lock().unwrap().len(), 1 << 20);
    }

    #[test]
    fn splits_text_from_heartbeats_and_round_trips_state() {
        let mut dev = SerialDevice::new(Console::new(None, false, HeartbeatLog::default()));
        for b in b"hi\n" {
            dev.write(0, *b);
        }
        dev.write(0, 0x80);
        dev.write(0, 0x81);
        dev.write(7, 0x5a); // scratch register
        assert_eq!(dev.console().text.lock().unwrap().as_slice(), b"hi\n");
        assert_eq!(dev.console().heartbeats.lock().unwrap().snapshot().count, 2);
        let snap = dev.snapshot();
        let mut other = SerialDevice::new(Console::new(None, false, HeartbeatLog::default()));
        other.restore(&snap).unwrap();
        assert_eq!(other.read(7), 0x5a);
        assert_eq!(other.snapshot(), snap);
    }
}
