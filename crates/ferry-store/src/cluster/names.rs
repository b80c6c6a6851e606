//! Names of hosts, VMs and migrations: checked once, so they are safe inside store keys.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name that cannot be used as a host, VM or migration name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {name:?}: use 1 to 128 of A-Z a-z 0-9 . _ - (not only dots)")]
pub struct InvalidName {
    /// What was being named.
    pub kind: &'static str,
    /// The rejected name.
    pub name: String,
}

fn check(kind: &'static str, name: String) -> Result<String, InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.bytes().all(|b| b == b'.');
    if ok {
        Ok(name)
    } else {
        Err(InvalidName { kind, name })
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $t:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $t(String);

        impl $t {
            /// Checks and wraps a name.
            pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
                check($kind, name.into()).map(Self)
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $t {
            type Error = InvalidName;

            fn try_from(s: String) -> Result<Self, InvalidName> {
                Self::new(s)
            }
        }

        impl From<$t> for String {
            fn from(n: $t) -> String {
                n.0
            }
        }

        impl FromStr for $t {
            type Err = InvalidName;

            fn from_str(s: &str) -> Result<Self, InvalidName> {
                Self::new(s)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A host's name (unique in the cluster).
    HostName,
    "host"
);
name_type!(
    /// A VM's id (unique in the cluster).
    VmId,
    "VM"
);
name_type!(
    /// A migration's id (unique in the cluster).
    MigrationId,
    "migration"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_names_that_would_break_keys() {
        assert!(HostName::new("host-1.rack_2").is_ok());
        for bad in ["", "a/b", "..", ".", "a b", "ü", &"x".repeat(129)] {
            assert!(HostName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<VmId>("\"../etc\"").is_err());
        assert_eq!(
            serde_json::from_str::<VmId>("\"vm-7\"").unwrap().as_str(),
            "vm-7"
        );
    }
}
