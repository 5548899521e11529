//! The `CNI_*` environment a runtime sets for one plugin call.

use std::path::PathBuf;

use crate::args::CniArgs;
use crate::error::CniError;
use crate::names::IfName;

/// The verb in `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(
                    CniError::invalid_env(format!("unknown CNI_COMMAND {other:?}"))
                        .with_details("use ADD, DEL, CHECK, STATUS, GC or VERSION"),
                );
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// Everything the runtime passed in `CNI_*` variables, checked for the verb.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    /// `CNI_CONTAINERID`; empty for STATUS, GC and VERSION.
    pub container_id: String,
    /// `CNI_NETNS`; `None` when unset or empty (allowed for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`; always there for ADD, DEL and CHECK, `None` for STATUS, GC and VERSION
    /// when unset.
    pub ifname: Option<IfName>,
    pub args: CniArgs,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// `CNI_IFNAME` of an ADD, DEL or CHECK ([`Env::from_vars`] makes sure it is there).
    pub fn ifname(&self) -> Result<&IfName, CniError> {
        self.ifname.as_ref().ok_or_else(|| {
            CniError::invalid_env(format!(
                "CNI_IFNAME is required for {}",
                self.command.as_str()
            ))
        })
    }

    /// Reads the variables from the process environment.
    pub fn from_process() -> Result<Env, CniError> {
        Env::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `get` (so tests need not touch the process environment).
    ///
    /// What each verb requires follows the spec: ADD and CHECK need a container id, a netns
    /// and an interface name; DEL needs the id and the name but may have an empty netns;
    /// STATUS, GC and VERSION need only `CNI_COMMAND`. Anything missing or malformed is code 4.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command = Command::parse(&get("CNI_COMMAND").ok_or_else(|| {
            CniError::invalid_env("CNI_COMMAND is not set")
                .with_details("a CNI plugin is run by a container runtime, which sets CNI_COMMAND")
        })?)?;
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let require = |k: &str| -> Result<String, CniError> {
            nonempty(k).ok_or_else(|| {
                CniError::invalid_env(format!("{k} is required for {}", command.as_str()))
            })
        };
        let container_id = if needs_attachment {
            require("CNI_CONTAINERID")?
        } else {
            nonempty("CNI_CONTAINERID").unwrap_or_default()
        };
        let ifname = if needs_attachment {
            Some(require("CNI_IFNAME")?)
        } else {
            nonempty("CNI_IFNAME")
        }
        .map(|name| {
            IfName::try_from(name).map_err(|e| {
                CniError::invalid_env(format!("CNI_IFNAME: {e}"))
                    .with_details("pass a valid interface name, e.g. eth0")
            })
        })
        .transpose()?;
        let netns = match command {
            Command::Add | Command::Check => Some(PathBuf::from(require("CNI_NETNS")?)),
            _ => nonempty("CNI_NETNS").map(PathBuf::from),
        };
        let args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
        let path = get("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_vars(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"),
        ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
    ];

    #[test]
    fn add_env_parses_fully() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id, "c1");
        assert_eq!(
            e.netns.as_deref(),
            Some(std::path::Path::new("/var/run/netns/x"))
        );
        assert_eq!(e.ifname.as_deref(), Some("eth0"));
        assert_eq!(
            e.args.pod().map(|(ns, n)| (ns.as_str(), n.as_str())),
            Some(("ns", "p"))
        );
        assert_eq!(
            e.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn each_required_variable_missing_is_code_4_naming_it() {
        for missing in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let pairs: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != missing).collect();
            let e = env(&pairs).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEnvironment, "{missing}");
            assert!(e.msg.contains(missing), "{missing}: {}", e.msg);
        }
    }

    #[test]
    fn del_allows_an_empty_netns_and_status_needs_nothing() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(e.netns, None);
        for verb in ["STATUS", "GC", "VERSION"] {
            let e = env(&[("CNI_COMMAND", verb)]).unwrap();
            assert!(e.container_id.is_empty() && e.ifname.is_none());
        }
    }

    #[test]
    fn bad_command_and_long_ifname_are_code_4() {
        let e = env(&[("CNI_COMMAND", "ATTACH")]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        let mut pairs = ADD.to_vec();
        pairs.retain(|(k, _)| *k != "CNI_IFNAME");
        pairs.push(("CNI_IFNAME", "eth0123456789012"));
        let e = env(&pairs).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert!(e.msg.contains("16 bytes"), "{}", e.msg);
    }
}
