//! Temporary privilege: a policy role bound to one identity until a deadline.
//!
//! A grant adds a role to an identity's bound roles for every decision until it expires; it
//! needs no policy edit and disappears by itself. Grants are kept in the agent's memory only:
//! an agent restart revokes them all (fail closed). Who may grant is the policy's business
//! (`berth.v1.Grants/Grant`); on top of it, nobody can grant to themselves (a second person
//! is always involved) and no grant outlives `max_duration`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub identity: String,
    pub role: String,
    pub granted_by: String,
    pub reason: String,
    pub granted_at: SystemTime,
    pub expires_at: SystemTime,
}

/// What a granter asks for.
#[derive(Debug, Clone, Copy)]
pub struct GrantAsk<'a> {
    pub identity: &'a str,
    pub role: &'a str,
    pub duration: Duration,
    pub reason: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("{0} cannot grant a role to itself: another person must grant it")]
    SelfGrant(String),
    #[error("role {0:?} is not defined in the policy")]
    UnknownRole(String),
    #[error("identity {0:?} must start with cn:, dns:, uri: or unix:uid:")]
    BadIdentity(String),
    #[error("a grant lasts between 1 s and {max} (asked: {asked})")]
    BadDuration { asked: String, max: String },
    #[error("a grant needs a reason (ticket, incident)")]
    NoReason,
    #[error("no active grant {0}")]
    NotFound(String),
}

/// The live grants of one agent. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Grants {
    inner: Arc<Mutex<BTreeMap<String, Grant>>>,
    max_duration: Duration,
    clock: fn() -> SystemTime,
}

pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Grants {
    pub fn new(max_duration: Duration) -> Grants {
        Grants::with_clock(max_duration, SystemTime::now)
    }

    /// With an injected clock, for tests of expiry.
    pub fn with_clock(max_duration: Duration, clock: fn() -> SystemTime) -> Grants {
        Grants {
            inner: Arc::new(Mutex::new(BTreeMap::new())),
            max_duration,
            clock,
        }
    }

    pub fn max_duration(&self) -> Duration {
        self.max_duration
    }

    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Grant>> {
        let now = (self.clock)();
        let mut m = self.inner.lock().expect("grants lock");
        m.retain(|_, g| g.expires_at > now);
        m
    }

    /// Adds a grant. `granter_names` are every name the granter is known by (a granter may
    /// not grant to any of them); `role_exists` checks the role against the current policy.
    pub fn grant(
        &self,
        granter: &str,
        granter_names: &[String],
        ask: &GrantAsk<'_>,
        role_exists: impl Fn(&str) -> bool,
    ) -> Result<Grant, GrantError> {
        let GrantAsk {
            identity,
            role,
            duration,
            reason,
        } = *ask;
        let known = ["cn:", "dns:", "uri:", "unix:uid:"]
            .iter()
            .any(|p| identity.starts_with(p) && identity.len() > p.len());
        if !known {
            return Err(GrantError::BadIdentity(identity.to_string()));
        }
        if identity == granter || granter_names.iter().any(|n| n == identity) {
            return Err(GrantError::SelfGrant(granter.to_string()));
        }
        if !role_exists(role) {
            return Err(GrantError::UnknownRole(role.to_string()));
        }
        if duration.is_zero() || duration > self.max_duration {
            return Err(GrantError::BadDuration {
                asked: humantime::format_duration(duration).to_string(),
                max: humantime::format_duration(self.max_duration).to_string(),
            });
        }
        if reason.trim().is_empty() {
            return Err(GrantError::NoReason);
        }
        let now = (self.clock)();
        let g = Grant {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            identity: identity.to_string(),
            role: role.to_string(),
            granted_by: granter.to_string(),
            reason: reason.trim().to_string(),
            granted_at: now,
            expires_at: now + duration,
        };
        self.live().insert(g.id.clone(), g.clone());
        Ok(g)
    }

    /// Active grants, oldest first; of one identity when given.
    pub fn list(&self, identity: Option<&str>) -> Vec<Grant> {
        let mut out: Vec<Grant> = self
            .live()
            .values()
            .filter(|g| identity.is_none_or(|i| g.identity == i))
            .cloned()
            .collect();
        out.sort_by_key(|g| g.granted_at);
        out
    }

    pub fn revoke(&self, id: &str) -> Result<Grant, GrantError> {
        self.live()
            .remove(id)
            .ok_or_else(|| GrantError::NotFound(id.to_string()))
    }

    /// Roles granted (and not expired) to any of these names.
    pub fn roles_of(&self, names: &[String]) -> Vec<String> {
        let m = self.live();
        let mut out: Vec<String> = m
            .values()
            .filter(|g| names.contains(&g.identity))
            .map(|g| g.role.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static NOW: AtomicU64 = AtomicU64::new(1_000_000);
    fn clock() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW.load(Ordering::SeqCst))
    }

    fn ask<'a>(identity: &'a str, role: &'a str, secs: u64, reason: &'a str) -> GrantAsk<'a> {
        GrantAsk {
            identity,
            role,
            duration: Duration::from_secs(secs),
            reason,
        }
    }

    #[test]
    fn grants_expire_by_themselves_and_refuse_self_grants() {
        let g = Grants::with_clock(Duration::from_secs(3600), clock);
        let exists = |r: &str| r == "sysadmin";
        let alice = vec!["cn:alice".to_string()];
        let by_alice = |a: GrantAsk<'_>| g.grant("cn:alice", &alice, &a, exists);
        let made = by_alice(ask("cn:bob", "sysadmin", 600, "INC-1")).unwrap();
        assert_eq!(g.roles_of(&["cn:bob".into()]), ["sysadmin"]);
        assert!(g.roles_of(&alice).is_empty());
        assert_eq!(
            by_alice(ask("cn:alice", "sysadmin", 60, "x")),
            Err(GrantError::SelfGrant("cn:alice".into()))
        );
        assert!(matches!(
            by_alice(ask("cn:bob", "root", 60, "x")),
            Err(GrantError::UnknownRole(_))
        ));
        assert!(matches!(
            by_alice(ask("cn:bob", "sysadmin", 7200, "x")),
            Err(GrantError::BadDuration { .. })
        ));
        assert!(matches!(
            by_alice(ask("cn:bob", "sysadmin", 0, "x")),
            Err(GrantError::BadDuration { .. })
        ));
        assert!(matches!(
            by_alice(ask("bob", "sysadmin", 60, "x")),
            Err(GrantError::BadIdentity(_))
        ));
        assert_eq!(
            by_alice(ask("cn:bob", "sysadmin", 60, " ")),
            Err(GrantError::NoReason)
        );
        assert_eq!(g.list(None), vec![made.clone()]);
        NOW.fetch_add(599, Ordering::SeqCst);
        assert_eq!(g.roles_of(&["cn:bob".into()]), ["sysadmin"]);
        NOW.fetch_add(1, Ordering::SeqCst);
        assert!(
            g.roles_of(&["cn:bob".into()]).is_empty(),
            "expired at the deadline"
        );
        assert!(g.list(None).is_empty());
        assert_eq!(
            g.revoke(&made.id),
            Err(GrantError::NotFound(made.id.clone()))
        );
    }

    #[test]
    fn revoke_removes_at_once() {
        let g = Grants::new(Duration::from_secs(3600));
        let names = vec!["cn:alice".to_string()];
        let made = g
            .grant(
                "cn:alice",
                &names,
                &ask("unix:uid:1000", "r", 60, "why"),
                |_| true,
            )
            .unwrap();
        assert_eq!(g.list(Some("unix:uid:1000")).len(), 1);
        assert_eq!(g.revoke(&made.id).unwrap().identity, "unix:uid:1000");
        assert!(g.roles_of(&["unix:uid:1000".into()]).is_empty());
    }
}
