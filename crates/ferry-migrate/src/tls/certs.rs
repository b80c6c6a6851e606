//! `ferry certs`: a cluster CA and host certificates (rcgen), written with 0600 permissions.
//!
//! The CA key stays where `init_ca` put it (the operator's machine); [`issue_bundle`] writes a
//! directory for one host holding only that host's key and certificate, the CA certificate and the
//! revocation list, which is all a host needs.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::revoke::{hex_serial, Revoked};
use super::TlsError;

/// The revocation list's file name in a certificate directory (see [`super::revoke`]).
pub const REVOKED_FILE: &str = "revoked.txt";

fn gen(e: impl std::fmt::Display) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// Writes `data` to a file readable by its owner only (keys and certificates alike). A file that
/// existed with another mode is made 0600 before anything is written into it.
fn write_private(path: &Path, data: &str) -> Result<(), TlsError> {
    let err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    f.write_all(data.as_bytes()).map_err(err)
}

/// Creates `dir` (and its parents) if missing; the directory itself is made 0700.
fn private_dir(dir: &Path) -> Result<(), TlsError> {
    let err = |source| TlsError::Read {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// A random positive serial number (16 bytes).
fn random_serial() -> Vec<u8> {
    let mut b: [u8; 16] = rand::random();
    b[0] = (b[0] & 0x7f) | 0x01;
    b.to_vec()
}

/// Creates `ca.pem` and `ca.key` in `dir` (refusing to overwrite an existing CA).
pub fn init_ca(dir: &Path, days: i64) -> Result<PathBuf, TlsError> {
    let ca_pem = dir.join("ca.pem");
    if ca_pem.exists() {
        return Err(TlsError::Generate(format!(
            "{} exists; refusing to replace a cluster CA",
            ca_pem.display()
        )));
    }
    private_dir(dir)?;
    let key = KeyPair::generate().map_err(gen)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    // A name of its own: a certificate from another ferry CA then reads as issued by an unknown CA
    // (not as a bad signature from this one).
    let id = hex_serial(&random_serial()[..4]).replace(':', "");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("ferry cluster CA {id}"));
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(days);
    let cert = params.self_signed(&key).map_err(gen)?;
    write_private(&dir.join("ca.key"), &key.serialize_pem())?;
    write_private(&ca_pem, &cert.pem())?;
    Ok(ca_pem)
}

/// A certificate just issued.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate file.
    pub cert: PathBuf,
    /// Its key file.
    pub key: PathBuf,
    /// Its serial number (`aa:bb:...`), for the revocation list.
    pub serial: String,
}

/// Issues `NAME.pem` and `NAME.key` in `dir`, signed by the CA there, valid for `names` (DNS names or
/// IP addresses; the first is the host's name), from now until `days` from now (negative: already
/// expired, for tests).
pub fn issue(dir: &Path, names: &[String], days: i64) -> Result<Issued, TlsError> {
    issue_into(dir, names, days, dir)
}

/// Like [`issue`], into `bundle`: a directory (made 0700) holding only this host's key and
/// certificate, the CA certificate and the CA's revocation list, what the host needs and nothing
/// more (the CA key stays in `ca_dir`). Copy it to the host and start it with `--certs BUNDLE`.
pub fn issue_bundle(
    ca_dir: &Path,
    names: &[String],
    days: i64,
    bundle: &Path,
) -> Result<Issued, TlsError> {
    if bundle.join("ca.key").exists() {
        return Err(TlsError::Generate(format!(
            "{} holds a CA key: a host bundle must not",
            bundle.display()
        )));
    }
    private_dir(bundle)?;
    let issued = issue_into(ca_dir, names, days, bundle)?;
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).map_err(|source| TlsError::Read { path: p, source })
    };
    write_private(&bundle.join("ca.pem"), &read(ca_dir.join("ca.pem"))?)?;
    let revoked = ca_dir.join(REVOKED_FILE);
    if revoked.exists() {
        write_private(&bundle.join(REVOKED_FILE), &read(revoked)?)?;
    }
    Ok(issued)
}

/// Adds `entry` to the revocation list in `dir` (created if missing); returns the list's path.
/// Hosts read the list at every handshake: copy it into each host's certificate directory.
pub fn revoke(dir: &Path, entry: &Revoked) -> Result<PathBuf, TlsError> {
    let path = dir.join(REVOKED_FILE);
    let err = |source| TlsError::Read {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    writeln!(f, "{entry}").map_err(err)?;
    Ok(path)
}

fn issue_into(dir: &Path, names: &[String], days: i64, out: &Path) -> Result<Issued, TlsError> {
    let name = names
        .first()
        .ok_or_else(|| TlsError::Generate("a certificate needs a name".into()))?;
    if name.is_empty() || name.contains('/') {
        return Err(TlsError::BadName(name.clone()));
    }
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).map_err(|source| TlsError::Read { path: p, source })
    };
    let ca_key = KeyPair::from_pem(&read(dir.join("ca.key"))?).map_err(gen)?;
    let issuer = Issuer::from_ca_cert_pem(&read(dir.join("ca.pem"))?, ca_key).map_err(gen)?;
    let key = KeyPair::generate().map_err(gen)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    params
        .distinguished_name
        .push(DnType::CommonName, name.as_str());
    for n in names {
        params
            .subject_alt_names
            .push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    n.clone()
                        .try_into()
                        .map_err(|_| TlsError::BadName(n.clone()))?,
                ),
            });
    }
    let now = OffsetDateTime::now_utc();
    params.not_before =
        now.min(now + Duration::days(days)) - Duration::days(1).min(Duration::minutes(5));
    params.not_after = now + Duration::days(days);
    if days < 0 {
        params.not_before = now + Duration::days(days) - Duration::days(1);
    }
    let serial = random_serial();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = params.signed_by(&key, &issuer).map_err(gen)?;
    let issued = Issued {
        cert: out.join(format!("{name}.pem")),
        key: out.join(format!("{name}.key")),
        serial: hex_serial(&serial),
    };
    write_private(&issued.key, &key.serialize_pem())?;
    write_private(&issued.cert, &cert.pem())?;
    Ok(issued)
}
