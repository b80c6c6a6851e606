//! Port-I/O devices: COM1, the guest exit port and the i8042 reset line.

pub mod heartbeat;
pub mod serial;

use std::sync::Mutex;

pub use heartbeat::{HeartbeatLog, HeartbeatSnapshot};
pub use serial::{Console, SerialDevice, SerialSnapshot};

/// First port of COM1.
pub const COM1: u16 = 0x3f8;
/// Port the guest writes its exit status to (QEMU's `isa-debug-exit` at the same address).
pub const EXIT_PORT: u16 = 0x501;
/// i8042 command port; 0xFE written here pulses the CPU reset line.
pub const I8042_CMD: u16 = 0x64;

/// What a port write asks the VMM to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortAction {
    /// Nothing beyond the device's own effect.
    None,
    /// The guest asked to stop with this status.
    Exit(u8),
    /// The guest asked for a reset.
    Reset,
}

/// The legacy port bus of a ferry VM.
#[derive(Debug)]
pub struct PortBus {
    /// COM1.
    pub serial: Mutex<SerialDevice>,
}

impl PortBus {
    /// A bus whose COM1 writes to `console`.
    pub fn new(console: Console) -> Self {
        Self {
            serial: Mutex::new(SerialDevice::new(console)),
        }
    }

    /// Handles an `out` from the guest.
    pub fn write(&self, port: u16, data: &[u8]) -> PortAction {
        let Some(&value) = data.first() else {
            return PortAction::None;
        };
        match port {
            COM1..=0x3ff => {
                if let Ok(mut s) = self.serial.lock() {
                    s.write((port - COM1) as u8, value);
                }
                PortAction::None
            }
            EXIT_PORT => PortAction::Exit(value),
            I8042_CMD if value == 0xfe => PortAction::Reset,
            _ => PortAction::None,
        }
    }

    /// Handles an `in` from the guest; unknown ports read as all ones, like an empty ISA bus.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        let value = match port {
            COM1..=0x3ff => self
                .serial
                .lock()
                .map(|mut s| s.read((port - COM1) as u8))
                .unwrap_or(0xff),
            I8042_CMD => 0, // status: output buffer empty, input buffer empty
            _ => 0xff,
        };
        data.fill(value);
    }
}
