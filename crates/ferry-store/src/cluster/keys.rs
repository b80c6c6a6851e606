//! Where each record lives in the store.
//!
//! ```text
//! <root>hosts/<host>            HostRecord        no lease   lasting description and state
//! <root>members/<host>          HostReport        host lease exists while the host is alive
//! <root>vms/<vm>                VmRecord          no lease   ownership: who may run the VM
//! <root>migrations/<migration>  MigrationRecord   no lease   migrations in flight
//! <root>history/<migration>     MigrationSample   no lease   finished migrations, measured (cost model)
//! <root>leader/planner          candidate name    its lease  the planner's leader
//! ```
//! `<root>` is `/ferry/v1/` unless a test or a second cluster picks another.

use super::names::{HostName, MigrationId, VmId};

/// The default root of ferry's keys.
pub const DEFAULT_ROOT: &str = "/ferry/v1/";

/// The key layout under one root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// Keys under `root` (a trailing `/` is added if missing).
    pub fn new(root: impl Into<String>) -> Self {
        let mut root = root.into();
        if !root.ends_with('/') {
            root.push('/');
        }
        Self { root }
    }

    /// The root.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Prefix of all host records.
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.root)
    }

    /// A host's record.
    pub fn host(&self, host: &HostName) -> String {
        format!("{}hosts/{host}", self.root)
    }

    /// Prefix of all membership keys.
    pub fn members(&self) -> String {
        format!("{}members/", self.root)
    }

    /// A host's membership key.
    pub fn member(&self, host: &HostName) -> String {
        format!("{}members/{host}", self.root)
    }

    /// Prefix of all VM records.
    pub fn vms(&self) -> String {
        format!("{}vms/", self.root)
    }

    /// A VM's record.
    pub fn vm(&self, vm: &VmId) -> String {
        format!("{}vms/{vm}", self.root)
    }

    /// Prefix of all migrations in flight.
    pub fn migrations(&self) -> String {
        format!("{}migrations/", self.root)
    }

    /// A migration's record.
    pub fn migration(&self, id: &MigrationId) -> String {
        format!("{}migrations/{id}", self.root)
    }

    /// Prefix of the measured history of finished migrations.
    pub fn history(&self) -> String {
        format!("{}history/", self.root)
    }

    /// One finished migration's measurements.
    pub fn sample(&self, id: &MigrationId) -> String {
        format!("{}history/{id}", self.root)
    }

    /// The planner election's leader key.
    pub fn planner_leader(&self) -> String {
        format!("{}leader/planner", self.root)
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_ROOT)
    }
}
