//! `ferry certs`: a cluster CA and host certificates (rcgen), written with 0600 permissions.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::TlsError;

fn gen(e: impl std::fmt::Display) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// Writes `data` to a new file readable by its owner only (keys and certificates alike).
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
    f.write_all(data.as_bytes()).map_err(err)
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
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let key = KeyPair::generate().map_err(gen)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "ferry cluster CA");
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

/// Issues `NAME.pem` and `NAME.key` in `dir`, signed by the CA there, valid for `names` (DNS names or
/// IP addresses; the first is the host's name), from now until `days` from now (negative: already
/// expired, for tests).
pub fn issue(dir: &Path, names: &[String], days: i64) -> Result<PathBuf, TlsError> {
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
    let cert = params.signed_by(&key, &issuer).map_err(gen)?;
    let pem = dir.join(format!("{name}.pem"));
    write_private(&dir.join(format!("{name}.key")), &key.serialize_pem())?;
    write_private(&pem, &cert.pem())?;
    Ok(pem)
}
