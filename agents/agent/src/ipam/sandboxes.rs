//! The pod sandboxes the runtime has, as NRI reports them: the full list at Synchronize, then
//! RunPodSandbox, StopPodSandbox and RemovePodSandbox events.
//!
//! The view is only *complete* between a Synchronize and the end of that connection: before
//! the first one, and from a new connection's Configure until its Synchronize, a sandbox the
//! runtime has may be missing. Collection asks [`Sandboxes::live`], which answers `None` then,
//! so a lease is never collected on missing information.

use std::collections::HashSet;
use std::sync::Mutex;

use berth_nri::PodSandbox;

#[derive(Default)]
struct View {
    complete: bool,
    live: HashSet<String>,
}

/// The runtime's live sandboxes (ids), shared by the NRI handlers and the collector.
#[derive(Default)]
pub struct Sandboxes {
    view: Mutex<View>,
}

impl Sandboxes {
    pub fn new() -> Sandboxes {
        Sandboxes::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut View) -> T) -> T {
        f(&mut self.view.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A (re)connection began: what we know may be stale until its Synchronize.
    pub fn connecting(&self) {
        self.with(|v| v.complete = false);
    }

    /// The runtime's whole list.
    pub fn synchronize(&self, pods: &[PodSandbox]) {
        self.with(|v| {
            v.live = pods.iter().map(|p| p.id.clone()).collect();
            v.complete = true;
        });
    }

    pub fn started(&self, id: &str) {
        self.with(|v| v.live.insert(id.to_string()));
    }

    /// Stopped or removed: a CRI sandbox never runs again (kubelet makes a new one), and its
    /// network was torn down at stop, so an allocation still naming it is leaked.
    pub fn gone(&self, id: &str) {
        self.with(|v| v.live.remove(id));
    }

    /// The live sandboxes, or `None` while the view may be incomplete.
    pub fn live(&self) -> Option<HashSet<String>> {
        self.with(|v| v.complete.then(|| v.live.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(id: &str) -> PodSandbox {
        PodSandbox {
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn incomplete_until_synchronized_and_again_on_reconnect() {
        let s = Sandboxes::new();
        s.started("a");
        assert_eq!(s.live(), None, "events before a Synchronize prove nothing");
        s.synchronize(&[pod("a"), pod("b")]);
        assert_eq!(s.live().unwrap().len(), 2);
        s.started("c");
        s.gone("a");
        let live = s.live().unwrap();
        assert!(live.contains("b") && live.contains("c") && !live.contains("a"));
        s.connecting();
        assert_eq!(s.live(), None);
        s.synchronize(&[pod("c")]);
        assert_eq!(s.live().unwrap(), HashSet::from(["c".to_string()]));
    }
}
