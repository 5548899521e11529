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
//!
//! Without `--endpoint`, `$BERTH_ENDPOINT` or a context, berthctl talks to the node's local
//! socket [`LOCAL_SOCKET`] when it exists. `berthctl config …` edits the file in place
//! (comments and other contexts are kept).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::connect::TlsFiles;
use serde::{Deserialize, Serialize};

/// The agent's local socket on a node (the `unix_socket` of the DaemonSet and the systemd
/// unit): berthctl's endpoint when nothing else names one and the socket exists.
pub const LOCAL_SOCKET: &str = "/run/berth/api.sock";

/// What to do when no endpoint is known (said by [`ContextError::NoEndpoint`]).
const SET_ONE: &str = "name the agent with --endpoint unix:///path/to/api.sock (or \
https://host:port with --ca, --cert and --key), $BERTH_ENDPOINT, or a context: \
`berthctl --endpoint … config set-context NAME` then `berthctl config use-context NAME` \
(scripts/demo up writes one)";

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
    #[error("no agent endpoint: tried {}; {SET_ONE}", .tried.join(", "))]
    NoEndpoint { tried: Vec<String> },
    #[error("--cert, --key and --ca go together: {0} is missing")]
    PartialTls(&'static str),
    #[error("invalid context name {0:?}: use letters, digits, '.', '_' and '-'")]
    BadName(String),
    #[error("no current context in {0}: choose one with `berthctl config use-context NAME`")]
    NoCurrent(PathBuf),
    #[error("cannot write context file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ContextFile {
    #[serde(default)]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// How the endpoint was chosen: said when it cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--endpoint` or `$BERTH_ENDPOINT`.
    Flag,
    /// A context of the context file (`--context`, `$BERTH_CONTEXT` or `current-context`).
    Context { name: String, file: PathBuf },
    /// [`LOCAL_SOCKET`] (or the path given to [`resolve`]): nothing else named an endpoint.
    LocalSocket,
}

/// Where to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: String,
    pub tls: Option<TlsFiles>,
    pub origin: Origin,
}

/// Endpoint and TLS files to use: the flags, else the selected context, else the local
/// socket `local_socket` when it exists.
pub fn resolve(
    file: &ContextFile,
    file_path: &Path,
    o: &Overrides,
    local_socket: &Path,
) -> Result<Target, ContextError> {
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
    let (endpoint, origin) = match (o.endpoint.clone(), ctx.endpoint, &name) {
        (Some(e), _, _) => (e, Origin::Flag),
        (None, Some(e), Some(n)) => (
            e,
            Origin::Context {
                name: n.clone(),
                file: file_path.to_path_buf(),
            },
        ),
        (None, None, Some(n)) => {
            return Err(ContextError::NoEndpoint {
                tried: vec![
                    "--endpoint and $BERTH_ENDPOINT (unset)".into(),
                    format!(
                        "context {n:?} in {} (it has no endpoint)",
                        file_path.display()
                    ),
                ],
            });
        }
        (None, _, None) if local_socket.exists() => (
            format!("unix://{}", local_socket.display()),
            Origin::LocalSocket,
        ),
        (None, _, None) => {
            return Err(ContextError::NoEndpoint {
                tried: vec![
                    "--endpoint and $BERTH_ENDPOINT (unset)".into(),
                    format!("current-context in {} (none set)", file_path.display()),
                    format!("the local socket {} (absent)", local_socket.display()),
                ],
            });
        }
    };
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
    Ok(Target {
        endpoint,
        tls,
        origin,
    })
}

impl Origin {
    /// Why this endpoint, and what to check or change when it does not answer.
    pub fn hint(&self) -> String {
        match self {
            Origin::Flag => "from --endpoint or $BERTH_ENDPOINT: check the address and that \
                berth-agent's [api] listens there"
                .into(),
            Origin::Context { name, file } => format!(
                "from context {name:?} in {}: is its agent running (scripts/demo status for the \
                 demo)? Another context: --context NAME or `berthctl config use-context NAME`; \
                 all of them: `berthctl config get-contexts`",
                file.display()
            ),
            Origin::LocalSocket => format!(
                "the node's local socket, used because no --endpoint, $BERTH_ENDPOINT or context \
                 is set: is berth-agent running here with [api] unix_socket = \"{LOCAL_SOCKET}\"? \
                 Otherwise {SET_ONE}"
            ),
        }
    }
}

/// A context name as written into the file: `[A-Za-z0-9._-]+`.
fn check_name(name: &str) -> Result<(), ContextError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(ContextError::BadName(name.to_string()));
    }
    Ok(())
}

/// The file as an editable document (kept comments and order); a missing file is empty.
fn read_document(path: &Path) -> Result<toml_edit::DocumentMut, ContextError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(ContextError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    // Parsed strictly first, so an edit never builds on a file berthctl could not read.
    toml::from_str::<ContextFile>(&text).map_err(|source| ContextError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .parse::<toml_edit::DocumentMut>()
        .expect("a document toml accepted parses as a toml_edit document"))
}

/// Replaces `path` with `doc`: a temporary file in the same dir, renamed over it, so a
/// reader sees the old file or the new one. A new file (and dir) is private to its owner.
fn write_document(path: &Path, doc: &toml_edit::DocumentMut) -> Result<(), ContextError> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let err = |source| ContextError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let mode = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(_) => 0o600,
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(doc.to_string().as_bytes())?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// The `contexts` table of `doc`, created when missing.
fn contexts_mut(doc: &mut toml_edit::DocumentMut) -> &mut dyn toml_edit::TableLike {
    let item = doc.entry("contexts").or_insert_with(|| {
        let mut t = toml_edit::Table::new();
        t.set_implicit(true);
        toml_edit::Item::Table(t)
    });
    item.as_table_like_mut()
        .expect("a file that parsed has a table for contexts")
}

/// Writes context `name` (replacing one of that name); relative paths are made absolute
/// against the working directory, so the context works from anywhere.
pub fn set_context(path: &Path, name: &str, ctx: &Context) -> Result<(), ContextError> {
    check_name(name)?;
    let mut doc = read_document(path)?;
    let mut table = toml_edit::Table::new();
    if let Some(e) = &ctx.endpoint {
        table.insert("endpoint", toml_edit::value(e.as_str()));
    }
    for (key, p) in [("ca", &ctx.ca), ("cert", &ctx.cert), ("key", &ctx.key)] {
        if let Some(p) = p {
            let abs = std::path::absolute(p).map_err(|source| ContextError::Read {
                path: p.clone(),
                source,
            })?;
            table.insert(key, toml_edit::value(abs.to_string_lossy().as_ref()));
        }
    }
    if let Some(s) = &ctx.server_name {
        table.insert("server-name", toml_edit::value(s.as_str()));
    }
    contexts_mut(&mut doc).insert(name, toml_edit::Item::Table(table));
    write_document(path, &doc)
}

/// Makes `name` (which must exist) the current context.
pub fn use_context(path: &Path, name: &str) -> Result<(), ContextError> {
    let file = load(path, true)?;
    if !file.contexts.contains_key(name) {
        return Err(ContextError::Unknown {
            name: name.to_string(),
            path: path.to_path_buf(),
            have: file.contexts.keys().cloned().collect::<Vec<_>>().join(", "),
        });
    }
    let mut doc = read_document(path)?;
    // Through the index, so the key keeps the comments written above it.
    doc["current-context"] = toml_edit::value(name);
    write_document(path, &doc)
}

/// What [`delete_context`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    /// The context was there.
    pub existed: bool,
    /// It was the current one: `current-context` is now unset.
    pub was_current: bool,
}

/// Removes context `name`, and `current-context` when it named it. Removing a context that
/// is not there changes nothing (and says so in the result).
pub fn delete_context(path: &Path, name: &str) -> Result<Deleted, ContextError> {
    if !path.exists() {
        return Ok(Deleted {
            existed: false,
            was_current: false,
        });
    }
    let mut doc = read_document(path)?;
    let existed = contexts_mut(&mut doc).remove(name).is_some();
    let was_current = doc.get("current-context").and_then(|v| v.as_str()) == Some(name);
    if was_current {
        doc.remove("current-context");
    }
    if existed || was_current {
        write_document(path, &doc)?;
    }
    Ok(Deleted {
        existed,
        was_current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local socket path that does not exist.
    const NO_SOCKET: &str = "/nonexistent/berth/api.sock";

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
        let t = resolve(&f, &p, &Overrides::default(), Path::new(NO_SOCKET)).unwrap();
        assert_eq!(t.endpoint, "https://n1:7443");
        assert_eq!(
            t.origin,
            Origin::Context {
                name: "lab".into(),
                file: p.clone()
            }
        );
        let tls = t.tls.unwrap();
        assert_eq!(tls.ca, d.path().join("pki/ca.pem"));
        assert_eq!(tls.cert, PathBuf::from("/abs/a.pem"));
        assert_eq!(tls.server_name.as_deref(), Some("node-1"));

        let o = Overrides {
            context: Some("local".into()),
            ..Default::default()
        };
        let t = resolve(&f, &p, &o, Path::new(NO_SOCKET)).unwrap();
        assert_eq!(t.endpoint, "unix:///run/berth/api.sock");
        assert!(t.tls.is_none());

        let o = Overrides {
            context: Some("nope".into()),
            ..Default::default()
        };
        let e = resolve(&f, &p, &o, Path::new(NO_SOCKET)).unwrap_err();
        assert!(e.to_string().contains("(it has: lab, local)"), "{e}");

        let o = Overrides {
            endpoint: Some("https://x:1".into()),
            context: Some("local".into()),
            cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(matches!(
            resolve(&f, &p, &o, Path::new(NO_SOCKET)),
            Err(ContextError::PartialTls("--ca"))
        ));
    }

    #[test]
    fn missing_default_file_is_empty_but_missing_named_file_is_an_error() {
        let p = Path::new("/nonexistent/berth/config.toml");
        assert!(load(p, false).unwrap().contexts.is_empty());
        assert!(matches!(load(p, true), Err(ContextError::Read { .. })));
    }

    #[test]
    fn without_flags_or_context_the_local_socket_is_used_when_it_exists() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("config.toml");
        let socket = d.path().join("api.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let t = resolve(
            &ContextFile::default(),
            &file,
            &Overrides::default(),
            &socket,
        )
        .unwrap();
        assert_eq!(t.endpoint, format!("unix://{}", socket.display()));
        assert_eq!(t.origin, Origin::LocalSocket);
        assert!(t.tls.is_none());
        assert!(
            t.origin.hint().contains("[api] unix_socket"),
            "{}",
            t.origin.hint()
        );

        // A flag wins over the socket, and so does a current context.
        let o = Overrides {
            endpoint: Some("unix:///elsewhere.sock".into()),
            ..Default::default()
        };
        let t = resolve(&ContextFile::default(), &file, &o, &socket).unwrap();
        assert_eq!(
            (t.endpoint.as_str(), t.origin),
            ("unix:///elsewhere.sock", Origin::Flag)
        );
        std::fs::write(
            &file,
            "current-context = \"lab\"\n[contexts.lab]\nendpoint = \"unix:///lab.sock\"\n",
        )
        .unwrap();
        let t = resolve(
            &load(&file, true).unwrap(),
            &file,
            &Overrides::default(),
            &socket,
        )
        .unwrap();
        assert_eq!(t.endpoint, "unix:///lab.sock");
    }

    #[test]
    fn nothing_to_reach_names_every_place_tried_and_how_to_set_one() {
        let file = Path::new("/home/u/.config/berth/config.toml");
        let e = resolve(
            &ContextFile::default(),
            file,
            &Overrides::default(),
            Path::new(NO_SOCKET),
        )
        .unwrap_err();
        let ContextError::NoEndpoint { tried } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(
            tried,
            &[
                "--endpoint and $BERTH_ENDPOINT (unset)".to_string(),
                "current-context in /home/u/.config/berth/config.toml (none set)".into(),
                format!("the local socket {NO_SOCKET} (absent)"),
            ]
        );
        let text = e.to_string();
        for hint in [
            "--endpoint unix://",
            "$BERTH_ENDPOINT",
            "config use-context NAME",
        ] {
            assert!(text.contains(hint), "{text}");
        }

        // A selected context without an endpoint is an error, never the local socket.
        let f: ContextFile = toml::from_str("current-context = \"x\"\n[contexts.x]\n").unwrap();
        let e = resolve(&f, file, &Overrides::default(), Path::new(NO_SOCKET)).unwrap_err();
        assert!(e.to_string().contains("context \"x\" in"), "{e}");
    }

    #[test]
    fn set_use_delete_keep_other_contexts_and_comments() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("berth/config.toml");
        // A new file in a new dir, private to its owner.
        let demo = Context {
            endpoint: Some("https://127.0.0.1:7443".into()),
            ca: Some(d.path().join("ca.pem")),
            cert: Some(d.path().join("admin.pem")),
            key: Some(d.path().join("admin-key.pem")),
            server_name: None,
        };
        set_context(&p, "berth-demo", &demo).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load(&p, true).unwrap().contexts["berth-demo"], demo);
        assert_eq!(load(&p, true).unwrap().current_context, None);

        // An existing file: its comments, keys and other contexts stay.
        std::fs::write(
            &p,
            "# my contexts\ncurrent-context = \"lab\" # the lab\n\n[contexts.lab]\nendpoint = \"https://n1:7443\" # node 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        set_context(&p, "berth-demo", &demo).unwrap();
        use_context(&p, "berth-demo").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        for kept in [
            "# my contexts",
            "# node 1",
            "[contexts.lab]",
            "[contexts.berth-demo]",
        ] {
            assert!(text.contains(kept), "{text}");
        }
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let f = load(&p, true).unwrap();
        assert_eq!(f.current_context.as_deref(), Some("berth-demo"));
        assert_eq!(f.contexts.len(), 2);

        // Replacing a context drops the keys not given again.
        let plain = Context {
            endpoint: Some("unix:///run/x.sock".into()),
            ..Default::default()
        };
        set_context(&p, "berth-demo", &plain).unwrap();
        assert_eq!(load(&p, true).unwrap().contexts["berth-demo"], plain);

        assert!(matches!(
            use_context(&p, "nope"),
            Err(ContextError::Unknown { .. })
        ));
        assert!(matches!(
            set_context(&p, "a b", &plain),
            Err(ContextError::BadName(_))
        ));

        // Deleting the current context unsets it; the other context stays.
        assert_eq!(
            delete_context(&p, "berth-demo").unwrap(),
            Deleted {
                existed: true,
                was_current: true
            }
        );
        let f = load(&p, true).unwrap();
        assert_eq!(f.current_context, None);
        assert_eq!(f.contexts.keys().collect::<Vec<_>>(), ["lab"]);
        assert!(std::fs::read_to_string(&p).unwrap().contains("# node 1"));
        let unchanged = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            delete_context(&p, "berth-demo").unwrap(),
            Deleted {
                existed: false,
                was_current: false
            }
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), unchanged);
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config.toml"]);
    }

    #[test]
    fn an_edit_refuses_a_file_berthctl_cannot_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.toml");
        std::fs::write(&p, "[contexts.lab]\nendpont = \"typo\"\n").unwrap();
        let e = set_context(&p, "x", &Context::default()).unwrap_err();
        assert!(matches!(e, ContextError::Parse { .. }), "{e:?}");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "[contexts.lab]\nendpont = \"typo\"\n"
        );
    }
}
