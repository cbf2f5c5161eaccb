//! TLS between the rack's own components, beside the API server: the sleds' endpoints (fault,
//! power, migration; docs/security.md, "The sleds' endpoints") and the clients that call them.
//! Everything is read from a `corral certs` directory: `ca.crt` is trusted, and each side
//! presents one of the identities issued there.
//!
//! # Guarantees
//! - [`server_config`] verifies every client certificate offered against the CA (one it did
//!   not sign ends the handshake); a client may still connect without one, and is then
//!   anonymous ([`peer_identity`] of nothing), which the server answers `401`.
//! - [`client_config`] trusts only the rack's CA, and checks the server's name (its address,
//!   as a SAN) the way any HTTPS client does.
//! - [`peer_identity`] reads a certificate rustls has already verified: CN = user, each O a
//!   group (Kubernetes' convention). It verifies nothing itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate in it", path.display())]
    Empty { path: PathBuf },
    #[error("TLS configuration")]
    Config(#[source] rustls::Error),
    #[error("the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// The identity a verified certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub user: String,
    pub groups: Vec<String>,
}

impl PeerIdentity {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct KeyPairFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl KeyPairFiles {
    /// `DIR/NAME.crt` and `DIR/NAME.key`, as `corral certs` names them.
    pub fn in_dir(dir: &Path, name: &str) -> KeyPairFiles {
        KeyPairFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |source| TlsError::File {
        path: path.to_path_buf(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(file_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_error)?;
    if chain.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn roots(ca: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in certificates(ca)? {
        roots.add(der).map_err(TlsError::Config)?;
    }
    Ok(Arc::new(roots))
}

/// A server that presents `serving` and verifies the client certificates offered against the
/// CA in `client_ca` (see the module docs). HTTP/1.1 only.
pub fn server_config(
    serving: &KeyPairFiles,
    client_ca: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(client_ca)?, provider())
            .allow_unauthenticated()
            .build()
            .map_err(TlsError::Verifier)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(&serving.cert)?, key(&serving.key)?)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client that trusts the CA in `ca` and presents `identity` (none: no certificate).
pub fn client_config(
    ca: &Path,
    identity: Option<&KeyPairFiles>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots(ca)?);
    // No ALPN here: HTTP clients (hyper-rustls) set their own.
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(files) => builder
            .with_client_auth_cert(certificates(&files.cert)?, key(&files.key)?)
            .map_err(TlsError::Config)?,
    };
    Ok(Arc::new(config))
}

/// The identity the verified certificate `der` names (`None`: it is not a certificate, or
/// names no user).
pub fn peer_identity(der: &[u8]) -> Option<PeerIdentity> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let name = cert.subject();
    let user = name.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = name
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    (!user.is_empty()).then_some(PeerIdentity { user, groups })
}

/// The group whose members may do anything (`admin`), as the API server names it.
pub const MASTERS_GROUP: &str = "system:masters";
/// The group that may read metrics (Kubernetes' `system:monitoring`), as the API server names it.
pub const MONITORING_GROUP: &str = "system:monitoring";
/// The controllers' user.
pub const CONTROLLERS_USER: &str = "system:corral:controllers";

/// The user of sled `sled`'s agent, `system:node:SLED` (in group `system:nodes`).
pub fn node_user(sled: &str) -> String {
    format!("system:node:{sled}")
}
