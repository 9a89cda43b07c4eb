//! TLS for the listeners (native, STOMP, HTTP): rustls with the `ring` provider.
//!
//! Each listener has a mode: `required` (TLS only), `optional` (TLS and plaintext on the same
//! port) or `off`. TLS and plaintext are told apart by the first byte the client sends: a TLS
//! record starts with 0x16 (handshake); a native frame starts with the high byte of its length
//! (0 for any frame under 16 MiB), STOMP with a command letter or EOL, HTTP with a method. So a
//! plaintext client on a `required` port gets an answer in its own protocol saying that TLS is
//! required (a native `Error` + `Close`, a STOMP `ERROR`, an HTTP 400) instead of a silent reset.
//!
//! With `client_ca` set the broker asks for client certificates and verifies them against that
//! bundle (`client_auth = "required"` refuses a handshake without one). A verified certificate's
//! subject common name is the connection's user for authentication (docs/SECURITY.md).
//!
//! The TLS handshake runs on the connection's own task, bounded by `handshake_timeout_ms`, never on
//! an accept loop.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use tandem_protocol::ErrorCode;

use crate::broker::BrokerInner;
use crate::config::ConfigError;
use crate::security::{Peer, PeerKind};

/// How a listener treats TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// TLS only: a plaintext client is told so and closed.
    #[default]
    Required,
    /// TLS or plaintext on the same port (migration; health checks).
    Optional,
    /// Plaintext only.
    Off,
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    /// Do not ask for one.
    None,
    /// Ask; verify it when given; a client without one may still log in with a password.
    Optional,
    /// A verified certificate is needed for the TLS handshake to succeed.
    Required,
}

/// `[tls]` in tandem.toml.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of the CAs that sign client certificates; absent: no client certificates.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// `none`, `optional` or `required`; default `required` when `client_ca` is set, else `none`.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
    /// The native listener's mode (default `required`).
    #[serde(default)]
    pub native: TlsMode,
    /// The STOMP listener's mode (default `required`).
    #[serde(default)]
    pub stomp: TlsMode,
    /// The HTTP listener's mode (default `required`).
    #[serde(default)]
    pub http: TlsMode,
}

impl TlsConfig {
    /// Client-certificate policy after defaults.
    pub fn client_auth(&self) -> ClientAuth {
        self.client_auth.unwrap_or(if self.client_ca.is_some() {
            ClientAuth::Required
        } else {
            ClientAuth::None
        })
    }

    /// Static checks (the files are read at start).
    pub(crate) fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        if self.client_auth() != ClientAuth::None && self.client_ca.is_none() {
            errs.push(ConfigError {
                key: "tls.client_auth",
                problem: "client certificates need tls.client_ca (the CA bundle that signs them)"
                    .into(),
            });
        }
        errs
    }
}

/// Which listener a connection arrived on (for the plaintext refusal's wording).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    Native,
    Stomp,
    Http,
}

/// The loaded TLS state.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    config: TlsConfig,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(
    key: &'static str,
    path: &PathBuf,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bad = |problem: String| ConfigError { key, problem };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(bad(format!("{}: no PEM certificate in it", path.display())));
    }
    Ok(certs)
}

impl Tls {
    /// Reads the certificate, key and client CA bundle and builds the acceptor.
    pub(crate) fn load(config: &TlsConfig) -> Result<Tls, Vec<ConfigError>> {
        let certs = load_certs("tls.cert", &config.cert).map_err(|e| vec![e])?;
        let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| {
            vec![ConfigError {
                key: "tls.key",
                problem: format!("{}: {e}", config.key.display()),
            }]
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| {
                vec![ConfigError {
                    key: "tls",
                    problem: e.to_string(),
                }]
            })?;
        let builder = match (&config.client_ca, config.client_auth()) {
            (Some(ca), auth) if auth != ClientAuth::None => {
                let mut roots = RootCertStore::empty();
                for c in load_certs("tls.client_ca", ca).map_err(|e| vec![e])? {
                    roots.add(c).map_err(|e| {
                        vec![ConfigError {
                            key: "tls.client_ca",
                            problem: format!("{}: {e}", ca.display()),
                        }]
                    })?;
                }
                let mut v =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                if auth == ClientAuth::Optional {
                    v = v.allow_unauthenticated();
                }
                let v = v.build().map_err(|e| {
                    vec![ConfigError {
                        key: "tls.client_ca",
                        problem: e.to_string(),
                    }]
                })?;
                builder.with_client_cert_verifier(v)
            }
            _ => builder.with_no_client_auth(),
        };
        let server = builder.with_single_cert(certs, key).map_err(|e| {
            vec![ConfigError {
                key: "tls.key",
                problem: format!("certificate and key do not go together: {e}"),
            }]
        })?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            config: config.clone(),
        })
    }

    fn mode(&self, l: Listener) -> TlsMode {
        match l {
            Listener::Native => self.config.native,
            Listener::Stomp => self.config.stomp,
            Listener::Http => self.config.http,
        }
    }
}

/// An accepted connection's byte stream: plaintext TCP or TLS over TCP.
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How long a connection refused for the per-address limit gets to finish a TLS handshake, so
/// that it can read why (it must not hold a connection slot for long).
const REFUSAL_HANDSHAKE: Duration = Duration::from_secs(1);

/// Sets up an accepted socket: the per-address connection limit, then the TLS handshake, the
/// plaintext refusal or plain pass-through, per the listener's mode. `None`: the connection is
/// over (refused, failed handshake, timeout, or the client left); it has been logged.
pub(crate) async fn accept(
    inner: &BrokerInner,
    sock: TcpStream,
    addr: SocketAddr,
    listener: Listener,
) -> Option<(Transport, Peer)> {
    let timeout = Duration::from_millis(inner.config.handshake_timeout_ms);
    let tls = inner.tls.as_ref();
    // HTTP (health checks, metrics scrapes) is not a messaging connection: not counted.
    let slot = match listener {
        Listener::Http => None,
        _ => match inner.security.admit(addr.ip()) {
            Ok(slot) => slot,
            Err(message) => {
                tracing::info!(peer = %addr, ?listener, "{message}; refused");
                let t = timeout.min(REFUSAL_HANDSHAKE);
                if let Some((io, _)) = setup(tls, sock, addr, listener, t).await {
                    refuse(io, listener, ErrorCode::ConnectionLimit, &message).await;
                }
                return None;
            }
        },
    };
    let (io, kind) = setup(tls, sock, addr, listener, timeout).await?;
    Some((
        io,
        Peer {
            addr: Some(addr),
            kind,
            _slot: slot,
        },
    ))
}

async fn setup(
    tls: Option<&Tls>,
    sock: TcpStream,
    addr: SocketAddr,
    listener: Listener,
    timeout: Duration,
) -> Option<(Transport, PeerKind)> {
    let Some(tls) = tls else {
        return Some((Transport::Plain(sock), PeerKind::Plain));
    };
    let mode = tls.mode(listener);
    if mode == TlsMode::Off {
        return Some((Transport::Plain(sock), PeerKind::Plain));
    }
    let mut first = [0u8; 1];
    let is_tls = match tokio::time::timeout(timeout, sock.peek(&mut first)).await {
        Ok(Ok(1..)) => first[0] == TLS_HANDSHAKE_RECORD,
        // Closed, failed or silent: nothing to serve.
        _ => return None,
    };
    if !is_tls {
        if mode == TlsMode::Optional {
            return Some((Transport::Plain(sock), PeerKind::Plain));
        }
        tracing::info!(peer = %addr, ?listener, "plaintext connection on a TLS-only listener; refused");
        let message = match listener {
            Listener::Native => "this listener requires TLS: connect with tls://HOST:PORT",
            Listener::Stomp => "this listener requires TLS: connect with STOMP over TLS",
            Listener::Http => "this port requires TLS: use https://",
        };
        refuse(
            Transport::Plain(sock),
            listener,
            ErrorCode::NotAuthorized,
            message,
        )
        .await;
        return None;
    }
    let handshake = tls.acceptor.accept(sock);
    let stream = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(peer = %addr, ?listener, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::info!(peer = %addr, ?listener, "TLS handshake timed out");
            return None;
        }
    };
    let cert_user = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| common_name(c.as_ref()));
    Some((
        Transport::Tls(Box::new(stream)),
        PeerKind::Tls { cert_user },
    ))
}

/// Tells a client, in its own protocol, why it is refused; then closes.
async fn refuse(mut io: Transport, listener: Listener, code: ErrorCode, message: &str) {
    let bytes: Vec<u8> = match listener {
        Listener::Native => {
            let mut buf = bytes::BytesMut::new();
            tandem_protocol::Frame::error(0, code, message.to_string()).encode(&mut buf);
            tandem_protocol::Frame::Close(tandem_protocol::wire::Close {
                code: code.code(),
                message: message.to_string(),
            })
            .encode(&mut buf);
            buf.to_vec()
        }
        Listener::Stomp => {
            let title = match code {
                ErrorCode::ConnectionLimit => "connection limit reached",
                _ => "TLS required",
            };
            format!(
                "ERROR\nmessage:{title}\nerror-code:{}\nerror-name:{}\ncontent-type:text/plain\n\
                 content-length:{}\n\n{message}\0",
                code.code(),
                code.name(),
                message.len()
            )
            .into_bytes()
        }
        Listener::Http => {
            let status = match code {
                ErrorCode::ConnectionLimit => "503 Service Unavailable",
                _ => "400 Bad Request",
            };
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{message}\n",
                message.len() + 1
            )
            .into_bytes()
        }
    };
    let linger = Duration::from_secs(1);
    let _ = tokio::time::timeout(linger, io.write_all(&bytes)).await;
    let _ = tokio::time::timeout(linger, io.flush()).await;
    let _ = tokio::time::timeout(linger, io.shutdown()).await;
    // Read (and drop) what the client still sends for a moment: closing with unread input would
    // reset the connection and could destroy the answer before the client reads it.
    let mut sink = [0u8; 4096];
    let mut left = 64 * 1024usize;
    let deadline = tokio::time::Instant::now() + linger;
    while left > 0 {
        match tokio::time::timeout_at(deadline, io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

/// The subject common name of a DER certificate (the first CN if there are several). The
/// certificate was verified by webpki before this runs, so it is well-formed DER; this walker
/// still checks every length and returns `None` on anything unexpected.
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
    //   signature, issuer, validity, subject, ... }, ... }
    let (cert, _) = der_take(der, 0x30)?;
    let (mut tbs, _) = der_take(cert, 0x30)?;
    if tbs.first() == Some(&0xa0) {
        tbs = der_take(tbs, 0xa0)?.1;
    }
    let tbs = der_take(tbs, 0x02)?.1; // serialNumber
    let tbs = der_take(tbs, 0x30)?.1; // signature algorithm
    let tbs = der_take(tbs, 0x30)?.1; // issuer
    let tbs = der_take(tbs, 0x30)?.1; // validity
    let (mut subject, _) = der_take(tbs, 0x30)?;
    // Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF AttributeTypeAndValue)
    while !subject.is_empty() {
        let (mut rdn, rest) = der_take(subject, 0x31)?;
        subject = rest;
        while !rdn.is_empty() {
            let (atv, rest) = der_take(rdn, 0x30)?;
            rdn = rest;
            let (oid, value) = der_take(atv, 0x06)?;
            if oid == [0x55, 0x04, 0x03] {
                // UTF8String, PrintableString, IA5String, T61String (read as Latin-1 subset).
                let tag = *value.first()?;
                let (s, _) = der_take(value, tag)?;
                return match tag {
                    0x0c | 0x13 | 0x16 | 0x14 => String::from_utf8(s.to_vec()).ok(),
                    _ => None,
                };
            }
        }
    }
    None
}

/// Splits a DER TLV with the expected tag: (contents, rest).
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_of_generated_certificates() {
        let mut params = rcgen::CertificateParams::new(vec!["x.test".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "tandem tests");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "billing-svc");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("billing-svc"));

        let params = rcgen::CertificateParams::new(vec!["x.test".into()]).unwrap();
        let mut params = params;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), None);
    }

    #[test]
    fn truncated_der_never_panics() {
        let mut params = rcgen::CertificateParams::new(vec!["x.test".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "someone");
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        for cut in 0..der.len() {
            let _ = common_name(&der[..cut]);
        }
        let mut flipped = der.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = common_name(&flipped);
            flipped[i] ^= 0xff;
        }
    }

    #[test]
    fn client_auth_needs_a_ca() {
        let c = TlsConfig {
            cert: "c".into(),
            key: "k".into(),
            client_ca: None,
            client_auth: Some(ClientAuth::Required),
            native: TlsMode::Required,
            stomp: TlsMode::Required,
            http: TlsMode::Required,
        };
        assert_eq!(c.validate()[0].key, "tls.client_auth");
    }
}
