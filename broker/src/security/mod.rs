//! Who may connect, and what they may do: authentication, authorization, per-user and
//! per-address connection limits, failed-login rate limiting. docs/SECURITY.md is the user's guide.
//!
//! - Without a `[security]` section the broker is **open**: every connection is accepted and may
//!   do everything (the behaviour before this module existed). The startup log says so loudly.
//! - With one, a connection is authenticated once, in the native handshake (STOMP's CONNECT becomes
//!   a native Connect, so both protocols share this code): by a verified TLS client certificate
//!   (its subject CN is the user), by user name and password (SASL PLAIN semantics: refused over
//!   plaintext unless `allow_plaintext_credentials`), or anonymously when `allow_anonymous`.
//!   The resulting [`Authenticated`] lives as long as the connection and answers every
//!   authorization question ([`acl`] has the pattern rules).
//! - Passwords never reach a log line: the only place authentication logs is [`audit`], whose
//!   input type has no field that could hold one.
//!
//! Lock order: the users snapshot, the failed-login map and the connection counts are leaf locks,
//! never held across an `.await` or while another lock is taken.

pub mod acl;
pub mod ratelimit;
pub mod users;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::Deserialize;
use tandem_protocol::ErrorCode;
use tandem_protocol::model::Destination;
use tandem_protocol::wire;

use crate::broker::BrokerInner;
use crate::config::{BrokerConfig, ConfigError};
use crate::message::Refusal;
use acl::{Acl, Decision, GrantConfig, Permission};
use ratelimit::FailedLogins;
use users::UsersFile;

/// Concurrent password checks at most (each costs ~19 MiB and tens of ms of CPU).
const MAX_CONCURRENT_VERIFIES: usize = 4;
/// Source addresses tracked by the failed-login limiter.
const MAX_TRACKED_ADDRESSES: usize = 10_000;
/// Authorization answers cached per connection (anonymous producers ask per message).
const DECISION_CACHE: usize = 256;

/// `[security]` in tandem.toml.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// The users file (`tandem user add|remove|list` manages it). Required.
    pub users_file: PathBuf,
    /// Let connections without credentials in (with `anonymous_roles`).
    pub allow_anonymous: bool,
    /// Roles an anonymous connection holds.
    pub anonymous_roles: Vec<String>,
    /// Accept a password over a plaintext (non-TLS) connection. Off by default: the password would
    /// cross the network in the clear.
    pub allow_plaintext_credentials: bool,
    /// Most connections one user may hold at once; 0: no limit.
    pub max_connections_per_user: usize,
    /// Most connections one source IP address may hold at once; 0: no limit.
    pub max_connections_per_address: usize,
    /// Failed logins one source address may make in a burst.
    pub failed_login_burst: u32,
    /// After the burst, one more attempt per this many ms.
    pub failed_login_refill_ms: u64,
    /// Who may do what where (see [`acl`]).
    pub grants: Vec<GrantConfig>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            users_file: PathBuf::new(),
            allow_anonymous: false,
            anonymous_roles: Vec::new(),
            allow_plaintext_credentials: false,
            max_connections_per_user: 0,
            max_connections_per_address: 0,
            failed_login_burst: 5,
            failed_login_refill_ms: 12_000,
            grants: Vec::new(),
        }
    }
}

impl SecurityConfig {
    /// Static checks (the users file is read at start).
    pub(crate) fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        if self.users_file.as_os_str().is_empty() {
            errs.push(ConfigError {
                key: "security.users_file",
                problem: "required: the TOML file `tandem user add` writes".into(),
            });
        }
        if self.failed_login_burst == 0 {
            errs.push(ConfigError {
                key: "security.failed_login_burst",
                problem: "must be at least 1".into(),
            });
        }
        if !(100..=86_400_000).contains(&self.failed_login_refill_ms) {
            errs.push(ConfigError {
                key: "security.failed_login_refill_ms",
                problem: "must be between 100 ms and one day".into(),
            });
        }
        if !self.anonymous_roles.is_empty() && !self.allow_anonymous {
            errs.push(ConfigError {
                key: "security.anonymous_roles",
                problem: "has no effect without allow_anonymous = true".into(),
            });
        }
        if let Err(problems) = Acl::new(&self.grants) {
            for problem in problems {
                errs.push(ConfigError {
                    key: "security.grants",
                    problem,
                });
            }
        }
        errs
    }
}

/// How a connection reached the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerKind {
    /// An in-process link (the embedding application itself).
    InProcess,
    /// Plaintext TCP.
    Plain,
    /// TLS; `cert_user` is the subject CN of a verified client certificate.
    Tls {
        /// The client certificate's common name, when one was presented and verified.
        cert_user: Option<String>,
    },
}

/// The far end of a connection, as authentication sees it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The source address (`None` in process).
    pub addr: Option<SocketAddr>,
    /// The transport.
    pub kind: PeerKind,
    /// The connection's place under `max_connections_per_address`, taken at accept and held
    /// until the connection ends (shared with the STOMP translator's native side).
    pub _slot: Option<Arc<AddressSlot>>,
}

impl Peer {
    /// An in-process connection.
    pub(crate) fn in_process() -> Peer {
        Peer {
            addr: None,
            kind: PeerKind::InProcess,
            _slot: None,
        }
    }

    /// Whether credentials sent over this transport stay private.
    fn confidential(&self) -> bool {
        !matches!(self.kind, PeerKind::Plain)
    }

    fn ip(&self) -> Option<IpAddr> {
        self.addr.map(|a| a.ip())
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.addr, &self.kind) {
            (None, _) => f.write_str("in-process"),
            (Some(a), PeerKind::Tls { .. }) => write!(f, "{a} (tls)"),
            (Some(a), _) => write!(f, "{a}"),
        }
    }
}

/// Who a connection acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Principal {
    /// No security configured: everything is allowed.
    Open,
    /// Allowed in without credentials.
    Anonymous { roles: Vec<String> },
    /// A user from the users file.
    User { name: String, roles: Vec<String> },
}

impl Principal {
    fn display_name(&self) -> &str {
        match self {
            Principal::Open => "<open broker>",
            Principal::Anonymous { .. } => "<anonymous>",
            Principal::User { name, .. } => name,
        }
    }
}

/// What identifies one version of the users file on disk: modification time, size and (Unix)
/// inode, which `tandem user` changes with every save (it renames a new file into place).
type FileStamp = (SystemTime, u64, u64);

/// The users file as last read, with what identified that version on disk.
#[derive(Debug)]
struct LoadedUsers {
    users: Arc<UsersFile>,
    stamp: Option<FileStamp>,
}

/// Open connections per user and per address.
#[derive(Debug, Default)]
struct Counts {
    users: HashMap<String, usize>,
    addrs: HashMap<IpAddr, usize>,
}

/// Holds a connection's place in the per-user count; gives it back on drop.
#[derive(Debug)]
struct CountGuard {
    counts: Arc<Mutex<Counts>>,
    user: String,
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        let mut c = self.counts.lock();
        if let Some(n) = c.users.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                c.users.remove(&self.user);
            }
        }
    }
}

/// Holds a connection's place in the per-address count, from accept (before TLS and login, so a
/// flood of idle connections from one address is cut short) to the end of the connection.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock();
        if let Some(n) = c.addrs.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.addrs.remove(&self.ip);
            }
        }
    }
}

/// The security state when a `[security]` section is configured.
#[derive(Debug)]
struct Enforcing {
    config: SecurityConfig,
    acl: Acl,
    users: Mutex<LoadedUsers>,
    failed: Mutex<FailedLogins>,
    counts: Arc<Mutex<Counts>>,
    verify_slots: Arc<tokio::sync::Semaphore>,
    /// Checked against when the user does not exist, so that the answer takes as long as for a
    /// wrong password (no user enumeration by timing).
    dummy_hash: String,
    stats: Arc<SecurityStats>,
}

/// Counters for `/metrics` (alarms on refused logins and denials).
#[derive(Debug, Default)]
pub(crate) struct SecurityStats {
    logins_accepted: AtomicU64,
    logins_refused: AtomicU64,
    logins_rate_limited: AtomicU64,
    not_authorized: AtomicU64,
}

/// The broker's security: open, or enforcing a `[security]` section.
#[derive(Debug)]
pub(crate) struct Security {
    enforcing: Option<Arc<Enforcing>>,
    stats: Arc<SecurityStats>,
}

fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

impl Security {
    /// Reads the users file and compiles the grants. Fails when the section is configured but
    /// unusable: a broker never falls back to open.
    pub(crate) fn new(config: &BrokerConfig) -> Result<Security, Vec<ConfigError>> {
        let Some(sc) = &config.security else {
            return Ok(Security {
                enforcing: None,
                stats: Arc::default(),
            });
        };
        let acl = Acl::new(&sc.grants).map_err(|problems| {
            problems
                .into_iter()
                .map(|problem| ConfigError {
                    key: "security.grants",
                    problem,
                })
                .collect::<Vec<_>>()
        })?;
        let stamp = file_stamp(&sc.users_file);
        let users = UsersFile::load(&sc.users_file).map_err(|e| {
            vec![ConfigError {
                key: "security.users_file",
                problem: e.to_string(),
            }]
        })?;
        let dummy_hash = users::hash_password("tandem: no such user").map_err(|e| {
            vec![ConfigError {
                key: "security",
                problem: e.to_string(),
            }]
        })?;
        let stats = Arc::<SecurityStats>::default();
        Ok(Security {
            stats: stats.clone(),
            enforcing: Some(Arc::new(Enforcing {
                stats,
                failed: Mutex::new(FailedLogins::new(
                    sc.failed_login_burst,
                    Duration::from_millis(sc.failed_login_refill_ms),
                    MAX_TRACKED_ADDRESSES,
                )),
                config: sc.clone(),
                acl,
                users: Mutex::new(LoadedUsers {
                    users: Arc::new(users),
                    stamp,
                }),
                counts: Arc::new(Mutex::new(Counts::default())),
                verify_slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_VERIFIES)),
                dummy_hash,
            })),
        })
    }
}

impl Security {
    /// Takes a place under `max_connections_per_address` for a new connection from `ip` (at
    /// accept, before TLS and login). `Ok(None)`: no limit applies. `Err`: the refusal's text.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Option<Arc<AddressSlot>>, String> {
        let Some(e) = &self.enforcing else {
            return Ok(None);
        };
        let max = e.config.max_connections_per_address;
        if max == 0 {
            return Ok(None);
        }
        let mut c = e.counts.lock();
        let have = c.addrs.entry(ip).or_insert(0);
        if *have >= max {
            return Err(format!(
                "address {ip} already has {have} connections \
                 (security.max_connections_per_address = {max})"
            ));
        }
        *have += 1;
        Ok(Some(Arc::new(AddressSlot {
            counts: e.counts.clone(),
            ip,
        })))
    }
}

impl Enforcing {
    /// The users file, re-read when it changed on disk (so `tandem user add` needs no restart). A
    /// changed file that does not parse is logged and the previous version stays in force.
    /// Blocking (a stat, maybe a read): call off the async threads.
    fn current_users(&self) -> Arc<UsersFile> {
        let path = &self.config.users_file;
        let stamp = file_stamp(path);
        let mut loaded = self.users.lock();
        if stamp.is_some() && stamp != loaded.stamp {
            match UsersFile::load(path) {
                Ok(u) => {
                    tracing::info!(file = %path.display(), users = u.users.len(), "users file reloaded");
                    loaded.users = Arc::new(u);
                }
                Err(e) => {
                    tracing::error!(error = %e, "users file changed but cannot be used; keeping the previous version");
                }
            }
            loaded.stamp = stamp;
        }
        loaded.users.clone()
    }

    fn acquire_counts(&self, user: &str) -> Result<CountGuard, Refusal> {
        let mut c = self.counts.lock();
        let per_user = self.config.max_connections_per_user;
        let have_user = c.users.get(user).copied().unwrap_or(0);
        if per_user > 0 && have_user >= per_user {
            return Err(Refusal::new(
                ErrorCode::ConnectionLimit,
                format!(
                    "user {user:?} already has {have_user} connections \
                     (security.max_connections_per_user = {per_user})"
                ),
            ));
        }
        *c.users.entry(user.to_string()).or_insert(0) += 1;
        Ok(CountGuard {
            counts: self.counts.clone(),
            user: user.to_string(),
        })
    }
}

/// How a login attempt ended, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Refused,
}

/// One authentication event. Deliberately has no field that could carry a password: the audit
/// log cannot leak one whatever the caller does.
#[derive(Debug)]
struct AuditEvent<'a> {
    outcome: Outcome,
    /// The user name claimed (or from the certificate); empty for anonymous.
    user: &'a str,
    peer: &'a Peer,
    /// How: "password", "certificate", "anonymous".
    method: &'static str,
    /// Why it was refused (a fixed phrase or a name; never client-supplied secrets).
    reason: &'a str,
}

/// The only place authentication writes to the log (and counts).
fn audit(stats: &SecurityStats, e: &AuditEvent<'_>) {
    let counter = match e.outcome {
        Outcome::Accepted => &stats.logins_accepted,
        Outcome::Refused => &stats.logins_refused,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    match e.outcome {
        Outcome::Accepted => tracing::info!(
            target: "tandem::audit",
            user = e.user,
            peer = %e.peer,
            method = e.method,
            "login accepted"
        ),
        Outcome::Refused => tracing::warn!(
            target: "tandem::audit",
            user = e.user,
            peer = %e.peer,
            method = e.method,
            reason = e.reason,
            "login refused"
        ),
    }
}

/// A connection's identity and its authorization cache; dropped with the connection (which frees
/// its place in the per-user and per-address counts).
#[derive(Debug)]
pub(crate) struct Authenticated {
    principal: Principal,
    enforcing: Option<Arc<Enforcing>>,
    _counts: Option<CountGuard>,
    cache: HashMap<(Permission, Destination), bool>,
}

fn refused(
    stats: &SecurityStats,
    peer: &Peer,
    user: &str,
    method: &'static str,
    code: ErrorCode,
    reason: &str,
) -> Refusal {
    audit(
        stats,
        &AuditEvent {
            outcome: Outcome::Refused,
            user,
            peer,
            method,
            reason,
        },
    );
    Refusal::new(code, reason)
}

/// Authenticates a Connect (called once per connection, in the handshake).
pub(crate) async fn authenticate(
    inner: &BrokerInner,
    peer: &Peer,
    connect: &wire::Connect,
) -> Result<Authenticated, Refusal> {
    let Some(e) = inner.security.enforcing.clone() else {
        return Ok(Authenticated {
            principal: Principal::Open,
            enforcing: None,
            _counts: None,
            cache: HashMap::new(),
        });
    };
    let username = connect.username.as_str();
    let cert_user = match &peer.kind {
        PeerKind::Tls { cert_user } => cert_user.clone(),
        _ => None,
    };
    let fail = ErrorCode::AuthenticationFailed;
    let principal = if let Some(cn) = cert_user {
        if !username.is_empty() && username != cn {
            let reason = format!(
                "the client certificate identifies {cn:?} but the login names {username:?}"
            );
            return Err(refused(
                &e.stats,
                peer,
                username,
                "certificate",
                fail,
                &reason,
            ));
        }
        let e2 = e.clone();
        let users = tokio::task::spawn_blocking(move || e2.current_users())
            .await
            .map_err(|_| Refusal::new(ErrorCode::Internal, "users lookup failed"))?;
        match users.users.get(&cn) {
            Some(u) => Principal::User {
                name: cn.clone(),
                roles: u.roles.clone(),
            },
            None => {
                let reason = format!("certificate user {cn:?} is not in the users file");
                return Err(refused(&e.stats, peer, &cn, "certificate", fail, &reason));
            }
        }
    } else if !username.is_empty() {
        if !peer.confidential() && !e.config.allow_plaintext_credentials {
            let reason = "credentials over a plaintext connection are refused: connect with TLS \
                          (or set security.allow_plaintext_credentials)";
            return Err(refused(&e.stats, peer, username, "password", fail, reason));
        }
        if let Some(ip) = peer.ip()
            && let Err(wait) = e.failed.lock().attempt(ip, Instant::now())
        {
            e.stats.logins_rate_limited.fetch_add(1, Ordering::Relaxed);
            let reason = format!(
                "too many failed logins from {ip}; try again in {} s",
                wait.as_secs().max(1)
            );
            return Err(refused(&e.stats, peer, username, "password", fail, &reason));
        }
        let slot = e
            .verify_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Refusal::new(ErrorCode::ShuttingDown, "shutting down"))?;
        let (e2, name, password) = (e.clone(), username.to_string(), connect.password.clone());
        let checked = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let users = e2.current_users();
            match users.users.get(&name) {
                Some(u) => match &u.password {
                    Some(h) if users::verify_password(&password, h) => Some(u.roles.clone()),
                    Some(_) => None,
                    None => {
                        // Certificate-only user: burn the same time as a real check.
                        let _ = users::verify_password(&password, &e2.dummy_hash);
                        None
                    }
                },
                None => {
                    let _ = users::verify_password(&password, &e2.dummy_hash);
                    None
                }
            }
        })
        .await
        .map_err(|_| Refusal::new(ErrorCode::Internal, "password check failed"))?;
        match checked {
            Some(roles) => {
                if let Some(ip) = peer.ip() {
                    e.failed.lock().succeeded(ip);
                }
                Principal::User {
                    name: username.to_string(),
                    roles,
                }
            }
            None => {
                // One message for unknown users and wrong passwords alike.
                let reason = "wrong user name or password";
                return Err(refused(&e.stats, peer, username, "password", fail, reason));
            }
        }
    } else if !connect.password.is_empty() {
        let reason = "a password without a user name";
        return Err(refused(&e.stats, peer, "", "password", fail, reason));
    } else if e.config.allow_anonymous {
        Principal::Anonymous {
            roles: e.config.anonymous_roles.clone(),
        }
    } else {
        let reason = "anonymous access is not allowed: log in with a user name and password \
                      (or a client certificate)";
        return Err(refused(&e.stats, peer, "", "anonymous", fail, reason));
    };
    let method = match (&principal, &peer.kind) {
        (Principal::Anonymous { .. }, _) => "anonymous",
        (_, PeerKind::Tls { cert_user: Some(_) }) => "certificate",
        _ => "password",
    };
    let who = match &principal {
        Principal::User { name, .. } => name.as_str(),
        _ => "",
    };
    let guard = e
        .acquire_counts(principal.display_name())
        .map_err(|r| refused(&e.stats, peer, who, method, r.code, &r.message))?;
    audit(
        &e.stats,
        &AuditEvent {
            outcome: Outcome::Accepted,
            user: who,
            peer,
            method,
            reason: "",
        },
    );
    Ok(Authenticated {
        principal,
        enforcing: Some(e),
        _counts: Some(guard),
        cache: HashMap::new(),
    })
}

impl Authenticated {
    /// Whether this connection may do `perm` on `dest`; a denial names user, permission and
    /// destination and is logged.
    pub(crate) fn check(&mut self, perm: Permission, dest: &Destination) -> Result<(), Refusal> {
        let Some(e) = &self.enforcing else {
            return Ok(());
        };
        let key = (perm, dest.clone());
        if let Some(&ok) = self.cache.get(&key) {
            // A repeated denial (an anonymous producer retrying) is answered but not re-logged.
            return if ok {
                Ok(())
            } else {
                Err(self.denial(perm, dest, false))
            };
        }
        let roles: &[String] = match &self.principal {
            Principal::Open => return Ok(()),
            Principal::Anonymous { roles } | Principal::User { roles, .. } => roles,
        };
        let ok = e.acl.decide(roles, perm, dest) == Decision::Allowed;
        if self.cache.len() >= DECISION_CACHE {
            self.cache.clear();
        }
        self.cache.insert(key, ok);
        if ok {
            Ok(())
        } else {
            Err(self.denial(perm, dest, true))
        }
    }

    /// [`Authenticated::check`] for `perm`, plus `create` when `dest` does not exist yet and would
    /// be auto-created by this use.
    pub(crate) fn check_use(
        &mut self,
        inner: &BrokerInner,
        perm: Permission,
        dest: &Destination,
    ) -> Result<(), Refusal> {
        if self.enforcing.is_none() {
            return Ok(());
        }
        self.check(perm, dest)?;
        if inner.config.auto_create && !exists(inner, dest) {
            self.check(Permission::Create, dest)?;
        }
        Ok(())
    }

    fn denial(&self, perm: Permission, dest: &Destination, log: bool) -> Refusal {
        if let Some(e) = &self.enforcing {
            e.stats.not_authorized.fetch_add(1, Ordering::Relaxed);
        }
        let user = self.principal.display_name();
        let why = match (&self.enforcing, &self.principal) {
            (Some(e), Principal::Anonymous { roles } | Principal::User { roles, .. }) => {
                match e.acl.decide(roles, perm, dest) {
                    Decision::NoGrant => "no grant matches it".to_string(),
                    Decision::NotGranted(p) => format!(
                        "the deciding grant {p:?} gives {perm} to none of the roles {roles:?}"
                    ),
                    Decision::Allowed => "allowed".to_string(),
                }
            }
            _ => String::new(),
        };
        if log {
            tracing::info!(target: "tandem::audit", user, %perm, destination = %dest, "not authorized");
        }
        Refusal::new(
            ErrorCode::NotAuthorized,
            format!("user {user} may not {perm} on {dest}: {why}"),
        )
    }
}

fn exists(inner: &BrokerInner, dest: &Destination) -> bool {
    let key = (dest.kind(), Arc::<str>::from(dest.name()));
    if dest.kind().is_queue() {
        inner.queues.read().contains_key(&key)
    } else {
        inner.topics.read().contains_key(&key)
    }
}

impl Security {
    /// Appends the security counters to the Prometheus text.
    pub(crate) fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let st = &self.stats;
        for (name, help, v) in [
            (
                "tandem_logins_accepted_total",
                "Logins accepted (0 while the broker runs open).",
                &st.logins_accepted,
            ),
            (
                "tandem_logins_refused_total",
                "Logins refused (wrong credentials, policy, limits).",
                &st.logins_refused,
            ),
            (
                "tandem_logins_rate_limited_total",
                "Password logins refused because their address failed too often.",
                &st.logins_rate_limited,
            ),
            (
                "tandem_not_authorized_total",
                "Requests and sends refused by the grants.",
                &st.not_authorized,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// Says at start how exposed the broker is; an open or plaintext broker is a warning.
pub(crate) fn log_posture(config: &BrokerConfig) {
    let network = config.listen.is_some() || config.stomp.is_some() || config.http.is_some();
    match &config.security {
        None if network => tracing::warn!(
            "SECURITY: no [security] section: the broker runs OPEN. Any client that reaches a \
             listener may connect without credentials and send to, consume from and create any \
             destination. See docs/SECURITY.md"
        ),
        // In process only: nothing outside the embedding application can reach it.
        None => tracing::info!(
            "security: no [security] section: the broker runs open to in-process connections"
        ),
        Some(s) => tracing::info!(
            users_file = %s.users_file.display(),
            grants = s.grants.len(),
            allow_anonymous = s.allow_anonymous,
            allow_plaintext_credentials = s.allow_plaintext_credentials,
            "security: authentication and authorization enforced"
        ),
    }
    match &config.tls {
        None if network => tracing::warn!(
            "SECURITY: no [tls] section: every listener is plaintext (credentials and messages \
             cross the network in the clear)"
        ),
        None => {}
        Some(t) => tracing::info!(
            native = ?t.native,
            stomp = ?t.stomp,
            http = ?t.http,
            client_auth = ?t.client_auth(),
            "tls: listeners secured"
        ),
    }
}
