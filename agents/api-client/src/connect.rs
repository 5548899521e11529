//! Client-side connectors matching the server's listeners (used by berthctl and tests).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {0:?}: use https://host:port or unix:///path/to/socket")]
    Endpoint(String),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "https endpoints need a client certificate, key and CA (--cert, --key, --ca or a context)"
    )]
    MissingTls,
    #[error("cannot connect to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// PEM material for mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Name to verify in the server certificate instead of the endpoint host.
    pub server_name: Option<String>,
}

fn read(p: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(p).map_err(|source| ClientError::Read {
        path: p.to_path_buf(),
        source,
    })
}

/// Connects to `https://host:port` (mutual TLS) or `unix:///path`.
pub async fn connect(endpoint: &str, tls: Option<&TlsFiles>) -> Result<Channel, ClientError> {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(ClientError::Endpoint(endpoint.to_string()));
        }
        return connect_unix(Path::new(path)).await;
    }
    if !endpoint.starts_with("https://") {
        return Err(ClientError::Endpoint(endpoint.to_string()));
    }
    let tls = tls.ok_or(ClientError::MissingTls)?;
    let mut cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
        .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
    if let Some(name) = &tls.server_name {
        cfg = cfg.domain_name(name.clone());
    }
    let conn_err = |source| ClientError::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    Endpoint::from_shared(endpoint.to_string())
        .map_err(|_| ClientError::Endpoint(endpoint.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .tls_config(cfg)
        .map_err(conn_err)?
        .connect()
        .await
        .map_err(conn_err)
}

/// Connects to the agent's local socket.
pub async fn connect_unix(path: &Path) -> Result<Channel, ClientError> {
    let p = path.to_path_buf();
    // The URI is required by tonic but unused: the connector below dials the socket.
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_| {
            let p = p.clone();
            async move {
                let s = tokio::net::UnixStream::connect(p).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .map_err(|source| ClientError::Connect {
            endpoint: format!("unix://{}", path.display()),
            source,
        })
}
