//! Debug profiles: who the tools process runs as and which capabilities it holds.
//!
//! The names follow `kubectl debug --profile`, but berth's `general` is stricter than
//! kubectl's (no `SYS_PTRACE`): every privilege beyond "an unprivileged user looking
//! around" must be asked for by name, and authorization of that name is the API layer's job.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a debug session may do. The API layer authorizes the profile; this crate applies it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// The configured unprivileged uid/gid, no capabilities, `no_new_privileges`.
    #[default]
    General,
    /// The unprivileged uid/gid plus `NET_ADMIN` and `NET_RAW` (as ambient capabilities), for
    /// `ip`, `tcpdump`, `ping` inside the target's network namespace.
    Netadmin,
    /// uid 0 with the container runtime's default capabilities plus `NET_ADMIN` and
    /// `SYS_PTRACE`; can read the target's files through `/proc/1/root` even when the target
    /// runs as root. Never `SYS_ADMIN`: the tools container must not remount or escape.
    Sysadmin,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::General, Profile::Netadmin, Profile::Sysadmin];
    /// The names of [`Profile::ALL`], as callers spell them.
    pub const NAMES: &'static [&'static str] = &["general", "netadmin", "sysadmin"];

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::General => "general",
            Profile::Netadmin => "netadmin",
            Profile::Sysadmin => "sysadmin",
        }
    }

    /// The identity and capabilities for this profile, given the configured unprivileged user.
    pub fn security(self, user: UserIds) -> Security {
        match self {
            Profile::General => Security {
                user,
                capabilities: Vec::new(),
                ambient: false,
                no_new_privileges: true,
            },
            Profile::Netadmin => Security {
                user,
                capabilities: vec!["CAP_NET_ADMIN", "CAP_NET_RAW"],
                ambient: true,
                no_new_privileges: true,
            },
            Profile::Sysadmin => {
                let mut capabilities = RUNTIME_DEFAULT_CAPABILITIES.to_vec();
                capabilities.extend(["CAP_NET_ADMIN", "CAP_SYS_PTRACE"]);
                capabilities.sort_unstable();
                Security {
                    user: UserIds { uid: 0, gid: 0 },
                    capabilities,
                    ambient: false,
                    no_new_privileges: false,
                }
            }
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile name that is not one of `general`, `netadmin`, `sysadmin`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown debug profile {0:?}: use general, netadmin or sysadmin")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProfile(s.to_string()))
    }
}

/// A numeric uid/gid pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
}

/// The capabilities containerd/Docker give a container by default (the "runtime default").
pub const RUNTIME_DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// The process identity a profile resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Security {
    pub user: UserIds,
    /// Bounding = permitted = effective (and inheritable + ambient when `ambient`).
    pub capabilities: Vec<&'static str>,
    /// Whether the capabilities are raised as ambient (needed to keep them as non-root).
    pub ambient: bool,
    pub no_new_privileges: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOBODY: UserIds = UserIds {
        uid: 65534,
        gid: 65534,
    };

    #[test]
    fn general_is_the_configured_user_without_capabilities() {
        let s = Profile::General.security(NOBODY);
        assert_eq!(s.user, NOBODY);
        assert!(s.capabilities.is_empty(), "{:?}", s.capabilities);
        assert!(s.no_new_privileges);
        assert_eq!(Profile::default(), Profile::General);
    }

    #[test]
    fn netadmin_stays_unprivileged_with_ambient_network_capabilities() {
        let s = Profile::Netadmin.security(UserIds {
            uid: 1000,
            gid: 1000,
        });
        assert_eq!(s.user.uid, 1000);
        assert_eq!(s.capabilities, vec!["CAP_NET_ADMIN", "CAP_NET_RAW"]);
        assert!(
            s.ambient,
            "a non-root process keeps capabilities only as ambient"
        );
        assert!(!s.capabilities.contains(&"CAP_SYS_PTRACE"));
    }

    #[test]
    fn sysadmin_is_root_with_ptrace_and_net_admin_but_never_sys_admin() {
        let s = Profile::Sysadmin.security(NOBODY);
        assert_eq!(s.user, UserIds { uid: 0, gid: 0 });
        for cap in ["CAP_SYS_PTRACE", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_KILL"] {
            assert!(s.capabilities.contains(&cap), "sysadmin lacks {cap}");
        }
        assert!(!s.capabilities.contains(&"CAP_SYS_ADMIN"));
        assert!(!s.capabilities.contains(&"CAP_SYS_MODULE"));
    }

    #[test]
    fn profile_names_round_trip_and_unknown_names_are_refused() {
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>().unwrap(), p);
            assert_eq!(p.to_string(), p.as_str());
        }
        let names: Vec<_> = Profile::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, Profile::NAMES);
        assert_eq!(
            "root".parse::<Profile>(),
            Err(UnknownProfile("root".to_string()))
        );
        let json: Profile = serde_json::from_str("\"netadmin\"").unwrap();
        assert_eq!(json, Profile::Netadmin);
    }
}
