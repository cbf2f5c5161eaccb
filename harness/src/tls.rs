//! The client side of the API server's TLS, for the harness's own requests (readiness,
//! tests that speak raw HTTP): trusts the rack's CA and presents one of its identities.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A TLS client configuration: the CA of a `corral certs` directory and one identity of it.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    /// Trusts `DIR/ca.crt` and presents `DIR/IDENTITY.crt` (none: no client certificate).
    pub fn from_pki(dir: &Path, identity: Option<&str>) -> Result<ClientTls, String> {
        let file = |name: &str| dir.join(name);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(file("ca.crt"))
            .map_err(|e| format!("{}: {e}", file("ca.crt").display()))?
        {
            let cert = cert.map_err(|e| format!("{}: {e}", file("ca.crt").display()))?;
            roots.add(cert).map_err(|e| format!("the CA: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let cert_path = file(&format!("{name}.crt"));
                let key_path = file(&format!("{name}.key"));
                let chain = CertificateDer::pem_file_iter(&cert_path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("{}: {e}", cert_path.display()))?;
                let key = PrivateKeyDer::from_pem_file(&key_path)
                    .map_err(|e| format!("{}: {e}", key_path.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| e.to_string())?
            }
        };
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// The rustls configuration (for clients of other libraries).
    pub fn config(&self) -> &Arc<rustls::ClientConfig> {
        &self.config
    }

    /// A TLS connection to `address`.
    pub async fn connect(
        &self,
        address: SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        connector
            .connect(ServerName::IpAddress(address.ip().into()), stream)
            .await
    }

    /// A blocking TLS connection to `address` (for synchronous tests).
    pub fn connect_blocking(
        &self,
        address: SocketAddr,
        timeout: std::time::Duration,
    ) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
        let stream = std::net::TcpStream::connect_timeout(&address, timeout)?;
        let connection = rustls::ClientConnection::new(
            self.config.clone(),
            ServerName::IpAddress(address.ip().into()),
        )
        .map_err(std::io::Error::other)?;
        Ok(rustls::StreamOwned::new(connection, stream))
    }
}
