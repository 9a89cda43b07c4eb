//! TLS for `tls://host:port` URLs: rustls with the `ring` provider.
//!
//! The client trusts exactly the CA certificates it is given ([`TlsOptions::with_ca_pem`] or
//! [`TlsOptions::with_ca_file`]); there is no fallback to system roots, so a `tls://` URL without a
//! CA bundle is an error rather than a connection that trusts more than intended. The server name
//! checked against the certificate (and sent as SNI when it is a DNS name) is the URL's host, or
//! [`TlsOptions::with_server_name`] when the broker is reached through an address its certificate
//! does not name (an IP, a tunnel). A client certificate
//! ([`TlsOptions::with_client_cert_pem`]) authenticates the connection as the certificate's
//! subject CN when the broker asks for one.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{Error, Result};

/// TLS settings of a [`crate::ConnectionFactory`].
#[derive(Clone, Default)]
pub struct TlsOptions {
    roots: Vec<CertificateDer<'static>>,
    server_name: Option<String>,
    client_cert: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl fmt::Debug for TlsOptions {
    // Never prints the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_certificates", &self.roots.len())
            .field("server_name", &self.server_name)
            .field("client_cert", &self.client_cert.is_some())
            .finish()
    }
}

fn tls_error(reason: impl Into<String>) -> Error {
    Error::Tls(reason.into())
}

impl TlsOptions {
    /// No CA yet: add one with [`TlsOptions::with_ca_pem`] or [`TlsOptions::with_ca_file`].
    pub fn new() -> TlsOptions {
        TlsOptions::default()
    }

    /// Trusts the CA certificates in a PEM bundle.
    pub fn with_ca_pem(mut self, pem: &[u8]) -> Result<TlsOptions> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| tls_error(format!("CA bundle: {e}")))?;
        if certs.is_empty() {
            return Err(tls_error("CA bundle: no PEM certificate in it"));
        }
        self.roots.extend(certs);
        Ok(self)
    }

    /// Trusts the CA certificates in a PEM file.
    pub fn with_ca_file(self, path: impl AsRef<Path>) -> Result<TlsOptions> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| tls_error(format!("CA bundle {}: {e}", path.display())))?;
        self.with_ca_pem(&pem)
    }

    /// Checks the broker's certificate against this name instead of the URL's host.
    pub fn with_server_name(mut self, name: impl Into<String>) -> TlsOptions {
        self.server_name = Some(name.into());
        self
    }

    /// Presents a client certificate (PEM chain, leaf first) with its PEM private key.
    pub fn with_client_cert_pem(mut self, cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsOptions> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| tls_error(format!("client certificate: {e}")))?;
        if chain.is_empty() {
            return Err(tls_error("client certificate: no PEM certificate in it"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| tls_error(format!("client key: {e}")))?;
        self.client_cert = Some((chain, Arc::new(key)));
        Ok(self)
    }

    /// [`TlsOptions::with_client_cert_pem`] from files.
    pub fn with_client_cert_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsOptions> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| tls_error(format!("{}: {e}", p.display())));
        let (c, k) = (read(cert.as_ref())?, read(key.as_ref())?);
        self.with_client_cert_pem(&c, &k)
    }

    fn client_config(&self) -> Result<rustls::ClientConfig> {
        if self.roots.is_empty() {
            return Err(tls_error(
                "a tls:// URL needs the CA that signs the broker's certificate: \
                 ConnectionFactory::with_tls(TlsOptions::new().with_ca_file(..)?)",
            ));
        }
        let mut roots = RootCertStore::empty();
        for c in &self.roots {
            roots
                .add(c.clone())
                .map_err(|e| tls_error(format!("CA certificate: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(e.to_string()))?
            .with_root_certificates(roots);
        match &self.client_cert {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| tls_error(format!("client certificate: {e}"))),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// Runs the TLS handshake over a connected socket to `host`.
pub(crate) async fn connect(
    options: Option<&TlsOptions>,
    host: &str,
    sock: TcpStream,
) -> Result<TlsStream<TcpStream>> {
    let default = TlsOptions::default();
    let options = options.unwrap_or(&default);
    let config = options.client_config()?;
    let name = options.server_name.as_deref().unwrap_or(host);
    let server_name = ServerName::try_from(name.to_string())
        .map_err(|_| tls_error(format!("{name:?} is not a valid TLS server name")))?;
    TlsConnector::from(Arc::new(config))
        .connect(server_name, sock)
        .await
        .map_err(|e| tls_error(format!("handshake with {name} failed: {e}")))
}
