//! Revocation: a deny list of certificate serial numbers and host names, checked at every
//! handshake on both sides.
//!
//! The file (`revoked.txt` beside the certificates, or any file given with `--revoked`) holds one
//! entry a line: `serial:HEX` (as `ferry certs issue` prints it; colons and case do not matter) or
//! `name:NAME` (any DNS name or IP address the certificate carries, or its common name); `#` starts
//! a comment. The file is read again at every handshake, so an operator's change takes effect
//! without restarting the host; a list that was configured and can no longer be read refuses
//! every peer rather than accepting a revoked one.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::CertificateError;
use x509_parser::extensions::GeneralName;

use super::TlsError;

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// By serial number (big-endian bytes, no leading zeros).
    Serial(Vec<u8>),
    /// By a name the certificate carries (lower case).
    Name(String),
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Revoked::Serial(s) => write!(f, "serial:{}", hex_serial(s)),
            Revoked::Name(n) => write!(f, "name:{n}"),
        }
    }
}

/// A serial number as `ferry certs` prints it: lower-case hex pairs joined by colons.
pub fn hex_serial(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn trim_serial(b: &[u8]) -> Vec<u8> {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b[first..].to_vec()
}

impl std::str::FromStr for Revoked {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(hex) = s.strip_prefix("serial:") {
            let digits: String = hex
                .chars()
                .filter(|c| *c != ':' && !c.is_whitespace())
                .collect();
            let digits = digits.strip_prefix("0x").unwrap_or(&digits);
            if digits.is_empty() || !digits.len().is_multiple_of(2) {
                return Err(format!(
                    "'{s}': a serial number is an even number of hex digits"
                ));
            }
            let bytes = (0..digits.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&digits[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| format!("'{s}': not a hex serial number"))?;
            return Ok(Revoked::Serial(trim_serial(&bytes)));
        }
        if let Some(name) = s.strip_prefix("name:") {
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("'{s}': not a host name"));
            }
            return Ok(Revoked::Name(name.to_ascii_lowercase()));
        }
        Err(format!(
            "'{s}': expected serial:HEX or name:NAME (one revoked certificate a line)"
        ))
    }
}

/// Parses a deny list (see the module doc).
pub fn parse(text: &str) -> Result<Vec<Revoked>, String> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.split('#').next().unwrap_or("").trim();
            (!l.is_empty()).then(|| l.parse().map_err(|e| format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// A deny list read from a file at every check.
#[derive(Clone, Debug)]
pub struct DenyList {
    path: PathBuf,
}

impl DenyList {
    /// The deny list in `path`, which must be readable and valid now.
    pub fn open(path: &Path) -> Result<DenyList, TlsError> {
        let list = DenyList {
            path: path.to_path_buf(),
        };
        list.entries()?;
        Ok(list)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entries now in the file.
    pub fn entries(&self) -> Result<Vec<Revoked>, TlsError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| TlsError::Read {
            path: self.path.clone(),
            source,
        })?;
        parse(&text).map_err(|what| TlsError::Pem {
            path: self.path.clone(),
            what,
        })
    }

    /// Refuses a certificate the list names (and every certificate when the list is unreadable).
    pub fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let entries = self.entries().map_err(|e| {
            tracing::error!(list = %self.path.display(), error = %e, "revocation list unreadable: refusing the peer");
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
        })?;
        match revoked_by(&entries, cert) {
            Some(entry) => {
                tracing::warn!(%entry, "peer certificate is revoked");
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            None => Ok(()),
        }
    }
}

/// The entry of `entries` that revokes `cert`, if any (an unparsable certificate matches nothing:
/// webpki has already refused it).
pub fn revoked_by<'a>(entries: &'a [Revoked], cert: &CertificateDer<'_>) -> Option<&'a Revoked> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let serial = trim_serial(x509.raw_serial());
    let mut names: Vec<String> = x509
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_ascii_lowercase))
        .collect();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(ip) => {
                    let ip: Option<std::net::IpAddr> = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).ok().map(|b| b.into()),
                        16 => <[u8; 16]>::try_from(*ip).ok().map(|b| b.into()),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    entries.iter().find(|e| match e {
        Revoked::Serial(s) => *s == serial,
        Revoked::Name(n) => names.contains(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_bad_lines_say_where() {
        let l = parse(
            "# revoked 2026-12-04\nserial:01:AB:cd\nname:HostB.example  # stolen laptop\n\nserial:0x00ff\n",
        )
        .unwrap();
        assert_eq!(
            l,
            vec![
                Revoked::Serial(vec![1, 0xab, 0xcd]),
                Revoked::Name("hostb.example".into()),
                Revoked::Serial(vec![0xff]),
            ]
        );
        assert_eq!(l[0].to_string(), "serial:01:ab:cd");
        let e = parse("name:a\nhostb\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(parse("serial:abc").is_err());
        assert!(parse("serial:zz").is_err());
        assert!(parse("name:").is_err());
    }
}
