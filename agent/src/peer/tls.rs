//! TLS material of the peer link: the CA, this site's certificate and key, loaded from PEM files
//! into a rustls server and client configuration (ring provider, TLS 1.3 only: both ends are this
//! agent). No process-wide crypto provider is installed or needed.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier as _},
    crypto::CryptoProvider,
    server::WebPkiClientVerifier,
};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, ServerName, UnixTime,
    pem::{self, PemObject as _},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::PeerError;
use crate::config::Tls;

/// The loaded TLS material, ready to accept and open peer connections.
#[derive(Clone)]
pub struct PeerTls {
    files: Tls,
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Reads the CA, certificate and key PEM files; errors name the file and what is wrong with
    /// it (unreadable, no certificate or key in it, a key that does not match the certificate).
    pub fn load(files: &Tls) -> Result<PeerTls, PeerError> {
        let ca = read_certificates(&files.ca)?;
        let chain = read_certificates(&files.cert)?;
        let key = read_key(&files.key)?;

        let mut roots = RootCertStore::empty();
        for der in &ca {
            roots.add(der.clone()).map_err(|source| PeerError::BadCa {
                file: files.ca.clone(),
                source,
            })?;
        }
        let roots = Arc::new(roots);
        let provider = provider();
        let key_error = |source| match source {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                PeerError::KeyMismatch {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                }
            }
            source => PeerError::BadKey {
                file: files.key.clone(),
                source,
            },
        };

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|source| PeerError::CaVerifier {
                file: files.ca.clone(),
                source,
            })?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(PeerError::TlsSetup)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(key_error)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(PeerError::TlsSetup)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain.clone(), key)
            .map_err(key_error)?;
        Ok(PeerTls {
            files: files.clone(),
            ca,
            chain,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The files this was loaded from.
    pub fn files(&self) -> &Tls {
        &self.files
    }

    /// Checks that this site's certificate chains to the CA and carries `site` as a DNS name.
    pub(crate) fn verify_own_certificate(&self, site: &str) -> Result<(), PeerError> {
        verify_site_certificate(&self.ca, &self.chain, site).map_err(|source| {
            PeerError::OwnCertificate {
                cert: self.files.cert.clone(),
                ca: self.files.ca.clone(),
                site: site.to_owned(),
                source: Box::new(source),
            }
        })
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.clone())
    }

    pub(crate) fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.client.clone())
    }
}

/// The crypto provider of the peer link (ring).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks that `chain` (leaf first) is a valid server certificate for `site` signed by one of
/// `ca`, now. Used on this site's own certificate and by `vfsdr cert` on what it created.
pub(crate) fn verify_site_certificate(
    ca: &[CertificateDer<'_>],
    chain: &[CertificateDer<'_>],
    site: &str,
) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    for der in ca {
        roots.add(der.clone())?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let name = ServerName::try_from(site)
        .map_err(|_| rustls::Error::General(format!("{site:?} is not a DNS name")))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    verifier.verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())?;
    Ok(())
}

/// The DNS names a (verified) peer certificate carries.
pub(crate) fn certificate_names(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(cert) => cert.valid_dns_names().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

/// Whether a (verified) peer certificate is valid for the DNS name `site`.
pub(crate) fn certificate_is_for(cert: &CertificateDer<'_>, site: &str) -> bool {
    let Ok(name) = ServerName::try_from(site) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}

/// All certificates of a PEM file; at least one.
pub(crate) fn read_certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, PeerError> {
    let bytes = read(file)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PeerError::BadPem {
            file: file.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PeerError::NoCertificate {
            file: file.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn read_key(file: &Path) -> Result<PrivateKeyDer<'static>, PeerError> {
    let bytes = read(file)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => PeerError::NoKey {
            file: file.to_owned(),
        },
        source => PeerError::BadPem {
            file: file.to_owned(),
            source,
        },
    })
}

fn read(file: &Path) -> Result<Vec<u8>, PeerError> {
    std::fs::read(file).map_err(|source| PeerError::Read {
        file: PathBuf::from(file),
        source,
    })
}
