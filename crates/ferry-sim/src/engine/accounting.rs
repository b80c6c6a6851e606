//! Streaming accounting of CloudSim's state histories (SLATAH, PDM, shutdowns).

/// One host state-history entry, as CloudSim's `HostStateHistoryEntry`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostEntry {
    /// Time of the entry.
    pub t: f64,
    /// Allocated MIPS.
    pub alloc: f64,
    /// Requested MIPS.
    pub req: f64,
    /// The host is on.
    pub active: bool,
}

/// Running totals over one host's entries (entries at the same time replace each other).
#[derive(Debug, Clone, Default)]
pub struct HostAcc {
    last: Option<HostEntry>,
    prev_final_active: Option<bool>,
    /// Seconds the host was active.
    pub active_s: f64,
    /// Seconds the host was active and short of MIPS.
    pub violation_s: f64,
    /// Active-to-off transitions.
    pub shutdowns: u64,
}

impl HostAcc {
    /// Records an entry.
    pub fn push(&mut self, e: HostEntry) {
        if let Some(last) = self.last {
            if last.t == e.t {
                self.last = Some(e);
                return;
            }
            if last.active {
                let dt = e.t - last.t;
                self.active_s += dt;
                if last.alloc < last.req {
                    self.violation_s += dt;
                }
            }
            self.finalize(last);
        }
        self.last = Some(e);
    }

    /// Whether the latest entry says the host is off (another off entry then changes
    /// nothing: no time is counted, and the shutdown was counted when the first was closed).
    pub fn is_off(&self) -> bool {
        self.last.is_some_and(|e| !e.active)
    }

    fn finalize(&mut self, e: HostEntry) {
        if self.prev_final_active.unwrap_or(true) && !e.active {
            self.shutdowns += 1;
        }
        self.prev_final_active = Some(e.active);
    }

    /// Closes the history at the end of the run.
    pub fn close(&mut self) {
        if let Some(last) = self.last.take() {
            self.finalize(last);
        }
    }
}

/// Running totals over one VM's entries.
#[derive(Debug, Clone, Default)]
pub struct VmAcc {
    last: Option<(f64, f64, f64, bool)>,
    /// MIPS·s requested.
    pub requested: f64,
    /// MIPS·s allocated.
    pub allocated: f64,
    /// MIPS·s lost while migrating.
    pub lost_migrating: f64,
}

impl VmAcc {
    /// Records an entry (time, allocated, requested, migrating).
    pub fn push(&mut self, t: f64, alloc: f64, req: f64, migrating: bool) {
        if let Some((lt, la, lr, lm)) = self.last {
            if lt != t {
                let dt = t - lt;
                self.requested += lr * dt;
                self.allocated += la * dt;
                if lm {
                    self.lost_migrating += (lr - la) * dt;
                }
            }
        }
        self.last = Some((t, alloc, req, migrating));
    }
}
