//! Where a container's logs go under the log root: a template such as
//! `{namespace}/{pod}/{container}` rendered from validated names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A relative path under the log root whose components are safe single names (no `/`, not
/// `.`/`..`, not empty, ≤ 255 bytes, ASCII without control characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelPath(Vec<String>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("layout {0:?} is empty")]
    Empty(String),
    #[error(
        "layout {layout:?} has an unknown placeholder {name:?}: use namespace, pod, pod_uid, container, node"
    )]
    Unknown { layout: String, name: String },
    #[error("layout {0:?} has an unclosed '{{'")]
    Unclosed(String),
    #[error("layout {0:?} must end with the component {{container}} exactly")]
    LastNotContainer(String),
    #[error(
        "layout {0:?} must contain {{pod_uid}}, or both {{namespace}} and {{pod}}, so pods never share a dir"
    )]
    NotUnique(String),
    #[error("layout {layout:?} has an unsafe literal component {component:?}")]
    UnsafeLiteral { layout: String, component: String },
    #[error("rendered path component {0:?} is not a safe file name")]
    UnsafeComponent(String),
}

pub fn safe_component(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 255
        && c != "."
        && c != ".."
        && c.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\')
}

impl RelPath {
    pub fn new(components: Vec<String>) -> Result<RelPath, LayoutError> {
        if let Some(bad) = components.iter().find(|c| !safe_component(c)) {
            return Err(LayoutError::UnsafeComponent(bad.clone()));
        }
        Ok(RelPath(components))
    }

    pub fn components(&self) -> &[String] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn join(&self, name: &str) -> Result<RelPath, LayoutError> {
        let mut v = self.0.clone();
        v.push(name.to_string());
        RelPath::new(v)
    }

    pub fn parent(&self) -> Option<RelPath> {
        (!self.0.is_empty()).then(|| RelPath(self.0[..self.0.len() - 1].to_vec()))
    }

    pub fn file_name(&self) -> Option<&str> {
        self.0.last().map(String::as_str)
    }

    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0.starts_with(&other.0)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        f.write_str(&self.0.join("/"))
    }
}

impl TryFrom<String> for RelPath {
    type Error = LayoutError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s == "." {
            return Ok(RelPath(Vec::new()));
        }
        RelPath::new(s.split('/').map(str::to_string).collect())
    }
}

impl From<RelPath> for String {
    fn from(p: RelPath) -> String {
        p.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Namespace,
    Pod,
    PodUid,
    Container,
    Node,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(Var),
}

/// A parsed layout template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    source: String,
    components: Vec<Vec<Piece>>,
}

/// The validated names a layout is rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub pod_uid: &'a str,
    pub container: &'a str,
    pub node: &'a str,
}

pub const DEFAULT_LAYOUT: &str = "{namespace}/{pod}/{container}";

impl Layout {
    pub fn parse(s: &str) -> Result<Layout, LayoutError> {
        if s.trim().is_empty() {
            return Err(LayoutError::Empty(s.to_string()));
        }
        let mut components = Vec::new();
        for comp in s.split('/') {
            let mut pieces = Vec::new();
            let mut rest = comp;
            while !rest.is_empty() {
                match rest.find('{') {
                    Some(0) => {
                        let end = rest
                            .find('}')
                            .ok_or_else(|| LayoutError::Unclosed(s.to_string()))?;
                        let name = &rest[1..end];
                        let var = match name {
                            "namespace" => Var::Namespace,
                            "pod" => Var::Pod,
                            "pod_uid" => Var::PodUid,
                            "container" => Var::Container,
                            "node" => Var::Node,
                            _ => {
                                return Err(LayoutError::Unknown {
                                    layout: s.to_string(),
                                    name: name.to_string(),
                                });
                            }
                        };
                        pieces.push(Piece::Var(var));
                        rest = &rest[end + 1..];
                    }
                    Some(i) => {
                        pieces.push(Piece::Lit(rest[..i].to_string()));
                        rest = &rest[i..];
                    }
                    None => {
                        pieces.push(Piece::Lit(rest.to_string()));
                        rest = "";
                    }
                }
            }
            // Literal-only components must be safe names themselves.
            if pieces.iter().all(|p| matches!(p, Piece::Lit(_))) && !safe_component(comp) {
                return Err(LayoutError::UnsafeLiteral {
                    layout: s.to_string(),
                    component: comp.to_string(),
                });
            }
            if pieces.iter().any(|p| matches!(p, Piece::Lit(l) if l.contains('}') || !l.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'))) {
                return Err(LayoutError::UnsafeLiteral { layout: s.to_string(), component: comp.to_string() });
            }
            components.push(pieces);
        }
        if components.last() != Some(&vec![Piece::Var(Var::Container)]) {
            return Err(LayoutError::LastNotContainer(s.to_string()));
        }
        let has = |v: Var| components.iter().flatten().any(|p| *p == Piece::Var(v));
        if !(has(Var::PodUid) || (has(Var::Namespace) && has(Var::Pod))) {
            return Err(LayoutError::NotUnique(s.to_string()));
        }
        Ok(Layout {
            source: s.to_string(),
            components,
        })
    }

    /// How many components a rendered container dir has.
    pub fn depth(&self) -> usize {
        self.components.len()
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Renders the container dir. The names must have been validated (DNS labels etc.); the
    /// rendered components are checked again.
    pub fn render(&self, n: &Names<'_>) -> Result<RelPath, LayoutError> {
        let comps = self
            .components
            .iter()
            .map(|pieces| {
                pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Lit(l) => l.as_str(),
                        Piece::Var(Var::Namespace) => n.namespace,
                        Piece::Var(Var::Pod) => n.pod,
                        Piece::Var(Var::PodUid) => n.pod_uid,
                        Piece::Var(Var::Container) => n.container,
                        Piece::Var(Var::Node) => n.node,
                    })
                    .collect::<String>()
            })
            .collect();
        RelPath::new(comps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names<'static> {
        Names {
            namespace: "shop",
            pod: "web-0.x",
            pod_uid: "1234-abcd",
            container: "app",
            node: "n1",
        }
    }

    #[test]
    fn renders_default_and_kubelet_like_layouts() {
        let l = Layout::parse(DEFAULT_LAYOUT).unwrap();
        assert_eq!(l.render(&names()).unwrap().to_string(), "shop/web-0.x/app");
        assert_eq!(l.depth(), 3);
        let l = Layout::parse("{namespace}_{pod}_{pod_uid}/{container}").unwrap();
        assert_eq!(
            l.render(&names()).unwrap().to_string(),
            "shop_web-0.x_1234-abcd/app"
        );
        assert_eq!(l.depth(), 2);
        let l = Layout::parse("pods/{node}/{pod_uid}/{container}").unwrap();
        assert_eq!(
            l.render(&names()).unwrap().components(),
            ["pods", "n1", "1234-abcd", "app"]
        );
    }

    #[test]
    fn rejects_bad_layouts() {
        assert!(matches!(Layout::parse(""), Err(LayoutError::Empty(_))));
        assert!(matches!(
            Layout::parse("{namespace}/{pod}"),
            Err(LayoutError::LastNotContainer(_))
        ));
        assert!(matches!(
            Layout::parse("{namespace}/{pod}/x{container}"),
            Err(LayoutError::LastNotContainer(_))
        ));
        assert!(matches!(
            Layout::parse("{pod}/{container}"),
            Err(LayoutError::NotUnique(_))
        ));
        assert!(matches!(
            Layout::parse("{namespace}/{podname}/{container}"),
            Err(LayoutError::Unknown { .. })
        ));
        assert!(matches!(
            Layout::parse("{namespace/{pod}/{container}"),
            Err(LayoutError::Unknown { .. } | LayoutError::Unclosed(_))
        ));
        assert!(matches!(
            Layout::parse("{pod_uid"),
            Err(LayoutError::Unclosed(_))
        ));
        assert!(matches!(
            Layout::parse("../{pod_uid}/{container}"),
            Err(LayoutError::UnsafeLiteral { .. })
        ));
        assert!(matches!(
            Layout::parse("/{pod_uid}/{container}"),
            Err(LayoutError::UnsafeLiteral { .. })
        ));
        assert!(matches!(
            Layout::parse("a//{pod_uid}/{container}"),
            Err(LayoutError::UnsafeLiteral { .. })
        ));
        assert!(matches!(
            Layout::parse("a b/{pod_uid}/{container}"),
            Err(LayoutError::UnsafeLiteral { .. })
        ));
    }

    #[test]
    fn unsafe_rendered_component_is_refused() {
        let l = Layout::parse(DEFAULT_LAYOUT).unwrap();
        let mut n = names();
        n.pod = "..";
        assert_eq!(l.render(&n), Err(LayoutError::UnsafeComponent("..".into())));
        n.pod = "a/b";
        assert_eq!(
            l.render(&n),
            Err(LayoutError::UnsafeComponent("a/b".into()))
        );
        n.pod = "";
        assert_eq!(l.render(&n), Err(LayoutError::UnsafeComponent("".into())));
    }

    #[test]
    fn relpath_round_trips_through_strings() {
        let p = RelPath::try_from("a/b/c".to_string()).unwrap();
        assert_eq!(p.parent().unwrap().to_string(), "a/b");
        assert_eq!(p.file_name(), Some("c"));
        assert_eq!(String::from(p.clone()), "a/b/c");
        assert!(RelPath::try_from("a/../b".to_string()).is_err());
        assert!(RelPath::try_from("/a".to_string()).is_err());
        assert!(RelPath::try_from(".".to_string()).unwrap().is_root());
        assert!(p.starts_with(&RelPath::try_from("a/b".to_string()).unwrap()));
    }
}
