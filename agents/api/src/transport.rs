//! Listeners: TCP with mandatory mutual TLS, and a local unix socket whose callers are
//! identified by SO_PEERCRED. Both feed one stream of authenticated connections into the
//! gRPC server; each connection carries its [`Caller`] as tonic connect-info.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;
use crate::error::ApiError;
use crate::identity::Caller;
use crate::metrics::Metrics;

/// Connect-info attached to every request: who is on the other end.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub caller: Arc<Caller>,
}

/// An authenticated connection.
pub enum Conn {
    Tls(Box<TlsStream<TcpStream>>, ConnInfo),
    Unix(UnixStream, ConnInfo),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Tls(_, i) | Conn::Unix(_, i) => i.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Unix(s, _) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Unix(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Unix(s, _) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Unix(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Conn::Unix(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tls(s, _) => s.is_write_vectored(),
            Conn::Unix(s, _) => s.is_write_vectored(),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ApiError> {
    std::fs::read(path).map_err(|source| ApiError::ReadFile {
        path: path.to_path_buf(),
        source,
    })
}

fn tls_err(what: &Path, e: impl std::error::Error + Send + Sync + 'static) -> ApiError {
    ApiError::Tls {
        what: what.display().to_string(),
        source: Box::new(e),
    }
}

/// rustls server config: our cert, client certs required and verified against the CA,
/// HTTP/2 only.
pub fn server_tls_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, ApiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&tls.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(&tls.cert, e))?;
    if certs.is_empty() {
        return Err(ApiError::Config(format!(
            "{} holds no certificate",
            tls.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key)?).map_err(|e| tls_err(&tls.key, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read(&tls.client_ca)?) {
        let ca = ca.map_err(|e| tls_err(&tls.client_ca, e))?;
        roots.add(ca).map_err(|e| tls_err(&tls.client_ca, e))?;
    }
    if roots.is_empty() {
        return Err(ApiError::Config(format!(
            "{} holds no CA certificate",
            tls.client_ca.display()
        )));
    }
    let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    );
    if let Some(crl_path) = &tls.crl {
        let crls: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_slice_iter(&read(crl_path)?)
                .collect::<Result<_, _>>()
                .map_err(|e| tls_err(crl_path, e))?;
        if crls.is_empty() {
            return Err(ApiError::Config(format!(
                "{} holds no CRL",
                crl_path.display()
            )));
        }
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = verifier.build().map_err(|e| tls_err(&tls.client_ca, e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls_err(&tls.cert, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls_err(&tls.key, e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The TLS server config in force; rebuilt when the certificate, key, CA or CRL files
/// change (rotation without restart). A broken new set is logged and the old one kept.
pub struct TlsStore {
    files: TlsConfig,
    current: std::sync::RwLock<Arc<rustls::ServerConfig>>,
    generation: std::sync::atomic::AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
    watcher: std::sync::Mutex<Option<crate::watch::FileWatcher>>,
}

impl TlsStore {
    pub fn load(files: &TlsConfig) -> Result<Arc<TlsStore>, ApiError> {
        Ok(Arc::new(TlsStore {
            current: std::sync::RwLock::new(server_tls_config(files)?),
            files: files.clone(),
            generation: std::sync::atomic::AtomicU64::new(1),
            last_error: std::sync::Mutex::new(None),
            watcher: std::sync::Mutex::new(None),
        }))
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().expect("tls lock").clone()
    }

    /// Bumped each time new TLS material takes effect.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("tls lock").clone()
    }

    /// Rebuilds from the files; on error the previous config stays.
    pub fn reload(&self) -> Result<(), ApiError> {
        let res = server_tls_config(&self.files);
        let mut last = self.last_error.lock().expect("tls lock");
        match res {
            Ok(cfg) => {
                *self.current.write().expect("tls lock") = cfg;
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                *last = None;
                tracing::info!("tls material reloaded");
                Ok(())
            }
            Err(e) => {
                let msg = berth_common::error_chain(&e);
                tracing::error!(error = %msg, "new tls material refused; the previous one stays in force");
                *last = Some(msg);
                Err(e)
            }
        }
    }

    pub fn watch(self: &Arc<Self>) -> Result<(), ApiError> {
        let mut files = vec![
            self.files.cert.clone(),
            self.files.key.clone(),
            self.files.client_ca.clone(),
        ];
        files.extend(self.files.crl.clone());
        let weak = Arc::downgrade(self);
        let watcher = crate::watch::watch_files(&files, move || match weak.upgrade() {
            Some(store) => {
                let _ = store.reload();
                true
            }
            None => false,
        })
        .map_err(|e| ApiError::Tls {
            what: self.files.cert.display().to_string(),
            source: Box::new(e),
        })?;
        *self.watcher.lock().expect("tls lock") = Some(watcher);
        Ok(())
    }
}

/// Short, stable label for a refused handshake (metrics, logs).
fn handshake_reason(e: &io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            "eof"
        } else {
            "io"
        };
    };
    match inner {
        Error::NoCertificatesPresented => "no_client_cert",
        Error::InvalidCertificate(CertificateError::Expired)
        | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => "expired",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_ca",
        Error::InvalidCertificate(CertificateError::Revoked) => "revoked",
        Error::InvalidCertificate(CertificateError::BadSignature) => "bad_signature",
        Error::InvalidCertificate(_) => "invalid_cert",
        Error::PeerIncompatible(_) | Error::NoApplicationProtocol => "incompatible",
        _ => "tls",
    }
}

pub(crate) struct AcceptOptions {
    pub handshake_timeout: Duration,
    pub max_handshakes: usize,
}

/// Accepts TCP connections and runs TLS handshakes concurrently (bounded), forwarding
/// only authenticated connections.
pub(crate) fn spawn_tls_acceptor(
    listener: TcpListener,
    tls: Arc<TlsStore>,
    opts: AcceptOptions,
    metrics: Metrics,
    out: mpsc::Sender<Result<Conn, io::Error>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(opts.max_handshakes));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => return,
            };
            let (sock, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let _ = sock.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.current());
            let out = out.clone();
            let metrics = metrics.clone();
            let timeout = opts.handshake_timeout;
            tokio::spawn(async move {
                let _permit = permit;
                let tls = match tokio::time::timeout(timeout, acceptor.accept(sock)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        let reason = handshake_reason(&e);
                        metrics.handshake_failed(reason);
                        tracing::warn!(%peer, reason, error = %e, "tls handshake refused");
                        return;
                    }
                    Err(_) => {
                        metrics.handshake_failed("timeout");
                        tracing::warn!(%peer, "tls handshake timed out");
                        return;
                    }
                };
                let leaf = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec());
                let caller = match leaf.as_deref().map(|d| Caller::from_cert_der(d, peer)) {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        metrics.handshake_failed("no_identity");
                        tracing::warn!(%peer, error = %e, "client certificate has no usable identity");
                        return;
                    }
                    None => {
                        metrics.handshake_failed("no_client_cert");
                        return;
                    }
                };
                let info = ConnInfo {
                    caller: Arc::new(caller),
                };
                let _ = out.send(Ok(Conn::Tls(Box::new(tls), info))).await;
            });
        }
    });
}

/// Binds the local socket (mode from config, stale socket replaced).
pub(crate) fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, ApiError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let listen_err = |source| ApiError::Listen {
        addr: path.display().to_string(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(listen_err)?,
        Ok(_) => {
            return Err(ApiError::Config(format!(
                "{} exists and is not a socket: remove it or choose another unix_socket path",
                path.display()
            )));
        }
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(listen_err)?;
    Ok(listener)
}

pub(crate) fn spawn_unix_acceptor(
    listener: UnixListener,
    out: mpsc::Sender<Result<Conn, io::Error>>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => return,
            };
            let sock = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "unix accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let cred = match sock.peer_cred() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "no peer credentials on unix socket; connection dropped");
                    continue;
                }
            };
            let info = ConnInfo {
                caller: Arc::new(Caller::from_unix(cred.uid(), cred.gid(), cred.pid())),
            };
            if out.send(Ok(Conn::Unix(sock, info))).await.is_err() {
                return;
            }
        }
    });
}
