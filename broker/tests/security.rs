//! TLS, authentication and authorization end to end: a CA and certificates generated here (rcgen),
//! a real broker on loopback ports, the real client library over `tls://`, raw sockets for the
//! plaintext cases and a STOMP client over TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tandem_broker::security::SecurityConfig;
use tandem_broker::security::acl::{GrantConfig, KindFilter};
use tandem_broker::security::users::UsersFile;
use tandem_broker::tls::{ClientAuth, TlsConfig, TlsMode};
use tandem_broker::{Broker, BrokerConfig};
use tandem_client::{ConnectionFactory, Destination, Error, ErrorCode, Message, TlsOptions};
use tandem_protocol::stomp::{Command, Item, StompCodec, StompFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GUARD: Duration = Duration::from_secs(20);

/// A certificate authority for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Issued {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, cn: &str, sans: &[&str], expired: bool) -> Issued {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Files and settings of one secured broker.
struct Setup {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
            ca: Ca::new("tandem test CA"),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `[tls]` with a server certificate for localhost / 127.0.0.1 (or `expired`).
    fn tls(&self, expired: bool) -> TlsConfig {
        let server = self
            .ca
            .issue("broker", &["localhost", "127.0.0.1"], expired);
        TlsConfig {
            cert: self.write("server.crt", &server.cert),
            key: self.write("server.key", &server.key),
            client_ca: None,
            client_auth: None,
            native: TlsMode::Required,
            stomp: TlsMode::Required,
            http: TlsMode::Required,
        }
    }

    /// A users file: alice (shop), bob (billing), carol (shop, consumer of shop queues),
    /// billing-svc (certificate only, billing).
    fn users(&self) -> PathBuf {
        let path = self.dir.path().join("users.toml");
        let mut f = UsersFile::default();
        f.add("alice", Some("alice-pw-1"), vec!["shop".into()], false)
            .unwrap();
        f.add("bob", Some("bob-pw-2"), vec!["billing".into()], false)
            .unwrap();
        f.add("billing-svc", None, vec!["billing".into()], false)
            .unwrap();
        f.save(&path).unwrap();
        path
    }

    fn security(&self) -> SecurityConfig {
        SecurityConfig {
            users_file: self.users(),
            grants: vec![
                GrantConfig {
                    pattern: "orders.#".into(),
                    send: vec!["shop".into()],
                    consume: vec!["billing".into()],
                    create: vec!["shop".into(), "billing".into()],
                    ..GrantConfig::default()
                },
                GrantConfig {
                    pattern: "billing.#".into(),
                    kind: Some(KindFilter::Queue),
                    send: vec!["billing".into()],
                    consume: vec!["billing".into()],
                    ..GrantConfig::default()
                },
                GrantConfig {
                    pattern: "public".into(),
                    send: vec!["shop".into(), "billing".into(), "guest".into()],
                    consume: vec!["shop".into(), "billing".into(), "guest".into()],
                    create: vec!["shop".into(), "billing".into(), "guest".into()],
                    ..GrantConfig::default()
                },
            ],
            ..SecurityConfig::default()
        }
    }

    fn client_tls(&self) -> TlsOptions {
        TlsOptions::new()
            .with_ca_pem(self.ca.pem().as_bytes())
            .unwrap()
    }
}

fn loopback() -> Option<SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

async fn start(tls: Option<TlsConfig>, security: Option<SecurityConfig>) -> Broker {
    logs();
    let config = BrokerConfig {
        listen: loopback(),
        stomp: loopback(),
        http: loopback(),
        persistence: false,
        heartbeat_ms: 0,
        tls,
        security,
        ..BrokerConfig::default()
    };
    Broker::start(config).await.unwrap()
}

fn tls_factory(b: &Broker, opts: TlsOptions) -> ConnectionFactory {
    let port = b.local_addr().unwrap().port();
    ConnectionFactory::new(&format!("tls://localhost:{port}"))
        .unwrap()
        .with_tls(opts)
        .with_heartbeat(Duration::ZERO)
        .with_connect_timeout(GUARD)
}

fn code(e: &Error) -> Option<ErrorCode> {
    e.code()
}

/// Reads until EOF (or the guard) from a plaintext socket after writing `hello`.
async fn plaintext_exchange(addr: SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(hello).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(GUARD, s.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn plaintext_is_refused_with_a_clear_error_on_every_tls_only_listener() {
    let s = Setup::new();
    let b = start(Some(s.tls(false)), None).await;

    // Native: a Connect frame in the clear gets Error + Close saying TLS is required.
    let mut connect = bytes::BytesMut::new();
    tandem_protocol::Frame::Connect(tandem_protocol::wire::Connect {
        min_version: 1,
        max_version: 1,
        ..Default::default()
    })
    .encode(&mut connect);
    let raw = plaintext_exchange(b.local_addr().unwrap(), &connect).await;
    let mut codec = tandem_protocol::FrameCodec::default();
    let mut buf = bytes::BytesMut::from(&raw[..]);
    use tokio_util::codec::Decoder;
    match codec.decode(&mut buf).unwrap() {
        Some(tandem_protocol::Frame::Error(e)) => {
            assert_eq!(e.code, ErrorCode::NotAuthorized.code());
            assert!(e.message.contains("requires TLS"), "{}", e.message);
        }
        other => panic!("expected an Error frame, got {other:?}"),
    }
    assert!(matches!(
        codec.decode(&mut buf).unwrap(),
        Some(tandem_protocol::Frame::Close(_))
    ));

    // STOMP: an ERROR frame.
    let raw = plaintext_exchange(
        b.stomp_addr().unwrap(),
        b"CONNECT\naccept-version:1.2\n\n\0",
    )
    .await;
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("ERROR\n") && text.contains("TLS required"),
        "{text}"
    );

    // HTTP: a 400 saying so.
    let raw = plaintext_exchange(
        b.http_addr().unwrap(),
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 400") && text.contains("requires TLS"),
        "{text}"
    );

    // The client library, pointed at the TLS port with tcp://, reports the broker's reason.
    let e = ConnectionFactory::new(&format!("tcp://{}", b.local_addr().unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NotAuthorized), "{e}");
    assert!(e.to_string().contains("requires TLS"), "{e}");

    // HTTPS works on the HTTP listener.
    let mut https = tls_client(&s, b.http_addr().unwrap()).await;
    https
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(GUARD, https.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // The same listener serves a TLS client (no security section: the broker is open).
    let c = tls_factory(&b, s.client_tls()).connect().await.unwrap();
    let session = c
        .create_session(tandem_client::AckMode::Auto)
        .await
        .unwrap();
    let q = Destination::queue("anything").unwrap();
    session
        .create_producer(Some(&q))
        .await
        .unwrap()
        .send(Message::text("hi"))
        .await
        .unwrap();
    c.close().await.unwrap();
    b.shutdown().await;
}

#[tokio::test]
async fn optional_mode_serves_tls_and_plaintext_on_one_port() {
    let s = Setup::new();
    let mut tls = s.tls(false);
    tls.http = TlsMode::Optional;
    tls.native = TlsMode::Optional;
    let b = start(Some(tls), None).await;
    let raw = plaintext_exchange(
        b.http_addr().unwrap(),
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
    let plain = ConnectionFactory::new(&format!("tcp://{}", b.local_addr().unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let tls = tls_factory(&b, s.client_tls()).connect().await.unwrap();
    plain.close().await.unwrap();
    tls.close().await.unwrap();
    b.shutdown().await;
}

#[tokio::test]
async fn untrusted_expired_and_misnamed_server_certificates_are_refused() {
    let s = Setup::new();
    let b = start(Some(s.tls(false)), None).await;
    // A CA the broker's certificate does not come from.
    let other = Ca::new("someone else");
    let untrusted = TlsOptions::new()
        .with_ca_pem(other.pem().as_bytes())
        .unwrap();
    let e = tls_factory(&b, untrusted).connect().await.unwrap_err();
    assert!(
        matches!(&e, Error::Tls(m) if m.contains("UnknownIssuer")),
        "{e}"
    );
    // No CA at all: refused before connecting, saying what is missing.
    let e = tls_factory(&b, TlsOptions::new())
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(&e, Error::Tls(m) if m.contains("CA")), "{e}");
    // The certificate names localhost and 127.0.0.1, not broker.example.
    let port = b.local_addr().unwrap().port();
    let misnamed = ConnectionFactory::new(&format!("tls://127.0.0.1:{port}"))
        .unwrap()
        .with_tls(s.client_tls().with_server_name("broker.example"));
    let e = misnamed.connect().await.unwrap_err();
    assert!(
        matches!(&e, Error::Tls(m) if m.contains("not valid for name")),
        "{e}"
    );
    // By IP, with the default name (the URL host), it is fine.
    let by_ip = ConnectionFactory::new(&format!("tls://127.0.0.1:{port}"))
        .unwrap()
        .with_tls(s.client_tls());
    by_ip.connect().await.unwrap().close().await.unwrap();
    b.shutdown().await;

    let b = start(Some(s.tls(true)), None).await;
    let e = tls_factory(&b, s.client_tls()).connect().await.unwrap_err();
    assert!(
        matches!(&e, Error::Tls(m) if m.contains("certificate expired")),
        "{e}"
    );
    b.shutdown().await;
}

#[tokio::test]
async fn sni_override_names_the_certificate_host() {
    let s = Setup::new();
    let server = s.ca.issue("broker", &["broker.internal"], false);
    let tls = TlsConfig {
        cert: s.write("sni.crt", &server.cert),
        key: s.write("sni.key", &server.key),
        ..s.tls(false)
    };
    let b = start(Some(tls), None).await;
    let port = b.local_addr().unwrap().port();
    let url = format!("tls://127.0.0.1:{port}");
    let e = ConnectionFactory::new(&url)
        .unwrap()
        .with_tls(s.client_tls())
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Tls(_)), "{e}");
    ConnectionFactory::new(&url)
        .unwrap()
        .with_tls(s.client_tls().with_server_name("broker.internal"))
        .connect()
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    b.shutdown().await;
}

#[tokio::test]
async fn passwords_are_checked_and_failures_rate_limited() {
    let s = Setup::new();
    let mut sec = s.security();
    sec.failed_login_burst = 2;
    sec.failed_login_refill_ms = 3_600_000;
    let b = start(Some(s.tls(false)), Some(sec)).await;
    let f = || tls_factory(&b, s.client_tls());

    f().with_credentials("alice", "alice-pw-1")
        .connect()
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    for (user, pw) in [("alice", SECRETS[2]), ("nobody", "alice-pw-1")] {
        let e = f().with_credentials(user, pw).connect().await.unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::AuthenticationFailed), "{e}");
        // One message for both: no telling unknown users from wrong passwords.
        assert!(e.to_string().contains("wrong user name or password"), "{e}");
    }
    // Anonymous is not allowed.
    let e = f().connect().await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::AuthenticationFailed), "{e}");
    assert!(e.to_string().contains("anonymous"), "{e}");
    // Two failures used the burst: now even the right password waits.
    let e = f()
        .with_credentials("alice", "alice-pw-1")
        .connect()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("too many failed logins"), "{e}");
    let m = b.metrics();
    for line in [
        "tandem_logins_accepted_total 1\n",
        "tandem_logins_refused_total 4\n",
        "tandem_logins_rate_limited_total 1\n",
    ] {
        assert!(m.contains(line), "{line:?} missing:\n{m}");
    }
    b.shutdown().await;
}

#[tokio::test]
async fn credentials_over_plaintext_are_refused_unless_allowed() {
    let s = Setup::new();
    let b = start(None, Some(s.security())).await;
    let url = format!("tcp://{}", b.local_addr().unwrap());
    let e = ConnectionFactory::new(&url)
        .unwrap()
        .with_credentials("alice", "alice-pw-1")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::AuthenticationFailed), "{e}");
    assert!(e.to_string().contains("plaintext"), "{e}");
    b.shutdown().await;

    let mut sec = s.security();
    sec.allow_plaintext_credentials = true;
    sec.allow_anonymous = true;
    sec.anonymous_roles = vec!["guest".into()];
    let b = start(None, Some(sec)).await;
    let url = format!("tcp://{}", b.local_addr().unwrap());
    let c = ConnectionFactory::new(&url)
        .unwrap()
        .with_credentials("alice", "alice-pw-1")
        .connect()
        .await
        .unwrap();
    c.close().await.unwrap();
    // Anonymous, explicitly allowed, with the guest role: public only.
    let c = ConnectionFactory::new(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let session = c
        .create_session(tandem_client::AckMode::Auto)
        .await
        .unwrap();
    session
        .create_producer(Some(&Destination::queue("public").unwrap()))
        .await
        .unwrap();
    let e = session
        .create_producer(Some(&Destination::queue("orders.new").unwrap()))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NotAuthorized), "{e}");
    c.close().await.unwrap();
    b.shutdown().await;
}

#[tokio::test]
async fn acl_denials_name_user_permission_and_destination_and_leave_the_connection_usable() {
    let s = Setup::new();
    let b = start(Some(s.tls(false)), Some(s.security())).await;
    let alice = tls_factory(&b, s.client_tls())
        .with_credentials("alice", "alice-pw-1")
        .connect()
        .await
        .unwrap();
    let session = alice
        .create_session(tandem_client::AckMode::Auto)
        .await
        .unwrap();
    let orders = Destination::queue("orders.new").unwrap();
    let mut p = session.create_producer(Some(&orders)).await.unwrap();
    p.send(Message::text("order 1")).await.unwrap();

    // Consume: the shop role may send to orders.# but not consume.
    let e = session.create_consumer(&orders, None).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NotAuthorized), "{e}");
    let m = e.to_string();
    assert!(
        m.contains("alice") && m.contains("consume") && m.contains("queue://orders.new"),
        "{m}"
    );

    // Send: billing.# is not the shop's (a named producer is refused at open)...
    let billing = Destination::queue("billing.invoices").unwrap();
    let e = session.create_producer(Some(&billing)).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NotAuthorized), "{e}");
    assert!(e.to_string().contains("send"), "{e}");
    // ...and an anonymous producer per message.
    let mut anon = session.create_producer(None).await.unwrap();
    let mut msg = Message::text("sneaky");
    msg.destination = Some(billing.clone());
    let e = anon.send(msg).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NotAuthorized), "{e}");
    let mut msg = Message::text("order 2");
    msg.destination = Some(orders.clone());
    anon.send(msg).await.unwrap();

    // Auto-create: nothing grants anything on "elsewhere" (no grant matches).
    let elsewhere = Destination::queue("elsewhere").unwrap();
    let e = session.create_producer(Some(&elsewhere)).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NotAuthorized), "{e}");
    assert!(b.queue_snapshot("elsewhere").is_none(), "nothing created");

    // After all these denials the connection and session still work.
    p.send(Message::text("order 3")).await.unwrap();
    assert_eq!(b.queue_snapshot("orders.new").unwrap().ready, 3);
    assert!(b.metrics().contains("tandem_not_authorized_total 4\n"));
    alice.close().await.unwrap();
    b.shutdown().await;
}

#[tokio::test]
async fn create_permission_governs_auto_create() {
    logs();
    let s = Setup::new();
    let mut sec = s.security();
    sec.grants.push(GrantConfig {
        pattern: "reports.*".into(),
        send: vec!["shop".into()],
        ..GrantConfig::default()
    });
    let mut config_queues = vec!["reports.daily".to_string()];
    let b = Broker::start(BrokerConfig {
        listen: loopback(),
        persistence: false,
        heartbeat_ms: 0,
        tls: Some(s.tls(false)),
        security: Some(sec),
        queues: std::mem::take(&mut config_queues),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let alice = tls_factory(&b, s.client_tls())
        .with_credentials("alice", "alice-pw-1")
        .connect()
        .await
        .unwrap();
    let session = alice
        .create_session(tandem_client::AckMode::Auto)
        .await
        .unwrap();
    // Exists already: send is enough.
    session
        .create_producer(Some(&Destination::queue("reports.daily").unwrap()))
        .await
        .unwrap();
    // Would be created: send without create is refused, naming create.
    let e = session
        .create_producer(Some(&Destination::queue("reports.weekly").unwrap()))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NotAuthorized), "{e}");
    assert!(e.to_string().contains("create"), "{e}");
    assert!(b.queue_snapshot("reports.weekly").is_none());
    alice.close().await.unwrap();
    b.shutdown().await;
}

#[tokio::test]
async fn a_role_cannot_read_a_destination_reserved_for_another() {
    let s = Setup::new();
    let b = start(Some(s.tls(false)), Some(s.security())).await;
    let invoices = Destination::queue("billing.invoices").unwrap();
    let bob = tls_factory(&b, s.client_tls())
        .with_credentials("bob", "bob-pw-2")
        .connect()
        .await
        .unwrap();
    let bs = bob
        .create_session(tandem_client::AckMode::Auto)
        .await
        .unwrap();
    // billing.# has no create grant: make it exist through a queue... bob may send once it
    // exists; here the orders.# create grant does not apply, so use an orders queue instead.
    let orders = Destination::queue("orders.paid").unwrap();
    let mut consumer = bs.create_consumer(&orders, None).await.unwrap();
    let alice = tls_factory(&b, s.client_tls())
        .with_credentials("alice", "alice-pw-1")
        .connect()
        .await
        .unwrap();
    let as_ = alice
        .create_session(tandem_client::AckMode::Auto)
        .await
        .unwrap();
    // Alice (shop) may not read bob's billing queue, nor orders (billing consumes them).
    for d in [&invoices, &orders] {
        let e = as_.create_consumer(d, None).await.unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::NotAuthorized), "{d}: {e}");
    }
    // Bob reads what alice sends to orders.
    as_.create_producer(Some(&orders))
        .await
        .unwrap()
        .send(Message::text("paid #7"))
        .await
        .unwrap();
    bob.start();
    let got = consumer.receive(GUARD).await.unwrap().expect("delivered");
    assert_eq!(got.text_body(), Some("paid #7"));
    alice.close().await.unwrap();
    bob.close().await.unwrap();
    b.shutdown().await;
}

#[tokio::test]
async fn client_certificates_authenticate_their_common_name() {
    let s = Setup::new();
    let mut tls = s.tls(false);
    tls.client_ca = Some(s.write("clients-ca.pem", &s.ca.pem()));
    tls.client_auth = Some(ClientAuth::Required);
    let b = start(Some(tls), Some(s.security())).await;
    let with_cert = |issued: &Issued| {
        s.client_tls()
            .with_client_cert_pem(issued.cert.as_bytes(), issued.key.as_bytes())
            .unwrap()
    };
    // billing-svc has no password: its certificate logs it in, with the billing role.
    let svc = s.ca.issue("billing-svc", &[], false);
    let c = tls_factory(&b, with_cert(&svc)).connect().await.unwrap();
    let session = c
        .create_session(tandem_client::AckMode::Auto)
        .await
        .unwrap();
    session
        .create_consumer(&Destination::queue("orders.x").unwrap(), None)
        .await
        .unwrap();
    let e = session
        .create_producer(Some(&Destination::queue("orders.x").unwrap()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("billing-svc"), "{e}");
    c.close().await.unwrap();

    // A login name that is not the certificate's is refused.
    let e = tls_factory(&b, with_cert(&svc))
        .with_credentials("alice", "alice-pw-1")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::AuthenticationFailed), "{e}");

    // A valid certificate for a user not in the file.
    let stranger = s.ca.issue("stranger", &[], false);
    let e = tls_factory(&b, with_cert(&stranger))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::AuthenticationFailed), "{e}");

    // No certificate, an expired one, or one from another CA: the TLS handshake fails.
    let expired = s.ca.issue("billing-svc", &[], true);
    let foreign = Ca::new("evil").issue("billing-svc", &[], false);
    for opts in [s.client_tls(), with_cert(&expired), with_cert(&foreign)] {
        let Err(e) = tls_factory(&b, opts).connect().await else {
            panic!("a client without a valid certificate got in");
        };
        assert!(
            matches!(
                e,
                Error::Tls(_) | Error::ConnectionLost { .. } | Error::Io(_)
            ),
            "{e:?}"
        );
    }
    b.shutdown().await;
}

#[tokio::test]
async fn per_user_and_per_address_connection_limits() {
    let s = Setup::new();
    let mut sec = s.security();
    sec.max_connections_per_user = 2;
    sec.max_connections_per_address = 3;
    let b = start(Some(s.tls(false)), Some(sec)).await;
    let f = |u: &str, p: &str| tls_factory(&b, s.client_tls()).with_credentials(u, p);
    let a1 = f("alice", "alice-pw-1").connect().await.unwrap();
    let a2 = f("alice", "alice-pw-1").connect().await.unwrap();
    let e = f("alice", "alice-pw-1").connect().await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::ConnectionLimit), "{e}");
    assert!(e.to_string().contains("max_connections_per_user"), "{e}");
    let b1 = f("bob", "bob-pw-2").connect().await.unwrap();
    let e = f("bob", "bob-pw-2").connect().await.unwrap_err();
    assert!(e.to_string().contains("max_connections_per_address"), "{e}");
    // Closing gives the places back.
    a1.close().await.unwrap();
    let deadline = tokio::time::Instant::now() + GUARD;
    let b2 = loop {
        match f("bob", "bob-pw-2").connect().await {
            Ok(c) => break c,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    for c in [a2, b1, b2] {
        c.close().await.unwrap();
    }
    b.shutdown().await;
}

/// A raw TLS connection to `addr` trusting the test CA, for "localhost".
async fn tls_client(s: &Setup, addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(s.ca.pem().as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let sock = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), sock)
        .await
        .unwrap()
}

/// A STOMP client over TLS.
async fn stomp_tls(
    b: &Broker,
    s: &Setup,
) -> tokio_util::codec::Framed<tokio_rustls::client::TlsStream<TcpStream>, StompCodec> {
    let tls = tls_client(s, b.stomp_addr().unwrap()).await;
    tokio_util::codec::Framed::new(tls, StompCodec::default())
}

async fn stomp_connect(b: &Broker, s: &Setup, login: &str, passcode: &str) -> StompFrame {
    let mut io = stomp_tls(b, s).await;
    let connect = StompFrame::new(Command::Connect)
        .with_header("accept-version", "1.2")
        .with_header("host", "localhost")
        .with_header("login", login)
        .with_header("passcode", passcode);
    io.send(Item::Frame(connect)).await.unwrap();
    loop {
        match tokio::time::timeout(GUARD, io.next()).await.unwrap() {
            Some(Ok(Item::Frame(f))) => return f,
            Some(Ok(Item::HeartBeat)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn stomp_login_uses_the_users_file() {
    let s = Setup::new();
    let b = start(Some(s.tls(false)), Some(s.security())).await;
    let ok = stomp_connect(&b, &s, "alice", "alice-pw-1").await;
    assert_eq!(ok.command, Command::Connected, "{ok:?}");
    let bad = stomp_connect(&b, &s, "alice", SECRETS[3]).await;
    assert_eq!(bad.command, Command::Error, "{bad:?}");
    assert_eq!(bad.header("error-name"), Some("authentication-failed"));
    assert!(!format!("{bad:?}").contains(SECRETS[3]));
    b.shutdown().await;
}

/// A `MakeWriter` collecting everything logged.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// Everything any test in this binary logs, at every level. One global subscriber: a thread-local
/// one misses events whose callsites other test threads registered first.
fn logs() -> &'static Capture {
    static LOGS: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("first and only subscriber");
        capture
    })
}

/// Every password used by the tests in this file.
const SECRETS: [&str; 4] = [
    "alice-pw-1",
    "bob-pw-2",
    "Wr0ng-Secret-Guess",
    "St0mp-Wrong-Pass",
];

/// Log lines at every level, while logins succeed and fail over native and STOMP, hold the user
/// names and outcomes but never a password, right or wrong (nor any other test's).
#[tokio::test]
async fn passwords_never_reach_the_log() {
    let s = Setup::new();
    let b = start(Some(s.tls(false)), Some(s.security())).await;
    let f = || tls_factory(&b, s.client_tls());
    f().with_credentials("alice", "alice-pw-1")
        .connect()
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let wrong = SECRETS[2];
    f().with_credentials("alice", wrong)
        .connect()
        .await
        .unwrap_err();
    f().with_credentials("ghost", wrong)
        .connect()
        .await
        .unwrap_err();
    stomp_connect(&b, &s, "bob", "bob-pw-2").await;
    stomp_connect(&b, &s, "bob", SECRETS[3]).await;
    b.shutdown().await;

    let log = String::from_utf8(logs().0.lock().unwrap().clone()).unwrap();
    for expected in [
        "login accepted",
        "login refused",
        "user=\"ghost\"",
        "user=\"bob\"",
        "wrong user name or password",
    ] {
        assert!(log.contains(expected), "{expected:?} not logged:\n{log}");
    }
    for secret in SECRETS {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
}

#[tokio::test]
async fn a_broken_security_section_stops_the_start_instead_of_running_open() {
    logs();
    let s = Setup::new();
    let mut sec = s.security();
    sec.users_file = Path::new("/nonexistent/users.toml").into();
    let e = Broker::start(BrokerConfig {
        security: Some(sec),
        ..BrokerConfig::embedded()
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("security.users_file"), "{e}");
    let mut tls = s.tls(false);
    tls.key = s.write("garbage.key", "not a key");
    let e = Broker::start(BrokerConfig {
        tls: Some(tls),
        ..BrokerConfig::embedded()
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("tls.key"), "{e}");
}

#[tokio::test]
async fn in_process_connections_authenticate_too() {
    logs();
    let s = Setup::new();
    let b = Broker::start(BrokerConfig {
        security: Some(s.security()),
        ..BrokerConfig::embedded()
    })
    .await
    .unwrap();
    let f = ConnectionFactory::in_process(Arc::new(b.connector()));
    let e = f.connect().await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::AuthenticationFailed), "{e}");
    // In process is not a network: credentials are fine without TLS.
    f.with_credentials("alice", "alice-pw-1")
        .connect()
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    b.shutdown().await;
}

#[tokio::test]
async fn stomp_subscribe_and_send_are_authorized_too() {
    let s = Setup::new();
    let b = start(Some(s.tls(false)), Some(s.security())).await;
    for (command, dest) in [
        (Command::Subscribe, "/queue/orders.new"),
        (Command::Send, "/queue/billing.x"),
    ] {
        let mut io = stomp_tls(&b, &s).await;
        let connect = StompFrame::new(Command::Connect)
            .with_header("accept-version", "1.2")
            .with_header("host", "localhost")
            .with_header("login", "alice")
            .with_header("passcode", "alice-pw-1");
        io.send(Item::Frame(connect)).await.unwrap();
        let f = StompFrame::new(command)
            .with_header("destination", dest)
            .with_header("id", "1")
            .with_header("receipt", "r1");
        io.send(Item::Frame(f)).await.unwrap();
        let error = loop {
            match tokio::time::timeout(GUARD, io.next()).await.unwrap() {
                Some(Ok(Item::Frame(f))) if f.command == Command::Error => break f,
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            error.header("error-name"),
            Some("not-authorized"),
            "{error:?}"
        );
        assert_eq!(error.header("receipt-id"), Some("r1"), "{error:?}");
    }
    b.shutdown().await;
}

/// The hardened example in docs/SECURITY.md is a valid configuration.
#[test]
fn the_documented_hardened_example_parses_and_validates() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/SECURITY.md"))
            .unwrap();
    let after = doc.split("## Hardened example").nth(1).expect("section");
    let block = after
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block");
    let config: BrokerConfig = toml::from_str(block).unwrap();
    config.validate().unwrap();
    let sec = config.security.expect("[security]");
    assert_eq!(sec.grants.len(), 3);
    assert!(!sec.allow_anonymous && !sec.allow_plaintext_credentials);
    assert_eq!(config.tls.expect("[tls]").http, TlsMode::Optional);
    // Unknown keys in the new sections are refused like everywhere else.
    let e =
        toml::from_str::<BrokerConfig>("[security]\nusers_file = \"u\"\nallow_everyone = true\n")
            .unwrap_err();
    assert!(e.to_string().contains("allow_everyone"), "{e}");
}

/// Many messages both ways over TLS: nothing stays buffered inside TLS (the writers flush).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_tls_arrives_complete() {
    let s = Setup::new();
    let b = start(Some(s.tls(false)), None).await;
    let c = tls_factory(&b, s.client_tls()).connect().await.unwrap();
    let session = c
        .create_session(tandem_client::AckMode::Auto)
        .await
        .unwrap();
    let q = Destination::queue("burst").unwrap();
    let mut consumer = session.create_consumer(&q, None).await.unwrap();
    c.start();
    let mut p = session.create_producer(Some(&q)).await.unwrap();
    p.set_delivery_mode(tandem_client::DeliveryMode::NonPersistent);
    let body = "x".repeat(1000);
    const N: usize = 3000;
    for _ in 0..N {
        p.send(Message::text(body.clone())).await.unwrap();
    }
    for i in 0..N {
        let m = consumer.receive(GUARD).await.unwrap();
        assert!(m.is_some(), "message {i} of {N} never arrived");
    }
    c.close().await.unwrap();
    b.shutdown().await;
}

/// The per-address limit counts from accept, before TLS and login: idle connections from one
/// address cannot pile up until their handshake times out.
#[tokio::test]
async fn idle_connections_count_against_the_address_limit_at_once() {
    let s = Setup::new();
    let mut sec = s.security();
    sec.max_connections_per_address = 2;
    let b = start(Some(s.tls(false)), Some(sec)).await;
    let idle1 = TcpStream::connect(b.local_addr().unwrap()).await.unwrap();
    let idle2 = TcpStream::connect(b.stomp_addr().unwrap()).await.unwrap();
    // Both idle sockets are accepted (and counted) by the time the broker answers a third.
    let f = || {
        tls_factory(&b, s.client_tls())
            .with_credentials("alice", "alice-pw-1")
            .with_connect_timeout(GUARD)
    };
    let deadline = tokio::time::Instant::now() + GUARD;
    let e = loop {
        match f().connect().await {
            Err(e) => break e,
            // The broker had not accepted both idle sockets yet.
            Ok(c) if tokio::time::Instant::now() < deadline => c.close().await.unwrap(),
            Ok(_) => panic!("never refused"),
        }
    };
    assert_eq!(code(&e), Some(ErrorCode::ConnectionLimit), "{e}");
    assert!(e.to_string().contains("max_connections_per_address"), "{e}");
    // Closing the idle sockets gives their places back.
    drop((idle1, idle2));
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        match f().connect().await {
            Ok(c) => {
                c.close().await.unwrap();
                break;
            }
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    b.shutdown().await;
}
