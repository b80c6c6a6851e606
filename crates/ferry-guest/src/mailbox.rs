//! The mailbox page shared by the guest and its host (docs/GUEST-ABI.md, "Mailbox at 0x8000").

/// Guest-physical address of the mailbox page.
pub const MAILBOX_ADDR: u64 = 0x8000;
/// Size of the mailbox page.
pub const MAILBOX_SIZE: usize = 4096;
/// Bytes of the page that hold fields (the rest is reserved).
pub const MAILBOX_USED: usize = 0x88;

/// Value of the `magic` field once set-up is done ("FERRYGST" read as little-endian bytes).
pub const MAGIC: u64 = 0x5453_4759_5252_4546;
/// ABI version this crate implements.
pub const ABI_VERSION: u64 = 1;

/// Offset of `magic`.
pub const OFF_MAGIC: u64 = 0x00;
/// Offset of `abi`.
pub const OFF_ABI: u64 = 0x08;
/// Offset of `state`.
pub const OFF_STATE: u64 = 0x10;
/// Offset of `iterations` (page writes done).
pub const OFF_ITERATIONS: u64 = 0x18;
/// Offset of `heartbeats` (heartbeats emitted).
pub const OFF_HEARTBEATS: u64 = 0x20;
/// Offset of `checksum`.
pub const OFF_CHECKSUM: u64 = 0x28;
/// Offset of `errors` (self-check mismatches in the loop).
pub const OFF_ERRORS: u64 = 0x30;
/// Offset of `verify_request` (written by the host).
pub const OFF_VERIFY_REQUEST: u64 = 0x38;
/// Offset of `verify_done`.
pub const OFF_VERIFY_DONE: u64 = 0x40;
/// Offset of `verify_errors`.
pub const OFF_VERIFY_ERRORS: u64 = 0x48;
/// Offset of `verify_pages` (pages swept: all of the working set).
pub const OFF_VERIFY_PAGES: u64 = 0x50;
/// Offset of `ws_base`.
pub const OFF_WS_BASE: u64 = 0x58;
/// Offset of `ws_pages`.
pub const OFF_WS_PAGES: u64 = 0x60;
/// Offset of `params`.
pub const OFF_PARAMS: u64 = 0x68;
/// Offset of `tsc_hz`.
pub const OFF_TSC_HZ: u64 = 0x70;
/// Offset of `verify_written` (pages the last sweep checked against a tag: the written ones).
pub const OFF_VERIFY_WRITTEN: u64 = 0x78;
/// Offset of `beat` (what the guest writes to COM1: [`crate::Heartbeat::pack`]).
pub const OFF_BEAT: u64 = 0x80;

/// `state`: set-up (and the optional fill) in progress.
pub const STATE_BOOTING: u64 = 0;
/// `state`: the workload loop runs.
pub const STATE_RUNNING: u64 = 1;
/// `state`: a verification sweep runs.
pub const STATE_VERIFYING: u64 = 2;
/// `state`: the guest stopped on a failed check.
pub const STATE_HALTED: u64 = 3;

/// A decoded mailbox page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mailbox {
    /// Always [`MAGIC`] in a parsed mailbox.
    pub magic: u64,
    /// ABI version the guest speaks.
    pub abi: u64,
    /// One of the `STATE_*` values.
    pub state: u64,
    /// Page writes done so far (the fill included).
    pub iterations: u64,
    /// Heartbeats emitted so far.
    pub heartbeats: u64,
    /// Running checksum of every first word read before its rewrite.
    pub checksum: u64,
    /// Self-check mismatches seen by the loop.
    pub errors: u64,
    /// Last verification request written by the host.
    pub verify_request: u64,
    /// Request the last finished sweep answered.
    pub verify_done: u64,
    /// Mismatching pages found by the last sweep.
    pub verify_errors: u64,
    /// Pages swept by the last sweep (the whole working set).
    pub verify_pages: u64,
    /// Guest-physical base of the working set.
    pub ws_base: u64,
    /// Working-set pages.
    pub ws_pages: u64,
    /// Packed workload parameters (see [`Params`]).
    pub params: u64,
    /// TSC frequency baked into the image.
    pub tsc_hz: u64,
    /// Pages the last sweep compared with their tags (those written at least once).
    pub verify_written: u64,
    /// What the guest writes to COM1, packed ([`Mailbox::heartbeat`] decodes it).
    pub beat: u64,
}

fn read_u64(page: &[u8], off: u64) -> Option<u64> {
    let off = usize::try_from(off).ok()?;
    let bytes: [u8; 8] = page.get(off..off + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

impl Mailbox {
    /// Decodes a mailbox from the start of `page`; `None` if it is too short or the magic is not set yet.
    pub fn parse(page: &[u8]) -> Option<Mailbox> {
        let f = |off| read_u64(page, off);
        let magic = f(OFF_MAGIC)?;
        if magic != MAGIC {
            return None;
        }
        Some(Mailbox {
            magic,
            abi: f(OFF_ABI)?,
            state: f(OFF_STATE)?,
            iterations: f(OFF_ITERATIONS)?,
            heartbeats: f(OFF_HEARTBEATS)?,
            checksum: f(OFF_CHECKSUM)?,
            errors: f(OFF_ERRORS)?,
            verify_request: f(OFF_VERIFY_REQUEST)?,
            verify_done: f(OFF_VERIFY_DONE)?,
            verify_errors: f(OFF_VERIFY_ERRORS)?,
            verify_pages: f(OFF_VERIFY_PAGES)?,
            ws_base: f(OFF_WS_BASE)?,
            ws_pages: f(OFF_WS_PAGES)?,
            params: f(OFF_PARAMS)?,
            tsc_hz: f(OFF_TSC_HZ)?,
            verify_written: f(OFF_VERIFY_WRITTEN)?,
            beat: f(OFF_BEAT)?,
        })
    }

    /// Whether the last requested verification sweep has finished.
    pub fn verify_finished(&self) -> bool {
        self.verify_request == self.verify_done
    }

    /// What the guest writes to COM1 (None for a kind this crate does not know).
    pub fn heartbeat(&self) -> Option<crate::Heartbeat> {
        crate::Heartbeat::unpack(self.beat)
    }

    /// Unpacks the `params` field.
    pub fn params(&self) -> Params {
        Params::unpack(self.params)
    }
}

/// The `params` field: `pattern | entropy << 8 | full_page << 16 | fill << 17`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Pattern code: 0 sequential, 1 random, 2 hot/cold, 3 mixed.
    pub pattern: u8,
    /// Entropy code: 0 zero, 1 text, 2 random, 3 mixed.
    pub entropy: u8,
    /// Whether loop writes rewrite the whole page.
    pub full_page: bool,
    /// Whether the working set was filled before the loop.
    pub fill: bool,
}

impl Params {
    /// Packs into the mailbox encoding.
    pub fn pack(&self) -> u64 {
        u64::from(self.pattern)
            | u64::from(self.entropy) << 8
            | u64::from(self.full_page) << 16
            | u64::from(self.fill) << 17
    }

    /// Unpacks the mailbox encoding.
    pub fn unpack(v: u64) -> Params {
        Params {
            pattern: (v & 0xFF) as u8,
            entropy: (v >> 8 & 0xFF) as u8,
            full_page: v >> 16 & 1 == 1,
            fill: v >> 17 & 1 == 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_with(fields: &[(u64, u64)]) -> Vec<u8> {
        let mut page = vec![0u8; MAILBOX_SIZE];
        for &(off, v) in fields {
            let off = off as usize;
            page[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        page
    }

    #[test]
    fn magic_spells_ferrygst() {
        assert_eq!(&MAGIC.to_le_bytes(), b"FERRYGST");
    }

    #[test]
    fn parse_fields() {
        let page = page_with(&[
            (OFF_MAGIC, MAGIC),
            (OFF_ABI, 1),
            (OFF_STATE, STATE_RUNNING),
            (OFF_ITERATIONS, 77),
            (OFF_VERIFY_REQUEST, 5),
            (OFF_VERIFY_DONE, 4),
            (OFF_TSC_HZ, 2_000_000_000),
            (OFF_PARAMS, 0x3_0201),
            (OFF_BEAT, 1 | 1024 << 8),
        ]);
        let mb = Mailbox::parse(&page).unwrap();
        assert_eq!(mb.iterations, 77);
        assert_eq!(mb.state, STATE_RUNNING);
        assert_eq!(mb.tsc_hz, 2_000_000_000);
        assert!(!mb.verify_finished());
        let p = mb.params();
        assert_eq!(
            (p.pattern, p.entropy, p.full_page, p.fill),
            (1, 2, true, true)
        );
        assert_eq!(p.pack(), 0x3_0201);
        assert_eq!(
            mb.heartbeat(),
            Some(crate::Heartbeat::Pages { every: 1024 })
        );
    }

    #[test]
    fn parse_rejects_short_or_unset() {
        assert!(Mailbox::parse(&[0u8; MAILBOX_SIZE]).is_none());
        let page = page_with(&[(OFF_MAGIC, MAGIC)]);
        assert!(Mailbox::parse(&page[..MAILBOX_USED - 1]).is_none());
        assert!(Mailbox::parse(&page[..MAILBOX_USED]).is_some());
    }
}
