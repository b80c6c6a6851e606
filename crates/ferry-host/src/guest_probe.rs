//! The host side of the guest ABI: reading the mailbox and asking for a verification sweep.

use std::time::{Duration, Instant};

use ferry_guest::mailbox::{Mailbox, MAILBOX_ADDR, MAILBOX_SIZE, OFF_VERIFY_REQUEST};
use ferry_vmm::GuestRam;
use serde::{Deserialize, Serialize};

/// What the guest says about itself.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct GuestStatus {
    /// Whether a ferry guest mailbox was found.
    pub ferry_guest: bool,
    /// Guest state (1 running, 2 verifying, 3 halted on error).
    pub state: u64,
    /// Page writes so far.
    pub iterations: u64,
    /// Heartbeats so far.
    pub heartbeats: u64,
    /// Running checksum.
    pub checksum: u64,
    /// Self-check mismatches.
    pub errors: u64,
}

/// Reads the mailbox (None until the guest has set it up).
pub fn mailbox(ram: &GuestRam) -> Option<Mailbox> {
    let mut page = vec![0u8; MAILBOX_SIZE];
    ram.read(MAILBOX_ADDR, &mut page).ok()?;
    Mailbox::parse(&page)
}

/// The guest's status.
pub fn status(ram: &GuestRam) -> GuestStatus {
    mailbox(ram).map_or_else(GuestStatus::default, |m| GuestStatus {
        ferry_guest: true,
        state: m.state,
        iterations: m.iterations,
        heartbeats: m.heartbeats,
        checksum: m.checksum,
        errors: m.errors,
    })
}

/// Result of a verification sweep.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Verification {
    /// Pages the guest checked.
    pub pages: u64,
    /// Pages whose content did not match the guest's own records.
    pub errors: u64,
    /// Errors the workload loop itself had seen.
    pub loop_errors: u64,
}

/// Asks the running guest to check every working-set page against its version table, and waits.
pub fn verify(ram: &GuestRam, timeout: Duration) -> Result<Verification, String> {
    let before = mailbox(ram).ok_or("no ferry guest mailbox in this VM")?;
    let request = before.verify_request.wrapping_add(1).max(1);
    ram.write_u64(MAILBOX_ADDR + OFF_VERIFY_REQUEST, request)
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    loop {
        let m = mailbox(ram).ok_or("guest mailbox vanished")?;
        if m.verify_done == request {
            return Ok(Verification {
                pages: m.verify_pages,
                errors: m.verify_errors,
                loop_errors: m.errors,
            });
        }
        if Instant::now() > deadline {
            return Err(
                "the guest did not finish its verification sweep in time (is it running?)".into(),
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
