//! A host waiting for a VM: accepts incoming migrations until one arrives (finishing an
//! interrupted post-copy when its source reconnects), while its control socket answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_migrate::channel::Stream;
use ferry_migrate::{receive, KvmSinkFactory, MigrateError, ReceiveOptions};
use ferry_vmm::devices::Console;
use ferry_vmm::{RamBackingChoice, Vm};

use crate::gate::{CommitGate, GatedFactory};
use crate::outcome::describe;
use crate::protocol::{Cause, ErrorReply, HostState, HostStatus, Reply, Request};
use crate::security::Security;
use crate::server::{EventSink, Handler};
use crate::transport::MigrationListener;
use crate::vm_host::VmHost;

/// What a control socket serves: a host waiting for its VM, or the VM.
pub struct HostSlot {
    slot: Mutex<Slot>,
}

enum Slot {
    Waiting(String),
    Receiving(String),
    Vm(Arc<VmHost>),
}

impl HostSlot {
    /// A host waiting for a VM on `listen`.
    pub fn waiting(listen: String) -> HostSlot {
        HostSlot {
            slot: Mutex::new(Slot::Waiting(listen)),
        }
    }

    fn set(&self, s: Slot) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = s;
        }
    }

    /// The VM is here now.
    pub fn set_vm(&self, host: Arc<VmHost>) {
        self.set(Slot::Vm(host));
    }

    fn listen(&self) -> String {
        match self.slot.lock().as_deref() {
            Ok(Slot::Waiting(l) | Slot::Receiving(l)) => l.clone(),
            _ => String::new(),
        }
    }
}

impl Handler for HostSlot {
    fn handle(&self, request: Request, events: &EventSink<'_>) -> Result<Reply, ErrorReply> {
        let (state, listen) = match self.slot.lock().as_deref() {
            Ok(Slot::Vm(h)) => {
                let h = h.clone();
                return h.handle(request, events);
            }
            Ok(Slot::Waiting(l)) => (HostState::Waiting, l.clone()),
            Ok(Slot::Receiving(l)) => (HostState::Receiving, l.clone()),
            Err(_) => (HostState::Waiting, String::new()),
        };
        match request {
            Request::Status => Ok(Reply::Status(Box::new(HostStatus {
                state: Some(state),
                listen: Some(listen),
                ..HostStatus::default()
            }))),
            _ => Err(ErrorReply::new(
                Cause::NoVm,
                format!("no VM here yet: this host waits for one on {listen}"),
            )),
        }
    }
}

/// What happens while a host waits for its VM (for logs).
#[derive(Debug)]
pub enum ReceiveNote {
    /// A VM arrived.
    Arrived {
        /// Bytes received.
        bytes: u64,
        /// Whether the RAM digests matched (None: not checked).
        digest_match: Option<bool>,
        /// Set when a post-copy link failed: the VM waits paused for its source.
        postcopy_incomplete: Option<String>,
        /// What its RAM is made of and why (`guest RAM: ...` in logs).
        ram: String,
    },
    /// An incoming migration failed; the host waits for another (unless `once`).
    Failed(String),
    /// The VM waits paused for its source to reconnect and send the pages it lacks.
    AwaitRecovery {
        /// Pages still missing.
        missing_pages: u64,
    },
    /// A recovery attempt failed; the VM stays paused, still waiting.
    RecoveryFailed(String),
    /// The interrupted post-copy is finished: the VM runs here.
    Recovered {
        /// Pages that arrived.
        pages: u64,
        /// Whether the RAM digests matched (None: not checked).
        digest_match: Option<bool>,
    },
}

/// How a host receives.
pub struct ReceiveSettings {
    /// How long a source may stay silent.
    pub timeout: Duration,
    /// Give up after one failed incoming migration.
    pub once: bool,
    /// Fault guest RAM in while the first pages arrive (a background thread).
    pub prefault: bool,
    /// What the RAM of an arriving VM is made of (`--ram-backing`).
    pub ram_backing: RamBackingChoice,
    /// Makes the console of an incoming VM.
    pub console: Box<dyn FnMut() -> Console + Send>,
    /// Asked before an arriving VM first runs (the daemon records it as this host's).
    pub gate: Option<CommitGate>,
}

/// Waits on `listener` until a VM arrives and runs here; returns it.
pub fn receive_vm(
    listener: &MigrationListener,
    security: &Security,
    settings: ReceiveSettings,
    slot: &HostSlot,
    note: &mut dyn FnMut(ReceiveNote),
) -> Result<Vm, MigrateError> {
    let opts = ReceiveOptions {
        timeout: settings.timeout,
    };
    let mut factory = GatedFactory {
        inner: KvmSinkFactory {
            console: settings.console,
            prefault: settings.prefault,
            ram_backing: settings.ram_backing,
        },
        gate: settings.gate,
    };
    let listen = slot.listen();
    loop {
        let mut accept = || -> std::io::Result<Stream> {
            let s = listener.accept(security, opts.timeout);
            if s.is_ok() {
                slot.set(Slot::Receiving(listen.clone()));
            }
            s
        };
        let incoming = match receive(&mut accept, &mut factory, &opts) {
            Ok(i) => i,
            Err(e) => {
                slot.set(Slot::Waiting(listen.clone()));
                if settings.once {
                    return Err(e);
                }
                note(ReceiveNote::Failed(describe(&e)));
                continue;
            }
        };
        note(ReceiveNote::Arrived {
            bytes: incoming.bytes,
            digest_match: incoming.digest_match,
            postcopy_incomplete: incoming.postcopy_incomplete.clone(),
            ram: match &incoming.sink.inner.ram_plan {
                Some(plan) => plan.to_string(),
                None => format!(
                    "{}, handed over by the source on this host",
                    incoming.sink.inner.vm.ram().backing()
                ),
            },
        });
        let mut sink = incoming.sink;
        if let Some(rec) = incoming.recovery {
            // The guest stays paused here (its missing pages can never read as zero) until the
            // source reconnects with the same migration and sends them.
            note(ReceiveNote::AwaitRecovery {
                missing_pages: rec.missing_pages(),
            });
            loop {
                match ferry_migrate::recovery::recover_in(&mut accept, &mut sink, &rec, &opts) {
                    Ok(done) => {
                        note(ReceiveNote::Recovered {
                            pages: done.pages,
                            digest_match: done.digest_match,
                        });
                        break;
                    }
                    Err(e) => note(ReceiveNote::RecoveryFailed(describe(&e))),
                }
            }
        }
        return Ok(sink.into_inner().vm);
    }
}
