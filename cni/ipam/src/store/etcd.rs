//! The cluster-wide store on etcd v3.
//!
//! Keys under `<prefix>/<network>/`:
//! - `leases/<ip>`: one lease (JSON);
//! - `attachments/<containerID>/<ifname>` (IPv4) and `attachments/<containerID>/<ifname>/ipv6`:
//!   the attachment's address of each family, so one attachment can never hold two addresses
//!   of one family even when two writers race;
//! - `history/<unix-nanos>-<random>`: one event (JSON); keys sort by time, so pruning is one
//!   range delete.
//!
//! A transaction reads the network's leases (one range read at revision R), lets the caller
//! decide, then commits in one etcd `Txn` that compares every touched lease key's
//! `mod_revision` with what was read (version 0 for "absent") and every new attachment key's
//! absence. If any compare fails, nothing is written and the decision is retried with a fresh
//! snapshot. So two nodes never take the same address, and a timeout leaves nothing half
//! written: a Txn is all or nothing.
//!
//! Connections: `https://` endpoints use rustls with the CA (and client certificate) of
//! `store.tls`; `store.auth` logs in as an etcd user. The store talks to one endpoint at a
//! time, in the configured order, and moves to the next when one cannot be reached or stops
//! answering, all within `store.timeout` per call. Because every commit compares revisions,
//! re-sending a commit whose answer was lost is safe: if the first one landed, the compare
//! fails, the decision is made again on the new state, and ADD is idempotent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use rand::Rng;
use tokio::time::Instant;

use super::{HistoryLimits, Store, check_network_name};
use crate::config::{EtcdAuth, EtcdTls};
use crate::error::IpamError;
use crate::state::{Event, Lease, Leases};

/// How often a transaction is retried after losing a compare-and-swap race.
const MAX_ATTEMPTS: u32 = 64;

/// Checks the endpoint list of an etcd store: at least one, each `http://`, `https://` or
/// without a scheme (then `https://` when `tls` is set, `http://` otherwise), all of one scheme,
/// and `https://` exactly when `store.tls` is set.
pub fn check_endpoints(endpoints: &[String], tls: bool) -> Result<(), IpamError> {
    let invalid = |m: String| Err(IpamError::InvalidConfig(m));
    if endpoints.is_empty() {
        return invalid("etcd store needs at least one endpoint".into());
    }
    let mut first: Option<(&str, bool)> = None;
    for e in endpoints {
        let https = match e.split_once("://") {
            Some(("https", rest)) if !rest.is_empty() => true,
            Some(("http", rest)) if !rest.is_empty() => false,
            Some(_) => {
                return invalid(format!(
                    "etcd endpoint {e:?} is not http://host:port or https://host:port"
                ));
            }
            None if e.is_empty() => return invalid("etcd endpoint \"\" is empty".into()),
            None => tls,
        };
        if let Some((other, other_https)) = first
            && other_https != https
        {
            return invalid(format!(
                "etcd endpoints mix http and https ({other:?} and {e:?}): use https:// for all of them (with store.tls) or http:// for all"
            ));
        }
        first.get_or_insert((e, https));
        if tls && !https {
            return invalid(format!(
                "store.tls is set but etcd endpoint {e:?} is http://: write it as https://, or remove store.tls if the cluster really serves plain http"
            ));
        }
        if !tls && https {
            return invalid(format!(
                "etcd endpoint {e:?} is https:// but store.tls is not set: set store.tls.ca to the CA of the etcd cluster (and store.tls.cert/key if etcd runs with --client-cert-auth)"
            ));
        }
    }
    Ok(())
}

/// TLS material and credentials of an etcd store, read from the node's files.
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<TlsMaterial>,
    user: Option<(String, String)>,
}

#[derive(Clone)]
struct TlsMaterial {
    ca_path: PathBuf,
    ca: Vec<u8>,
    /// Client certificate path, certificate PEM, key PEM.
    identity: Option<(PathBuf, Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("ca", &self.tls.as_ref().map(|t| &t.ca_path))
            .field(
                "cert",
                &self
                    .tls
                    .as_ref()
                    .and_then(|t| t.identity.as_ref().map(|i| &i.0)),
            )
            .field("user", &self.user.as_ref().map(|u| &u.0))
            .finish()
    }
}

fn read_config_file(what: &str, path: &Path) -> Result<Vec<u8>, IpamError> {
    std::fs::read(path).map_err(|e| {
        IpamError::InvalidConfig(format!(
            "{what} {}: cannot read it ({e}): mount the file on the node or fix the path",
            path.display()
        ))
    })
}

impl Security {
    /// Plain http, no user.
    pub fn none() -> Security {
        Security::default()
    }

    /// Reads and checks the PEM files of `store.tls` and the password file of `store.auth`.
    /// A missing, unreadable or malformed file is invalid config (CNI code 7).
    pub fn load(tls: Option<&EtcdTls>, auth: Option<&EtcdAuth>) -> Result<Security, IpamError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = |what: &str, path: &Path| -> Result<Vec<u8>, IpamError> {
            let pem = read_config_file(what, path)?;
            let n = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    IpamError::InvalidConfig(format!(
                        "{what} {}: not a PEM certificate ({e})",
                        path.display()
                    ))
                })?
                .len();
            if n == 0 {
                return Err(IpamError::InvalidConfig(format!(
                    "{what} {}: holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
                    path.display()
                )));
            }
            Ok(pem)
        };
        let tls = match tls {
            None => None,
            Some(t) => {
                let ca = certs("store.tls.ca", &t.ca)?;
                let identity = match (&t.cert, &t.key) {
                    (Some(cert), Some(key)) => {
                        let cert_pem = certs("store.tls.cert", cert)?;
                        let key_pem = read_config_file("store.tls.key", key)?;
                        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                            IpamError::InvalidConfig(format!(
                                "store.tls.key {}: not a PEM private key ({e})",
                                key.display()
                            ))
                        })?;
                        Some((cert.clone(), cert_pem, key_pem))
                    }
                    (None, None) => None,
                    _ => {
                        return Err(IpamError::InvalidConfig(
                            "store.tls.cert and store.tls.key go together: set both (the client certificate and its private key) or neither".into(),
                        ));
                    }
                };
                Some(TlsMaterial {
                    ca_path: t.ca.clone(),
                    ca,
                    identity,
                })
            }
        };
        let user = match auth {
            None => None,
            Some(a) => {
                let raw = read_config_file("store.auth.passwordFile", &a.password_file)?;
                let mut password = String::from_utf8(raw).map_err(|_| {
                    IpamError::InvalidConfig(format!(
                        "store.auth.passwordFile {}: is not UTF-8 text",
                        a.password_file.display()
                    ))
                })?;
                if password.ends_with('\n') {
                    password.pop();
                    if password.ends_with('\r') {
                        password.pop();
                    }
                }
                if password.is_empty() {
                    return Err(IpamError::InvalidConfig(format!(
                        "store.auth.passwordFile {}: is empty",
                        a.password_file.display()
                    )));
                }
                Some((a.user.clone(), password))
            }
        };
        Ok(Security { tls, user })
    }
}

/// etcd-backed store. Owns a private single-threaded tokio runtime so the synchronous
/// [`Store`] API can be called from plain threads and from inside other runtimes alike.
pub struct EtcdStore {
    rt: tokio::runtime::Runtime,
    endpoints: Vec<String>,
    security: Security,
    /// The endpoint in use (its index) and its client; `None` until the first call, and after
    /// the endpoint failed.
    conn: Mutex<Option<(usize, Client)>>,
    prefix: String,
    timeout: Duration,
    limits: HistoryLimits,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("security", &self.security)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What went wrong on one endpoint, and whether another endpoint may do better.
struct Failure {
    endpoint: String,
    cause: String,
    /// The endpoint is unreachable or broken: try the next one.
    fail_over: bool,
    /// The auth token expired: log in again on the same endpoint.
    relogin: bool,
}

impl EtcdStore {
    /// Plain `http://` endpoints without authentication. Connects lazily: an unreachable
    /// etcd makes the first operation fail with `Unavailable`.
    pub fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
        limits: HistoryLimits,
    ) -> Result<EtcdStore, IpamError> {
        EtcdStore::connect_with(endpoints, prefix, timeout, Security::none(), limits)
    }

    /// Any endpoints, with the TLS material and credentials of [`Security::load`]. Connects
    /// lazily, to the first endpoint that answers.
    pub fn connect_with(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
        security: Security,
        limits: HistoryLimits,
    ) -> Result<EtcdStore, IpamError> {
        check_endpoints(endpoints, security.tls.is_some())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| IpamError::Io {
                path: "tokio runtime".into(),
                source,
            })?;
        let https = security.tls.is_some();
        let endpoints = endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else if https {
                    format!("https://{e}")
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        Ok(EtcdStore {
            rt,
            endpoints,
            security,
            conn: Mutex::new(None),
            prefix: prefix.trim_end_matches('/').to_string(),
            timeout,
            limits,
        })
    }

    fn key(&self, network: &str, rest: &str) -> String {
        format!("{}/{network}/{rest}", self.prefix)
    }

    fn lease_key(&self, network: &str, ip: IpAddr) -> String {
        self.key(network, &format!("leases/{ip}"))
    }

    /// The guard key of an attachment's address of `ip`'s family (IPv4 keeps the key of
    /// single-stack berth).
    fn attachment_key(&self, network: &str, (c, i): (&str, &str), ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(_) => self.key(network, &format!("attachments/{c}/{i}")),
            IpAddr::V6(_) => self.key(network, &format!("attachments/{c}/{i}/ipv6")),
        }
    }

    /// Opens a connection to one endpoint: TCP, TLS handshake, HTTP/2, then the login.
    async fn open(&self, endpoint: &str, budget: Duration) -> Result<Client, Failure> {
        let fail = |e: &(dyn std::error::Error + 'static)| self.failure(endpoint, e, true);
        let mut ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| fail(&e))?
            .connect_timeout(budget)
            .keep_alive_while_idle(false);
        if let Some(tls) = &self.security.tls {
            let mut cfg = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca))
                .assume_http2(true);
            if let Some((_, cert, key)) = &tls.identity {
                cfg = cfg.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            ep = ep.tls_config(cfg).map_err(|e| fail(&e))?;
        }
        let channel = match tokio::time::timeout(budget, ep.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(fail(&e)),
            Err(_) => return Err(self.no_answer(endpoint, budget)),
        };
        let mut opts = ConnectOptions::new();
        if let Some((user, password)) = &self.security.user {
            opts = opts.with_user(user.clone(), password.clone());
        }
        let login = Client::from_channel(etcd_client::Channel::Tonic(channel), Some(opts));
        match tokio::time::timeout(budget, login).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(fail(&e)),
            Err(_) => Err(self.no_answer(endpoint, budget)),
        }
    }

    fn no_answer(&self, endpoint: &str, budget: Duration) -> Failure {
        let ms = Duration::from_millis(budget.as_millis() as u64);
        Failure {
            endpoint: endpoint.to_string(),
            cause: format!("no answer within {ms:?}"),
            fail_over: true,
            relogin: false,
        }
    }

    /// Runs one request on the endpoint in use, moving on to the next endpoints when it fails
    /// for reasons another endpoint may not share, all within `store.timeout`.
    /// One range read of the keys under `prefix` (`opts` adds the prefix flag), through
    /// [`Self::run`]'s failover.
    fn get_prefix(
        &self,
        what: &str,
        prefix: &str,
        opts: GetOptions,
    ) -> Result<etcd_client::GetResponse, IpamError> {
        self.run(what, |c| {
            let (prefix, opts) = (prefix.to_string(), opts.clone().with_prefix());
            async move { c.kv_client().get(prefix, Some(opts)).await }
        })
    }

    fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, IpamError>
    where
        T: Send,
        F: FnMut(Client) -> Fut + Send,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let timeout = self.timeout;
        let n = self.endpoints.len();
        block_on(&self.rt, async move {
            let deadline = Instant::now() + timeout;
            let mut failures: Vec<Failure> = Vec::new();
            let current = self.conn.lock().expect("etcd conn lock").clone();
            let start = current.as_ref().map_or(0, |(i, _)| *i);
            let mut current = current.map(|(_, c)| c);
            let mut relogged = false;
            let mut tried = 0;
            while tried < n {
                let index = (start + tried) % n;
                let endpoint = &self.endpoints[index];
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                // The endpoints not tried yet share what is left of the timeout.
                let budget = left / (n - tried) as u32;
                let attempt = async {
                    let (client, fresh) = match current.take() {
                        Some(c) => (c, false),
                        None => (self.open(endpoint, budget).await?, true),
                    };
                    *self.conn.lock().expect("etcd conn lock") = Some((index, client.clone()));
                    op(client)
                        .await
                        .map_err(|e| self.failure(endpoint, &e, fresh))
                };
                let result = match tokio::time::timeout(budget, attempt).await {
                    Ok(r) => r,
                    Err(_) => Err(self.no_answer(endpoint, budget)),
                };
                match result {
                    Ok(v) => return Ok(v),
                    Err(f) => {
                        if f.fail_over || f.relogin {
                            // Broken, or its login expired: the next request opens a new one.
                            *self.conn.lock().expect("etcd conn lock") = None;
                        }
                        if f.relogin && !relogged {
                            // Same endpoint, new connection and token.
                            relogged = true;
                            continue;
                        }
                        let fail_over = f.fail_over;
                        failures.push(f);
                        if !fail_over {
                            break;
                        }
                        tried += 1;
                    }
                }
            }
            Err(unavailable(what, timeout, n, failures))
        })
    }

    /// Explains an error of one endpoint in the terms of the config.
    /// `fresh`: the connection was opened for this request, so a transport failure is the
    /// server's first word on it.
    fn failure(
        &self,
        endpoint: &str,
        e: &(dyn std::error::Error + 'static),
        fresh: bool,
    ) -> Failure {
        // etcd-client's error does not expose what it wraps through `source()`.
        let e: &(dyn std::error::Error + 'static) = match e.downcast_ref::<etcd_client::Error>() {
            Some(etcd_client::Error::GRpcStatus(s)) => s,
            Some(etcd_client::Error::TransportError(t)) => t,
            _ => e,
        };
        let f = |cause: String, fail_over: bool| Failure {
            endpoint: endpoint.to_string(),
            cause,
            fail_over,
            relogin: false,
        };
        if let Some(cause) = self.tls_cause(endpoint, e) {
            return f(cause, true);
        }
        if let Some(status) = find::<tonic::Status>(e) {
            use tonic::Code;
            let msg = status.message();
            if msg.contains("authentication failed") {
                let user = self.security.user.as_ref().map_or("", |u| u.0.as_str());
                return f(
                    format!(
                        "etcd refused user {user:?} ({msg}): check store.auth.user and the password in store.auth.passwordFile"
                    ),
                    false,
                );
            }
            if msg.contains("authentication is not enabled") {
                return f(
                    format!(
                        "{msg}: remove store.auth, or enable authentication on the etcd cluster"
                    ),
                    false,
                );
            }
            if msg.contains("invalid auth token") || msg.contains("user name is empty") {
                if self.security.user.is_none() {
                    return f(
                        format!(
                            "etcd requires authentication ({msg}): set store.auth (user and passwordFile)"
                        ),
                        false,
                    );
                }
                let mut failure = f(format!("the login expired ({msg})"), false);
                failure.relogin = true;
                return failure;
            }
            if status.code() == Code::PermissionDenied {
                let who = match (&self.security.user, &self.security.tls) {
                    (Some((user, _)), _) => format!("user {user:?}"),
                    (None, Some(t)) if t.identity.is_some() => "the user named by the client certificate's common name (CN), as there is no store.auth,".into(),
                    (None, _) => "this client".into(),
                };
                return f(
                    format!(
                        "permission denied ({msg}): grant {who} read and write on the key prefix {} (etcdctl role grant-permission --prefix), or set store.auth",
                        self.prefix
                    ),
                    false,
                );
            }
            // With TLS 1.3 the server judges the client certificate after the client's side of
            // the handshake is done, and its alert is often lost as it closes the connection
            // (seen as "connection closed", "broken pipe" or "reset" on the first request).
            if let Some(tls) = &self.security.tls
                && fresh
                && matches!(
                    status.code(),
                    Code::Cancelled | Code::Unknown | Code::Unavailable
                )
                && std::error::Error::source(status).is_some()
            {
                let cause = match &tls.identity {
                    None => "TLS: the server closed the connection right after the handshake; no client certificate was sent, and etcd with --client-cert-auth requires one: set store.tls.cert and store.tls.key".to_string(),
                    Some((cert, ..)) => format!(
                        "TLS: the server closed the connection right after the handshake: it may have refused the client certificate {}: check that it is signed by the CA etcd trusts for clients (--trusted-ca-file) and has not expired",
                        cert.display()
                    ),
                };
                return f(cause, true);
            }
            let broken = matches!(
                status.code(),
                Code::Unavailable
                    | Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Cancelled
                    | Code::Internal
            );
            let mut cause = format!("{msg} (gRPC code {:?})", status.code());
            if let Some(source) = std::error::Error::source(status) {
                cause.push_str(": ");
                cause.push_str(&chain(source));
            }
            return f(cause, broken);
        }
        // Transport and I/O errors: this endpoint is unreachable.
        f(chain(e), true)
    }

    /// A TLS failure found in the error's causes, as an explanation, or `None`.
    fn tls_cause(&self, endpoint: &str, e: &(dyn std::error::Error + 'static)) -> Option<String> {
        use rustls::CertificateError as C;
        let tls = self.security.tls.as_ref()?;
        let ca = tls.ca_path.display();
        let host = host_of(endpoint);
        // The server's verdict on our certificate arrives as an alert. Some layers (h2) hide the
        // rustls error from `source()`, so the alert is also read from the text.
        let alert = match find_rustls(e) {
            Some(rustls::Error::InvalidCertificate(c)) => {
                return Some(match c {
                    C::UnknownIssuer | C::BadSignature => format!(
                        "TLS: the server's certificate is not signed by the CA in store.tls.ca ({ca}) (unknown CA): set store.tls.ca to the CA that issued the etcd servers' certificates"
                    ),
                    C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                        "TLS: the server's certificate is not valid for the name {host:?} (name mismatch): use an endpoint name or address listed in the certificate's subject alternative names, or reissue the certificate with it"
                    ),
                    C::Expired | C::ExpiredContext { .. } => format!(
                        "TLS: the server's certificate has expired ({c}): renew the etcd server certificate (and check this node's clock)"
                    ),
                    C::NotValidYet | C::NotValidYetContext { .. } => format!(
                        "TLS: the server's certificate is not valid yet ({c}): check this node's clock"
                    ),
                    other => format!(
                        "TLS: the server's certificate was refused ({other}): check store.tls.ca ({ca})"
                    ),
                });
            }
            Some(rustls::Error::AlertReceived(a)) => format!("{a:?}"),
            Some(other) => return Some(format!("TLS: {other}")),
            None => {
                let text = chain(e);
                let (_, rest) = text.split_once("received fatal alert: ")?;
                rest.split(|c: char| !c.is_ascii_alphanumeric())
                    .next()
                    .unwrap_or_default()
                    .to_string()
            }
        };
        let refusal = matches!(
            alert.as_str(),
            "CertificateRequired"
                | "HandshakeFailure"
                | "BadCertificate"
                | "CertificateExpired"
                | "UnknownCA"
                | "CertificateUnknown"
                | "CertificateRevoked"
                | "UnsupportedCertificate"
        );
        Some(match (&tls.identity, refusal) {
            (None, true) => format!(
                "TLS: the server requires a client certificate (no client certificate was sent; alert {alert}): set store.tls.cert and store.tls.key"
            ),
            (Some((cert, ..)), true) => format!(
                "TLS: the server refused the client certificate {} (alert {alert}): check that it is signed by the CA etcd trusts for clients (--trusted-ca-file) and has not expired",
                cert.display()
            ),
            (_, false) => format!("TLS: the server ended the connection (alert {alert})"),
        })
    }

    /// Leases with their mod revisions.
    fn snapshot(&self, network: &str) -> Result<(Leases, BTreeMap<IpAddr, i64>), IpamError> {
        let prefix = self.key(network, "leases/");
        // A serializable (local) read is enough: the commit compares every touched key's
        // revision, so a stale snapshot only costs a retry, never a wrong commit.
        let resp = self.get_prefix("read", &prefix, GetOptions::new().with_serializable())?;
        let mut leases = Leases::new();
        let mut revs = BTreeMap::new();
        for item in resp.kvs() {
            let key = String::from_utf8_lossy(item.key()).into_owned();
            let lease: Lease =
                serde_json::from_slice(item.value()).map_err(|e| IpamError::CorruptStore {
                    path: key.clone().into(),
                    reason: format!("etcd value is not a lease: {e}"),
                })?;
            if key != self.lease_key(network, lease.ip) {
                return Err(IpamError::CorruptStore {
                    path: key.into(),
                    reason: format!("holds the lease of {}", lease.ip),
                });
            }
            revs.insert(lease.ip, item.mod_revision());
            leases.insert(lease.ip, lease);
        }
        Ok((leases, revs))
    }

    fn prune_history(
        &self,
        network: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), IpamError> {
        let cutoff = now - self.limits.max_age;
        let start = self.key(network, "history/");
        let end = self.key(network, &format!("history/{:020}", nanos(cutoff)));
        self.run("prune history", |c| {
            let (start, end) = (start.clone(), end.clone());
            async move {
                c.kv_client()
                    .delete(
                        start,
                        Some(etcd_client::DeleteOptions::new().with_range(end)),
                    )
                    .await
            }
        })?;
        // Count bound: drop the oldest beyond max_events.
        let prefix = self.key(network, "history/");
        let resp = self.get_prefix("count history", &prefix, GetOptions::new().with_keys_only())?;
        let keys = resp.kvs();
        if keys.len() > self.limits.max_events {
            let last_dropped = keys[keys.len() - self.limits.max_events - 1].key().to_vec();
            let mut end = last_dropped;
            end.push(0);
            self.run("prune history", |c| {
                let (prefix, end) = (prefix.clone(), end.clone());
                async move {
                    c.kv_client()
                        .delete(
                            prefix,
                            Some(etcd_client::DeleteOptions::new().with_range(end)),
                        )
                        .await
                }
            })?;
        }
        Ok(())
    }
}

/// The error of a call that no endpoint served.
fn unavailable(
    what: &str,
    timeout: Duration,
    endpoints: usize,
    failures: Vec<Failure>,
) -> IpamError {
    let mut msg = format!("etcd {what} failed");
    if failures.is_empty() {
        msg.push_str(&format!(": no endpoint answered within {timeout:?}"));
    }
    for (i, f) in failures.iter().enumerate() {
        msg.push_str(if i == 0 { ": " } else { "; " });
        msg.push_str(&format!("{}: {}", f.endpoint, f.cause));
    }
    let failed_over = failures.iter().all(|f| f.fail_over);
    if failed_over && failures.len() < endpoints && !failures.is_empty() {
        msg.push_str(&format!(
            "; the other endpoints were not reached within store.timeout ({timeout:?})"
        ));
    }
    IpamError::Unavailable(msg)
}

/// The error and its causes on one line, without repeating a cause that its parent's text
/// already contains.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

/// The first error of type `T` among `e` and its causes.
fn find<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        cur = c.source();
    }
    None
}

/// The rustls error among the causes. An `io::Error` hides the error it wraps from
/// `source()`, so each one is opened.
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(inner) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(found) = find_rustls(inner)
        {
            return Some(found);
        }
        cur = c.source();
    }
    None
}

/// The host part of an endpoint URL, as TLS checks it.
fn host_of(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn nanos(t: chrono::DateTime<chrono::Utc>) -> u64 {
    t.timestamp_nanos_opt().unwrap_or(0).max(0) as u64
}

/// Runs a future on the store's runtime, from a plain thread or from inside another runtime.
fn block_on<F>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(fut))
                .join()
                .expect("etcd worker thread panicked")
        })
    } else {
        rt.block_on(fut)
    }
}

impl Store for EtcdStore {
    fn read(&self, network: &str) -> Result<Leases, IpamError> {
        check_network_name(network)?;
        Ok(self.snapshot(network)?.0)
    }

    fn transact(&self, network: &str, decide: &mut super::Decide<'_>) -> Result<(), IpamError> {
        check_network_name(network)?;
        let mut backoff_ms = 1u64;
        for _ in 0..MAX_ATTEMPTS {
            let (leases, revs) = self.snapshot(network)?;
            let plan = decide(&leases)?;
            if plan.is_empty() {
                return Ok(());
            }
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            let touched: BTreeSet<IpAddr> = plan
                .puts
                .iter()
                .map(|l| l.ip)
                .chain(plan.deletes.iter().copied())
                .collect();
            for ip in &touched {
                let key = self.lease_key(network, *ip);
                compares.push(match revs.get(ip) {
                    Some(rev) => Compare::mod_revision(key, CompareOp::Equal, *rev),
                    None => Compare::version(key, CompareOp::Equal, 0),
                });
            }
            let mut after = leases.clone();
            plan.apply(&mut after);
            // One op per key: etcd refuses a Txn that names a key twice.
            let mut unguard = BTreeSet::new();
            for ip in &touched {
                let old = leases.get(ip).and_then(|l| l.attachment());
                let new = after.get(ip).and_then(|l| l.attachment());
                if old == new {
                    continue;
                }
                if let Some(a) = old {
                    unguard.insert(self.attachment_key(network, a, *ip));
                    // An IPv6 attachment written before dual-stack has the IPv4 key: drop it
                    // too unless the attachment keeps an IPv4 address.
                    if ip.is_ipv6()
                        && !after
                            .values()
                            .any(|l| l.ip.is_ipv4() && l.attachment() == Some(a))
                    {
                        unguard.insert(self.attachment_key(network, a, IpAddr::from([0u8; 4])));
                    }
                }
                if let Some(a) = new {
                    let key = self.attachment_key(network, a, *ip);
                    compares.push(Compare::version(key.clone(), CompareOp::Equal, 0));
                    ops.push(TxnOp::put(key, ip.to_string(), None));
                }
            }
            ops.extend(unguard.into_iter().map(|k| TxnOp::delete(k, None)));
            for ip in &plan.deletes {
                if !after.contains_key(ip) {
                    ops.push(TxnOp::delete(self.lease_key(network, *ip), None));
                }
            }
            for l in &plan.puts {
                let v = serde_json::to_vec(l).expect("leases always serialize");
                ops.push(TxnOp::put(self.lease_key(network, l.ip), v, None));
            }
            let tag: u32 = rand::rng().random();
            for (i, e) in plan.events.iter().enumerate() {
                let k = self.key(
                    network,
                    &format!("history/{:020}-{tag:08x}-{i:04}", nanos(e.time)),
                );
                let v = serde_json::to_vec(e).expect("events always serialize");
                ops.push(TxnOp::put(k, v, None));
            }
            let txn = Txn::new().when(compares).and_then(ops);
            let resp = self.run("commit", |c| {
                let txn = txn.clone();
                async move { c.kv_client().txn(txn).await }
            })?;
            if resp.succeeded() {
                // Occasional, bounded pruning keeps history within its limits.
                if rand::rng().random_ratio(1, 200)
                    && let Some(e) = plan.events.last()
                {
                    let _ = self.prune_history(network, e.time);
                }
                return Ok(());
            }
            let sleep = rand::rng().random_range(0..=backoff_ms);
            std::thread::sleep(Duration::from_millis(sleep));
            backoff_ms = (backoff_ms * 2).min(50);
        }
        Err(IpamError::Unavailable(format!(
            "etcd: lost {MAX_ATTEMPTS} compare-and-swap races in a row on network {network:?}; retry"
        )))
    }

    fn history(&self, network: &str) -> Result<Vec<Event>, IpamError> {
        check_network_name(network)?;
        let prefix = self.key(network, "history/");
        let resp = self.get_prefix("read history", &prefix, GetOptions::new())?;
        // Commit order (create revision), then the event's index inside its commit.
        let mut items: Vec<&etcd_client::KeyValue> = resp.kvs().iter().collect();
        items.sort_by(|a, b| (a.create_revision(), a.key()).cmp(&(b.create_revision(), b.key())));
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let e: Event =
                serde_json::from_slice(item.value()).map_err(|e| IpamError::CorruptStore {
                    path: String::from_utf8_lossy(item.key()).into_owned().into(),
                    reason: format!("etcd value is not a history event: {e}"),
                })?;
            out.push(e);
        }
        let now = chrono::Utc::now();
        let newest = out.last().map(|e| e.time).unwrap_or(now);
        super::prune(&mut out, &self.limits, now.max(newest));
        Ok(out)
    }

    fn networks(&self) -> Result<Vec<String>, IpamError> {
        let prefix = format!("{}/", self.prefix);
        let resp = self.get_prefix("list", &prefix, GetOptions::new().with_keys_only())?;
        let mut set = BTreeSet::new();
        for item in resp.kvs() {
            let k = String::from_utf8_lossy(item.key());
            if let Some(rest) = k.strip_prefix(&prefix)
                && let Some((net, _)) = rest.split_once('/')
            {
                set.insert(net.to_string());
            }
        }
        Ok(set.into_iter().collect())
    }

    fn status(&self) -> Result<(), IpamError> {
        self.run("status", |c| async move {
            c.maintenance_client().status().await
        })
        .map(|_| ())
    }

    fn spreads(&self) -> bool {
        true
    }
}
