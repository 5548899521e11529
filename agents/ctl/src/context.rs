//! Where to connect and with which certificate: flags, or a kubeconfig-like context file
//! (`~/.config/berth/config.toml`, or `$BERTH_CONFIG`).
//!
//! ```toml
//! current-context = "lab"
//!
//! [contexts.lab]
//! endpoint = "https://node-1.lab:7443"
//! ca = "pki/ca.pem"            # relative paths are relative to this file
//! cert = "pki/alice.pem"
//! key = "pki/alice-key.pem"
//! server-name = "node-1"       # optional: name to verify in the server certificate
//!
//! [contexts.local]
//! endpoint = "unix:///run/berth/api.sock"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_api::client::TlsFiles;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read context file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("context file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("context {name:?} is not in {path} (it has: {have})")]
    Unknown {
        name: String,
        path: PathBuf,
        have: String,
    },
    #[error(
        "no endpoint: pass --endpoint (https://host:port or unix:///path) or set current-context in {0}"
    )]
    NoEndpoint(String),
    #[error("--cert, --key and --ca go together: {0} is missing")]
    PartialTls(&'static str),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ContextFile {
    #[serde(default)]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub server_name: Option<String>,
}

/// The default context file path.
pub fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("berth/config.toml"))
}

/// Loads the file; a missing file is an empty one unless it was named explicitly.
pub fn load(path: &Path, explicit: bool) -> Result<ContextFile, ContextError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(ContextFile::default());
        }
        Err(source) => {
            return Err(ContextError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut file: ContextFile = toml::from_str(&text).map_err(|source| ContextError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    for c in file.contexts.values_mut() {
        for p in [&mut c.ca, &mut c.cert, &mut c.key].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
    Ok(file)
}

/// What the flags said (each overrides the context).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub context: Option<String>,
    pub endpoint: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

/// Endpoint and TLS files to use.
pub fn resolve(
    file: &ContextFile,
    file_path: &Path,
    o: &Overrides,
) -> Result<(String, Option<TlsFiles>), ContextError> {
    let name = o.context.clone().or_else(|| file.current_context.clone());
    let ctx = match &name {
        Some(n) => file
            .contexts
            .get(n)
            .cloned()
            .ok_or_else(|| ContextError::Unknown {
                name: n.clone(),
                path: file_path.to_path_buf(),
                have: file.contexts.keys().cloned().collect::<Vec<_>>().join(", "),
            })?,
        None => Context::default(),
    };
    let endpoint = o
        .endpoint
        .clone()
        .or(ctx.endpoint)
        .ok_or_else(|| ContextError::NoEndpoint(file_path.display().to_string()))?;
    let ca = o.ca.clone().or(ctx.ca);
    let cert = o.cert.clone().or(ctx.cert);
    let key = o.key.clone().or(ctx.key);
    let tls = match (ca, cert, key) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
            ca,
            cert,
            key,
            server_name: o.server_name.clone().or(ctx.server_name),
        }),
        (None, _, _) => return Err(ContextError::PartialTls("--ca")),
        (_, None, _) => return Err(ContextError::PartialTls("--cert")),
        (_, _, None) => return Err(ContextError::PartialTls("--key")),
    };
    Ok((endpoint, tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_resolve_relative_paths_and_flags_override() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.toml");
        std::fs::write(
            &p,
            r#"
current-context = "lab"
[contexts.lab]
endpoint = "https://n1:7443"
ca = "pki/ca.pem"
cert = "/abs/a.pem"
key = "pki/a-key.pem"
server-name = "node-1"
[contexts.local]
endpoint = "unix:///run/berth/api.sock"
"#,
        )
        .unwrap();
        let f = load(&p, true).unwrap();
        let (ep, tls) = resolve(&f, &p, &Overrides::default()).unwrap();
        assert_eq!(ep, "https://n1:7443");
        let tls = tls.unwrap();
        assert_eq!(tls.ca, d.path().join("pki/ca.pem"));
        assert_eq!(tls.cert, PathBuf::from("/abs/a.pem"));
        assert_eq!(tls.server_name.as_deref(), Some("node-1"));

        let o = Overrides {
            context: Some("local".into()),
            ..Default::default()
        };
        let (ep, tls) = resolve(&f, &p, &o).unwrap();
        assert_eq!(ep, "unix:///run/berth/api.sock");
        assert!(tls.is_none());

        let o = Overrides {
            context: Some("nope".into()),
            ..Default::default()
        };
        let e = resolve(&f, &p, &o).unwrap_err();
        assert!(e.to_string().contains("(it has: lab, local)"), "{e}");

        let o = Overrides {
            endpoint: Some("https://x:1".into()),
            context: Some("local".into()),
            cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(matches!(
            resolve(&f, &p, &o),
            Err(ContextError::PartialTls("--ca"))
        ));
    }

    #[test]
    fn missing_default_file_is_empty_but_missing_named_file_is_an_error() {
        let p = Path::new("/nonexistent/berth/config.toml");
        assert!(load(p, false).unwrap().contexts.is_empty());
        assert!(matches!(load(p, true), Err(ContextError::Read { .. })));
        let e = resolve(&ContextFile::default(), p, &Overrides::default()).unwrap_err();
        assert!(matches!(e, ContextError::NoEndpoint(_)));
    }
}
