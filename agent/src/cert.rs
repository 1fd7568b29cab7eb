//! `vfsdr cert`: a small certificate authority for the peer link.
//!
//! [`create_ca`] makes one CA for all sites (`ca.pem`, `ca.key`); [`create_site`] makes a site's
//! certificate (`<site>.pem`, `<site>.key`) signed by it, whose DNS SAN is the site name and
//! which is usable as both TLS server and client certificate, as the peer link needs. Keys are
//! ECDSA P-256, written with mode 0600, certificates 0644. Existing files are never overwritten.
//! The CA is valid [`CA_VALIDITY_DAYS`], a site certificate [`SITE_VALIDITY_DAYS`] (both from an
//! hour ago, to tolerate clocks of sites that differ a little); renew site certificates before
//! the CA expires, as a certificate is only accepted while its CA is valid too.
//!
//! To sign, the CA is re-created from its files (`Issuer::from_ca_cert_pem`, which takes the
//! subject name and key identifier from `ca.pem`), and every new site certificate is verified
//! against `ca.pem` before it is written, which catches a `ca.key` that does not belong to it.
use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};

use crate::peer;

/// Validity of a CA: 10 years.
pub const CA_VALIDITY_DAYS: u64 = 3650;
/// Validity of a site certificate: 2 years.
pub const SITE_VALIDITY_DAYS: u64 = 730;

/// File name of the CA certificate in its directory.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA key in its directory.
pub const CA_KEY: &str = "ca.key";

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const BACKDATE: Duration = Duration::from_secs(3600);

/// The files written: a certificate and its private key (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{} already exists; not overwriting it", .0.display())]
    Exists(PathBuf),
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid CA name {name:?}: {reason}")]
    InvalidCaName { name: String, reason: &'static str },
    #[error("invalid site name {site:?}: {reason}")]
    InvalidSite { site: String, reason: &'static str },
    #[error("{}: not a usable private key: {source}", path.display())]
    BadKey { path: PathBuf, source: rcgen::Error },
    #[error("{}: not a CA certificate: {source}", path.display())]
    BadCa { path: PathBuf, source: rcgen::Error },
    #[error("{}: no certificate in it: {source}", path.display())]
    BadPem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the certificate signed with {} does not verify against {}: {source} \
        (does the key belong to the certificate? is the CA still valid?)", key.display(), cert.display())]
    Verify {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("generating the {what} failed: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
}

/// Creates a CA named `name` in `dir` (created if missing): `ca.pem` and `ca.key` (mode 0600).
pub fn create_ca(dir: &Path, name: &str) -> Result<CertFiles, CertError> {
    let invalid = |reason| CertError::InvalidCaName {
        name: name.to_owned(),
        reason,
    };
    if name.trim().is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > 64 {
        return Err(invalid("longer than 64 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("contains control characters"));
    }
    let files = CertFiles {
        cert: dir.join(CA_CERT),
        key: dir.join(CA_KEY),
    };
    refuse_existing(&files)?;

    let key = KeyPair::generate().map_err(|source| CertError::Generate {
        what: "CA key",
        source,
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "vfsdr");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY_DAYS);
    let cert = params
        .self_signed(&key)
        .map_err(|source| CertError::Generate {
            what: "CA certificate",
            source,
        })?;

    write_pair(dir, &files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

/// Creates `<site>.pem` and `<site>.key` (mode 0600) in `out_dir` (created if missing), signed by
/// the CA in `ca_dir`; the certificate's DNS SAN is `site`.
pub fn create_site(ca_dir: &Path, site: &str, out_dir: &Path) -> Result<CertFiles, CertError> {
    check_site_name(site)?;
    let ca = CertFiles {
        cert: ca_dir.join(CA_CERT),
        key: ca_dir.join(CA_KEY),
    };
    let files = CertFiles {
        cert: out_dir.join(format!("{site}.pem")),
        key: out_dir.join(format!("{site}.key")),
    };
    refuse_existing(&files)?;

    let ca_pem = read(&ca.cert)?;
    let ca_key_pem = read(&ca.key)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|source| CertError::BadKey {
        path: ca.key.clone(),
        source,
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|source| CertError::BadCa {
        path: ca.cert.clone(),
        source,
    })?;

    let key = KeyPair::generate().map_err(|source| CertError::Generate {
        what: "site key",
        source,
    })?;
    let mut params =
        CertificateParams::new(vec![site.to_owned()]).map_err(|source| CertError::Generate {
            what: "site certificate",
            source,
        })?;
    params.distinguished_name.remove(DnType::CommonName);
    params.distinguished_name.push(DnType::CommonName, site);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "vfsdr");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, SITE_VALIDITY_DAYS);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| CertError::Generate {
            what: "site certificate",
            source,
        })?;

    let ca_der =
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|source| CertError::BadPem {
            path: ca.cert.clone(),
            source,
        })?;
    peer::verify_site_certificate(&[ca_der], &[cert.der().clone()], site).map_err(|source| {
        CertError::Verify {
            cert: ca.cert.clone(),
            key: ca.key.clone(),
            source,
        }
    })?;

    write_pair(out_dir, &files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

/// The site name rules of the configuration: `[a-z0-9-]`, 1 to 32 characters, starting with a
/// letter (so it is also a valid DNS name).
fn check_site_name(site: &str) -> Result<(), CertError> {
    let invalid = |reason| {
        Err(CertError::InvalidSite {
            site: site.to_owned(),
            reason,
        })
    };
    if site.is_empty() || site.len() > 32 {
        return invalid("must be 1 to 32 characters");
    }
    if !site.starts_with(|c: char| c.is_ascii_lowercase()) {
        return invalid("must start with a lower-case letter");
    }
    if !site
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return invalid("only a-z, 0-9 and - are allowed");
    }
    Ok(())
}

/// From an hour ago to `days` from now.
fn set_validity(params: &mut CertificateParams, days: u64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    params.not_before = epoch + now.saturating_sub(BACKDATE);
    params.not_after = epoch + now + Duration::from_secs(days * 86_400);
}

fn refuse_existing(files: &CertFiles) -> Result<(), CertError> {
    for path in [&files.cert, &files.key] {
        if fs::symlink_metadata(path).is_ok() {
            return Err(CertError::Exists(path.clone()));
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })
}

/// Writes the key, then the certificate; never replaces a file, and removes the key again if the
/// certificate cannot be written.
fn write_pair(dir: &Path, files: &CertFiles, cert: &str, key: &str) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        op: "create directory",
        path: dir.to_owned(),
        source,
    })?;
    write_new(&files.key, key, KEY_MODE)?;
    if let Err(error) = write_new(&files.cert, cert, CERT_MODE) {
        let _ = fs::remove_file(&files.key);
        return Err(error);
    }
    Ok(())
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let io = |op| {
        move |source| CertError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CertError::Exists(path.to_owned())
            } else {
                io("create")(e)
            }
        })?;
    // The umask may have removed bits; set exactly the intended mode.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("chmod"))?;
    let written = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(path);
        return Err(io("write")(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, sync::Arc};

    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::UnixTime;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn der(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    #[test]
    fn a_ca_and_a_site_certificate_with_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca(&dir.path().join("ca"), "Example DR CA").unwrap();
        assert_eq!(
            ca,
            CertFiles {
                cert: dir.path().join("ca/ca.pem"),
                key: dir.path().join("ca/ca.key")
            }
        );
        assert_eq!((mode(&ca.cert), mode(&ca.key)), (0o644, 0o600));

        let site = create_site(&dir.path().join("ca"), "dr1", &dir.path().join("out")).unwrap();
        assert_eq!(site.cert, dir.path().join("out/dr1.pem"));
        assert_eq!(site.key, dir.path().join("out/dr1.key"));
        assert_eq!((mode(&site.cert), mode(&site.key)), (0o644, 0o600));

        // Valid as a server certificate for its name only, and as a client certificate.
        peer::verify_site_certificate(&[der(&ca.cert)], &[der(&site.cert)], "dr1").unwrap();
        let error =
            peer::verify_site_certificate(&[der(&ca.cert)], &[der(&site.cert)], "dr2").unwrap_err();
        assert!(error.to_string().contains("not valid for name"), "{error}");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&ca.cert)).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let clients = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        clients
            .verify_client_cert(&der(&site.cert), &[], UnixTime::now())
            .unwrap();

        // Not against another CA.
        let other = create_ca(&dir.path().join("other"), "Other CA").unwrap();
        let error = peer::verify_site_certificate(&[der(&other.cert)], &[der(&site.cert)], "dr1")
            .unwrap_err();
        assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    }

    #[test]
    fn existing_files_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let ca = create_ca(&ca_dir, "CA").unwrap();
        let before = fs::read(&ca.key).unwrap();
        let error = create_ca(&ca_dir, "CA").unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("{} already exists; not overwriting it", ca.cert.display())
        );
        assert_eq!(fs::read(&ca.key).unwrap(), before);

        create_site(&ca_dir, "dr1", dir.path()).unwrap();
        let error = create_site(&ca_dir, "dr1", dir.path()).unwrap_err();
        assert!(
            matches!(&error, CertError::Exists(p) if *p == dir.path().join("dr1.pem")),
            "{error}"
        );

        // Only the key is there: refused, and no certificate appears.
        fs::write(dir.path().join("dr2.key"), "mine").unwrap();
        let error = create_site(&ca_dir, "dr2", dir.path()).unwrap_err();
        assert!(
            matches!(&error, CertError::Exists(p) if *p == dir.path().join("dr2.key")),
            "{error}"
        );
        assert!(!dir.path().join("dr2.pem").exists());
        assert_eq!(
            fs::read_to_string(dir.path().join("dr2.key")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn bad_names_and_ca_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for (site, reason) in [
            ("", "1 to 32"),
            ("Dr1", "lower-case"),
            ("1dr", "lower-case"),
            ("dr_1", "only a-z"),
        ] {
            let error = create_site(dir.path(), site, dir.path())
                .unwrap_err()
                .to_string();
            assert!(error.contains(reason), "{site:?}: {error}");
        }
        assert!(
            create_ca(dir.path(), " ")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );

        let error = create_site(&dir.path().join("none"), "dr1", dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!(
                "cannot read {}",
                dir.path().join("none/ca.pem").display()
            )),
            "{error}"
        );

        // A CA key that does not belong to the CA certificate: nothing is written.
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        create_ca(&one, "One").unwrap();
        create_ca(&two, "Two").unwrap();
        fs::remove_file(one.join(CA_KEY)).unwrap();
        fs::copy(two.join(CA_KEY), one.join(CA_KEY)).unwrap();
        let error = create_site(&one, "dr1", dir.path()).unwrap_err();
        assert!(matches!(error, CertError::Verify { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains(&one.join(CA_CERT).display().to_string()),
            "{error}"
        );
        assert!(!dir.path().join("dr1.pem").exists() && !dir.path().join("dr1.key").exists());

        // Not a key at all.
        fs::write(one.join(CA_KEY), "garbage").unwrap();
        let error = create_site(&one, "dr1", dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!(
                "{}: not a usable private key",
                one.join(CA_KEY).display()
            )),
            "{error}"
        );
    }
}
