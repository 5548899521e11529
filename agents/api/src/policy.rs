//! Authorization: a TOML policy binding identities and groups to roles, and roles to the
//! RPCs and namespaces they may touch. Anything not granted is denied.
//!
//! ```toml
//! [roles.admin]
//! methods = ["*"]
//! namespaces = ["*"]
//!
//! [roles.log-reader]
//! methods = ["berth.v1.Logs/*", "berth.v1.Node/Info"]
//! namespaces = ["team-a", "team-b-*"]
//!
//! [[bindings]]
//! role = "admin"
//! identities = ["unix:uid:0"]
//! groups = ["ops"]
//! ```
//!
//! The file is watched; a valid new version replaces the old one at once, an invalid one is
//! logged and the old policy stays in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use berth_common::error_chain;
use serde::Deserialize;

use crate::identity::Caller;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file {path} is not valid TOML")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("policy file {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("cannot watch policy file {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    roles: BTreeMap<String, RoleFile>,
    #[serde(default)]
    bindings: Vec<BindingFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    methods: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    /// Debug profiles beyond `general` the role may start (`netadmin`, `sysadmin`).
    #[serde(default)]
    debug_profiles: Vec<String>,
    /// Tools images beyond the agent's default the role may start: exact names, `prefix*`
    /// or `*`.
    #[serde(default)]
    debug_images: Vec<String>,
}

/// The debug profiles a role may name in `debug_profiles`.
pub const DEBUG_PROFILES: &[&str] = &["general", "netadmin", "sysadmin"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingFile {
    role: String,
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

/// What a call touches, as far as authorization is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Not namespaced (node info, audit): only the method is checked.
    Node,
    /// One namespace.
    Namespace(String),
    /// Every namespace (a namespaced call that named none): needs a role scoped to `*`.
    AllNamespaces,
}

/// Why a call was denied; the message says what was missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("{identity} (groups: [{groups}]) has no role in the policy: ask an admin to bind one")]
    NoRole { identity: String, groups: String },
    #[error("roles [{roles}] of {identity} do not allow method {method}")]
    Method {
        identity: String,
        roles: String,
        method: String,
    },
    #[error("roles [{roles}] of {identity} allow {method} but not in {scope}")]
    Namespace {
        identity: String,
        roles: String,
        method: String,
        scope: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed through these roles (all the caller's roles that grant the call).
    Allow {
        roles: Vec<String>,
    },
    Deny(Denial),
}

#[derive(Debug, Clone)]
struct Role {
    methods: Vec<String>,
    namespaces: Vec<String>,
    debug_profiles: Vec<String>,
    debug_images: Vec<String>,
}

/// A parsed, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    roles: BTreeMap<String, Role>,
    bindings: Vec<BindingFile>,
}

impl Policy {
    /// Parses and validates policy text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Policy, PolicyError> {
        if text.trim().is_empty() {
            // A half-written file must not silently become "deny everyone".
            return Err(PolicyError::Invalid {
                path: origin.to_path_buf(),
                problem: "file is empty (write policies atomically: write a temp file, then \
                          rename it over the policy)"
                    .into(),
            });
        }
        let file: PolicyFile = toml::from_str(text).map_err(|source| PolicyError::Parse {
            path: origin.to_path_buf(),
            source,
        })?;
        let invalid = |problem: String| PolicyError::Invalid {
            path: origin.to_path_buf(),
            problem,
        };
        let mut roles = BTreeMap::new();
        for (name, r) in file.roles {
            if r.methods.is_empty() {
                return Err(invalid(format!("role {name:?} allows no methods")));
            }
            let mut methods = Vec::new();
            for m in &r.methods {
                let m = normalize_method_pattern(m);
                if !berth_proto::METHODS
                    .iter()
                    .any(|(p, _, _)| method_matches(&m, p))
                {
                    return Err(invalid(format!(
                        "role {name:?}: method pattern {m:?} matches no RPC (use \"*\", \
                         \"berth.v1.<Service>/*\" or \"berth.v1.<Service>/<Method>\")"
                    )));
                }
                methods.push(m);
            }
            for ns in &r.namespaces {
                let bad = ns.is_empty()
                    || ns[..ns.len().saturating_sub(1)].contains('*')
                    || !ns
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.*".contains(c));
                if bad {
                    return Err(invalid(format!(
                        "role {name:?}: namespace pattern {ns:?} is not a namespace name, \
                         \"prefix-*\" or \"*\""
                    )));
                }
            }
            for p in &r.debug_profiles {
                if !DEBUG_PROFILES.contains(&p.as_str()) {
                    return Err(invalid(format!(
                        "role {name:?}: debug profile {p:?} is not one of {DEBUG_PROFILES:?}"
                    )));
                }
            }
            for i in &r.debug_images {
                if i.is_empty() || i[..i.len() - 1].contains('*') {
                    return Err(invalid(format!(
                        "role {name:?}: debug image pattern {i:?} is not an image name, \
                         \"prefix*\" or \"*\""
                    )));
                }
            }
            roles.insert(
                name,
                Role {
                    methods,
                    namespaces: r.namespaces,
                    debug_profiles: r.debug_profiles,
                    debug_images: r.debug_images,
                },
            );
        }
        for (i, b) in file.bindings.iter().enumerate() {
            if !roles.contains_key(&b.role) {
                return Err(invalid(format!(
                    "binding #{} names role {:?}, which is not defined under [roles]",
                    i + 1,
                    b.role
                )));
            }
            if b.identities.is_empty() && b.groups.is_empty() {
                return Err(invalid(format!(
                    "binding #{} for role {:?} names no identities or groups",
                    i + 1,
                    b.role
                )));
            }
            for id in &b.identities {
                let known = ["cn:", "dns:", "uri:", "unix:uid:"]
                    .iter()
                    .any(|p| id.starts_with(p) && id.len() > p.len());
                if !known {
                    return Err(invalid(format!(
                        "binding #{}: identity {id:?} must start with cn:, dns:, uri: or unix:uid:",
                        i + 1
                    )));
                }
            }
        }
        Ok(Policy {
            roles,
            bindings: file.bindings,
        })
    }

    /// A policy that denies everything.
    pub fn deny_all() -> Policy {
        Policy {
            roles: BTreeMap::new(),
            bindings: Vec::new(),
        }
    }

    /// The roles bound to a caller, sorted, without duplicates.
    pub fn roles_of(&self, caller: &Caller) -> Vec<String> {
        let mut out: Vec<String> = self
            .bindings
            .iter()
            .filter(|b| {
                b.identities.iter().any(|i| caller.names.contains(i))
                    || b.groups.iter().any(|g| caller.groups.contains(g))
            })
            .map(|b| b.role.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether the policy defines this role (grants may only name defined roles).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    /// May one of `roles` start a debug session with this profile? `general` needs no
    /// permission beyond the method itself.
    pub fn allows_debug_profile(&self, roles: &[String], profile: &str) -> bool {
        profile == "general"
            || roles.iter().any(|r| {
                self.roles
                    .get(r)
                    .is_some_and(|r| r.debug_profiles.iter().any(|p| p == profile))
            })
    }

    /// May one of `roles` start this (non-default) tools image?
    pub fn allows_debug_image(&self, roles: &[String], image: &str) -> bool {
        roles.iter().any(|r| {
            self.roles.get(r).is_some_and(|r| {
                r.debug_images.iter().any(|p| match p.strip_suffix('*') {
                    Some(prefix) => image.starts_with(prefix),
                    None => p == image,
                })
            })
        })
    }

    /// May `caller` call `method` (`/berth.v1.Svc/Method`) on `scope`?
    pub fn decide(&self, caller: &Caller, method: &str, scope: &Scope) -> Decision {
        self.decide_with_grants(caller, method, scope, &[])
    }

    /// [`Policy::decide`] with roles temporarily granted to the caller added to its bound
    /// ones (grants naming roles the policy no longer defines are ignored).
    pub fn decide_with_grants(
        &self,
        caller: &Caller,
        method: &str,
        scope: &Scope,
        granted: &[String],
    ) -> Decision {
        let mut roles = self.roles_of(caller);
        roles.extend(granted.iter().filter(|r| self.has_role(r)).cloned());
        roles.sort();
        roles.dedup();
        if roles.is_empty() {
            return Decision::Deny(Denial::NoRole {
                identity: caller.identity.clone(),
                groups: caller.groups.join(", "),
            });
        }
        let with_method: Vec<&String> = roles
            .iter()
            .filter(|r| {
                self.roles[*r]
                    .methods
                    .iter()
                    .any(|p| method_matches(p, method))
            })
            .collect();
        if with_method.is_empty() {
            return Decision::Deny(Denial::Method {
                identity: caller.identity.clone(),
                roles: roles.join(", "),
                method: method.to_string(),
            });
        }
        let granted: Vec<String> = with_method
            .iter()
            .filter(|r| {
                let ns = &self.roles[**r].namespaces;
                match scope {
                    Scope::Node => true,
                    Scope::AllNamespaces => ns.iter().any(|p| p == "*"),
                    Scope::Namespace(n) => ns.iter().any(|p| namespace_matches(p, n)),
                }
            })
            .map(|r| (*r).clone())
            .collect();
        if granted.is_empty() {
            let scope = match scope {
                Scope::Namespace(n) => format!("namespace {n:?}"),
                _ => "all namespaces (name one, or ask for a role scoped to \"*\")".to_string(),
            };
            return Decision::Deny(Denial::Namespace {
                identity: caller.identity.clone(),
                roles: with_method
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                method: method.to_string(),
                scope,
            });
        }
        Decision::Allow { roles: granted }
    }
}

fn normalize_method_pattern(p: &str) -> String {
    if p == "*" {
        return p.to_string();
    }
    format!("/{}", p.trim_start_matches('/'))
}

/// `*`, `/berth.v1.Svc/*` or an exact `/berth.v1.Svc/Method`.
fn method_matches(pattern: &str, method: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => prefix.ends_with('/') && method.starts_with(prefix),
        None => pattern == method,
    }
}

fn namespace_matches(pattern: &str, ns: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => ns.starts_with(prefix),
        None => pattern == ns,
    }
}

/// The policy in force, swapped atomically on reload.
#[derive(Clone)]
pub struct PolicyStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    path: PathBuf,
    current: RwLock<Arc<Policy>>,
    last_text: Mutex<String>,
    generation: AtomicU64,
    last_error: Mutex<Option<String>>,
    watcher: Mutex<Option<crate::watch::FileWatcher>>,
}

impl PolicyStore {
    /// Loads the policy; a missing or invalid file at start-up is an error.
    pub fn load(path: &Path) -> Result<PolicyStore, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let policy = Policy::parse(&text, path)?;
        Ok(PolicyStore {
            inner: Arc::new(StoreInner {
                path: path.to_path_buf(),
                current: RwLock::new(Arc::new(policy)),
                last_text: Mutex::new(text),
                generation: AtomicU64::new(1),
                last_error: Mutex::new(None),
                watcher: Mutex::new(None),
            }),
        })
    }

    pub fn current(&self) -> Arc<Policy> {
        self.inner.current.read().expect("policy lock").clone()
    }

    /// Bumped each time a new policy takes effect.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// Why the last reload was refused, if it was.
    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().expect("policy lock").clone()
    }

    /// Re-reads the file. Returns whether a new policy took effect; on error the old one
    /// stays and the error is kept for [`PolicyStore::last_error`].
    pub fn reload(&self) -> Result<bool, PolicyError> {
        let inner = &self.inner;
        let result = std::fs::read_to_string(&inner.path)
            .map_err(|source| PolicyError::Read {
                path: inner.path.clone(),
                source,
            })
            .and_then(|text| {
                let mut last = inner.last_text.lock().expect("policy lock");
                if *last == text {
                    return Ok(false);
                }
                let policy = Policy::parse(&text, &inner.path)?;
                *inner.current.write().expect("policy lock") = Arc::new(policy);
                *last = text;
                inner.generation.fetch_add(1, Ordering::SeqCst);
                Ok(true)
            });
        let mut last_error = inner.last_error.lock().expect("policy lock");
        match &result {
            Ok(true) => {
                *last_error = None;
                tracing::info!(path = %inner.path.display(), generation = self.generation(), "policy reloaded");
            }
            Ok(false) => *last_error = None,
            Err(e) => {
                *last_error = Some(error_chain(e));
                tracing::error!(path = %inner.path.display(), error = %error_chain(e), "new policy refused; the previous policy stays in force");
            }
        }
        result
    }

    /// Watches the file (see [`crate::watch`]) and reloads on every change.
    pub fn watch(&self) -> Result<(), PolicyError> {
        let weak = Arc::downgrade(&self.inner);
        let watcher =
            crate::watch::watch_files(std::slice::from_ref(&self.inner.path), move || {
                match weak.upgrade() {
                    Some(inner) => {
                        let _ = PolicyStore { inner }.reload();
                        true
                    }
                    None => false,
                }
            })
            .map_err(|source| PolicyError::Watch {
                path: self.inner.path.clone(),
                source,
            })?;
        *self.inner.watcher.lock().expect("policy lock") = Some(watcher);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Caller;

    const POLICY: &str = r#"
[roles.admin]
methods = ["*"]
namespaces = ["*"]

[roles.reader]
methods = ["berth.v1.Logs/*", "/berth.v1.Node/Info"]
namespaces = ["team-a", "team-b-*"]

[[bindings]]
role = "admin"
identities = ["unix:uid:0"]
groups = ["ops"]

[[bindings]]
role = "reader"
identities = ["cn:bob"]
"#;

    fn caller(names: &[&str], groups: &[&str]) -> Caller {
        Caller {
            identity: names[0].to_string(),
            names: names.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            transport: crate::identity::Transport::Mtls,
            peer: "127.0.0.1:1".into(),
        }
    }

    fn policy() -> Policy {
        Policy::parse(POLICY, Path::new("p.toml")).unwrap()
    }

    #[test]
    fn admin_by_group_and_by_uid() {
        let p = policy();
        let ops = caller(&["cn:carol"], &["ops"]);
        let root = caller(&["unix:uid:0"], &[]);
        for c in [&ops, &root] {
            assert_eq!(
                p.decide(c, "/berth.v1.Ipam/Reserve", &Scope::AllNamespaces),
                Decision::Allow {
                    roles: vec!["admin".into()]
                }
            );
        }
    }

    #[test]
    fn reader_scopes() {
        let p = policy();
        let bob = caller(&["cn:bob"], &[]);
        let allow = Decision::Allow {
            roles: vec!["reader".into()],
        };
        assert_eq!(
            p.decide(
                &bob,
                "/berth.v1.Logs/Read",
                &Scope::Namespace("team-a".into())
            ),
            allow
        );
        assert_eq!(
            p.decide(
                &bob,
                "/berth.v1.Logs/Read",
                &Scope::Namespace("team-b-x".into())
            ),
            allow
        );
        assert_eq!(p.decide(&bob, "/berth.v1.Node/Info", &Scope::Node), allow);
        match p.decide(
            &bob,
            "/berth.v1.Logs/Read",
            &Scope::Namespace("kube-system".into()),
        ) {
            Decision::Deny(d @ Denial::Namespace { .. }) => {
                assert!(d.to_string().contains("\"kube-system\""), "{d}")
            }
            other => panic!("{other:?}"),
        }
        match p.decide(&bob, "/berth.v1.Logs/List", &Scope::AllNamespaces) {
            Decision::Deny(Denial::Namespace { .. }) => {}
            other => panic!("{other:?}"),
        }
        match p.decide(&bob, "/berth.v1.Node/Health", &Scope::Node) {
            Decision::Deny(d @ Denial::Method { .. }) => {
                assert_eq!(
                    d.to_string(),
                    "roles [reader] of cn:bob do not allow method /berth.v1.Node/Health"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn default_deny() {
        let p = policy();
        let eve = caller(&["cn:eve", "dns:eve.example"], &["dev"]);
        match p.decide(&eve, "/berth.v1.Node/Info", &Scope::Node) {
            Decision::Deny(d @ Denial::NoRole { .. }) => assert!(d.to_string().contains("cn:eve")),
            other => panic!("{other:?}"),
        }
        let none = Policy::deny_all();
        assert!(matches!(
            none.decide(
                &caller(&["unix:uid:0"], &[]),
                "/berth.v1.Node/Info",
                &Scope::Node
            ),
            Decision::Deny(Denial::NoRole { .. })
        ));
    }

    #[test]
    fn invalid_policies_name_their_problem() {
        let cases = [
            (
                "[roles.a]\nmethods = [\"berth.v1.Nope/*\"]\n",
                "matches no RPC",
            ),
            (
                "[[bindings]]\nrole = \"ghost\"\nidentities = [\"cn:a\"]\n",
                "not defined",
            ),
            (
                "[roles.a]\nmethods=[\"*\"]\n[[bindings]]\nrole = \"a\"\nidentities = [\"alice\"]\n",
                "must start with",
            ),
            (
                "[roles.a]\nmethods=[\"*\"]\nnamespaces=[\"a*b\"]\n",
                "namespace pattern",
            ),
            ("[roles.a]\nmethods=[\"*\"]\nbogus=1\n", "not valid TOML"),
            ("  \n", "file is empty"),
        ];
        for (text, want) in cases {
            let e = Policy::parse(text, Path::new("p.toml")).unwrap_err();
            assert!(
                error_chain(&e).contains(want),
                "{text}: {}",
                error_chain(&e)
            );
        }
    }

    /// kubelet's Secret update: `policy.toml -> ..data/policy.toml`, `..data -> ..v1`,
    /// then `..data_tmp -> ..v2` renamed over `..data`. The file itself never changes.
    #[test]
    fn watch_sees_a_kubelet_style_secret_update() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/policy.toml"), POLICY).unwrap();
        symlink("..v1", d.join("..data")).unwrap();
        symlink("..data/policy.toml", d.join("policy.toml")).unwrap();
        let store = PolicyStore::load(&d.join("policy.toml")).unwrap();
        store.watch().unwrap();
        let bob = caller(&["cn:bob"], &[]);
        assert!(matches!(
            store
                .current()
                .decide(&bob, "/berth.v1.Node/Info", &Scope::Node),
            Decision::Allow { .. }
        ));

        std::fs::create_dir(d.join("..v2")).unwrap();
        std::fs::write(
            d.join("..v2/policy.toml"),
            POLICY.replace("cn:bob", "cn:robert"),
        )
        .unwrap();
        symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while store.generation() == 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(store.generation(), 2, "secret swap not seen");
        assert!(matches!(
            store
                .current()
                .decide(&bob, "/berth.v1.Node/Info", &Scope::Node),
            Decision::Deny(Denial::NoRole { .. })
        ));
    }

    #[test]
    fn reload_keeps_old_policy_when_new_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, POLICY).unwrap();
        let store = PolicyStore::load(&path).unwrap();
        let bob = caller(&["cn:bob"], &[]);
        let scope = Scope::Namespace("team-a".into());
        assert!(matches!(
            store.current().decide(&bob, "/berth.v1.Logs/Read", &scope),
            Decision::Allow { .. }
        ));
        std::fs::write(&path, "[roles.x\n").unwrap();
        assert!(matches!(store.reload(), Err(PolicyError::Parse { .. })));
        assert_eq!(store.generation(), 1);
        assert!(store.last_error().unwrap().contains("not valid TOML"));
        assert!(matches!(
            store.current().decide(&bob, "/berth.v1.Logs/Read", &scope),
            Decision::Allow { .. }
        ));
        std::fs::write(&path, POLICY.replace("cn:bob", "cn:robert")).unwrap();
        assert!(store.reload().unwrap());
        assert_eq!(store.generation(), 2);
        assert!(store.last_error().is_none());
        assert!(matches!(
            store.current().decide(&bob, "/berth.v1.Logs/Read", &scope),
            Decision::Deny(Denial::NoRole { .. })
        ));
    }
}
