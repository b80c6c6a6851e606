//! Data-centre set-ups: host and VM types, and the CloudSim reference configuration.

use crate::error::SimError;
use crate::trace::Trace;
use ferry_cluster::power::PowerModel;

/// A kind of physical host.
#[derive(Debug, Clone)]
pub struct HostType {
    /// MIPS of one core.
    pub pe_mips: f64,
    /// Cores.
    pub pes: usize,
    /// RAM, MB.
    pub ram_mb: f64,
    /// Network bandwidth, Mbit/s.
    pub bw_mbps: f64,
    /// Power model.
    pub power: PowerModel,
}

/// A kind of VM (one vCPU).
#[derive(Debug, Clone)]
pub struct VmType {
    /// Requested MIPS.
    pub mips: f64,
    /// RAM, MB.
    pub ram_mb: f64,
    /// Bandwidth, Mbit/s.
    pub bw_mbps: f64,
}

/// Hosts, VMs, trace and timing of one run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Host kinds.
    pub host_types: Vec<HostType>,
    /// Kind of each host.
    pub hosts: Vec<usize>,
    /// VM kinds.
    pub vm_types: Vec<VmType>,
    /// (kind, trace row) of each VM.
    pub vms: Vec<(usize, usize)>,
    /// CPU utilisation trace.
    pub trace: Trace,
    /// Scheduling interval, s.
    pub interval_s: f64,
    /// End of the simulation, s.
    pub end_s: f64,
    /// Place VMs at start by their initial demand instead of their full size (over-commit).
    pub overcommit: bool,
}

/// The two host kinds of the literature: HP ProLiant ML110 G4 and G5.
pub fn reference_host_types() -> Vec<HostType> {
    vec![
        HostType {
            pe_mips: 1860.0,
            pes: 2,
            ram_mb: 4096.0,
            bw_mbps: 1000.0,
            power: PowerModel::ml110_g4(),
        },
        HostType {
            pe_mips: 2660.0,
            pes: 2,
            ram_mb: 4096.0,
            bw_mbps: 1000.0,
            power: PowerModel::ml110_g5(),
        },
    ]
}

/// The four VM kinds of the literature (High-CPU Medium, Extra Large, Small, Micro).
pub fn reference_vm_types() -> Vec<VmType> {
    [
        (2500.0, 870.0),
        (2000.0, 1740.0),
        (1000.0, 1740.0),
        (500.0, 613.0),
    ]
    .into_iter()
    .map(|(mips, ram_mb)| VmType {
        mips,
        ram_mb,
        bw_mbps: 100.0,
    })
    .collect()
}

impl Scenario {
    /// The CloudSim reference set-up: host i of kind i mod 2, VM i of kind
    /// floor(i / ceil(n / 4)), VM i following trace row i mod rows.
    pub fn reference(
        trace: Trace,
        hosts: usize,
        vms: Option<usize>,
        days: f64,
        interval_s: f64,
    ) -> Result<Self, SimError> {
        let scn = Self::reference_unchecked(trace, hosts, vms, days, interval_s)?;
        scn.check_capacity()?;
        Ok(scn)
    }

    /// Like [`Scenario::reference`] without the capacity check (call
    /// [`Scenario::check_capacity`] after adjusting the scenario).
    pub fn reference_unchecked(
        trace: Trace,
        hosts: usize,
        vms: Option<usize>,
        days: f64,
        interval_s: f64,
    ) -> Result<Self, SimError> {
        if hosts == 0 {
            return Err(SimError::Config("--hosts must be at least 1".into()));
        }
        if !(interval_s > 0.0 && interval_s.is_finite()) {
            return Err(SimError::Config(format!(
                "--interval must be a positive number of seconds, got {interval_s}"
            )));
        }
        if !(days > 0.0 && days.is_finite()) {
            return Err(SimError::Config(format!(
                "--days must be positive, got {days}"
            )));
        }
        let n = vms.unwrap_or(trace.rows());
        if n == 0 {
            return Err(SimError::Config("no VMs to simulate".into()));
        }
        let host_types = reference_host_types();
        let vm_types = reference_vm_types();
        let per_type = n.div_ceil(vm_types.len());
        let rows = trace.rows();
        let scn = Scenario {
            hosts: (0..hosts).map(|i| i % host_types.len()).collect(),
            vms: (0..n).map(|i| (i / per_type, i % rows)).collect(),
            host_types,
            vm_types,
            trace,
            interval_s,
            end_s: days * 86_400.0,
            overcommit: false,
        };
        Ok(scn)
    }

    /// Splits the data centre into `pods` independent pods (contiguous blocks of hosts and
    /// of VMs), each planned on its own.
    pub fn split(&self, pods: usize) -> Vec<Scenario> {
        let pods = pods.clamp(1, self.hosts.len());
        (0..pods)
            .map(|p| {
                let hs = self.pod_hosts(pods, p);
                let vs = self.vms.len() * p / pods..self.vms.len() * (p + 1) / pods;
                Scenario {
                    hosts: self.hosts[hs].to_vec(),
                    vms: self.vms[vs].to_vec(),
                    ..self.clone()
                }
            })
            .collect()
    }

    /// The hosts of pod `p` of [`Scenario::split`] into `pods` (already clamped) pods.
    pub fn pod_hosts(&self, pods: usize, p: usize) -> std::ops::Range<usize> {
        self.hosts.len() * p / pods..self.hosts.len() * (p + 1) / pods
    }

    /// Rejects set-ups whose VMs cannot all be placed at full size.
    pub fn check_capacity(&self) -> Result<(), SimError> {
        let cap: f64 = self
            .hosts
            .iter()
            .map(|&t| self.host_types[t].pe_mips * self.host_types[t].pes as f64)
            .sum();
        let need: f64 = self.vms.iter().map(|&(t, _)| self.vm_types[t].mips).sum();
        let max_pe = self
            .host_types
            .iter()
            .map(|h| h.pe_mips)
            .fold(0.0, f64::max);
        if let Some(vt) = self.vm_types.iter().find(|v| v.mips > max_pe) {
            return Err(SimError::Config(format!(
                "a VM of {} MIPS is larger than any host core ({max_pe} MIPS)",
                vt.mips
            )));
        }
        if need > cap && !self.overcommit {
            return Err(SimError::Config(format!(
                "{} VMs request {need:.0} MIPS but {} hosts offer only {cap:.0} MIPS; add hosts, remove VMs or pass --overcommit",
                self.vms.len(),
                self.hosts.len()
            )));
        }
        Ok(())
    }
}
