//! NRI messages (`nri.pkg.api.v1alpha1`), written by hand with `prost` derives.
//!
//! Only the fields a node agent needs are declared; protobuf skips the others when decoding,
//! so newer runtimes that send more fields still decode. Field numbers follow the runtime's
//! `api.proto`.

use std::collections::HashMap;

/// Fully qualified name of the service the runtime serves (conn 2).
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";
/// Fully qualified name of the service the plugin serves (conn 1).
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterPluginRequest {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(string, tag = "2")]
    pub plugin_idx: String,
    #[prost(string, tag = "3")]
    pub nri_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateContainersRequest {
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<ContainerUpdate>,
    #[prost(message, repeated, tag = "2")]
    pub evict: Vec<ContainerEviction>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateContainersResponse {
    #[prost(message, repeated, tag = "1")]
    pub failed: Vec<ContainerUpdate>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigureRequest {
    #[prost(string, tag = "1")]
    pub config: String,
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    #[prost(string, tag = "3")]
    pub runtime_version: String,
    /// Milliseconds; 0 when the runtime does not send it (containerd 1.7).
    #[prost(int64, tag = "4")]
    pub registration_timeout: i64,
    /// Milliseconds; 0 when the runtime does not send it (containerd 1.7).
    #[prost(int64, tag = "5")]
    pub request_timeout: i64,
    #[prost(string, tag = "6")]
    pub nri_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigureResponse {
    /// Subscribed events, see [`crate::EventMask`].
    #[prost(int32, tag = "2")]
    pub events: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SynchronizeRequest {
    #[prost(message, repeated, tag = "1")]
    pub pods: Vec<PodSandbox>,
    #[prost(message, repeated, tag = "2")]
    pub containers: Vec<Container>,
    #[prost(bool, tag = "3")]
    pub more: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SynchronizeResponse {
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<ContainerUpdate>,
    #[prost(bool, tag = "2")]
    pub more: bool,
}

/// Request of every pod event RPC (`RunPodSandbox`, `StopPodSandbox`, `RemovePodSandbox`,
/// `UpdatePodSandbox`, `PostUpdatePodSandbox`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    pub pod: Option<PodSandbox>,
}

/// Request of every container event RPC (`CreateContainer`, `PostCreateContainer`,
/// `StartContainer`, `PostStartContainer`, `UpdateContainer`, `PostUpdateContainer`,
/// `StopContainer`, `RemoveContainer`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerRequest {
    #[prost(message, optional, tag = "1")]
    pub pod: Option<PodSandbox>,
    #[prost(message, optional, tag = "2")]
    pub container: Option<Container>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerResponse {
    #[prost(message, optional, tag = "1")]
    pub adjust: Option<ContainerAdjustment>,
    #[prost(message, repeated, tag = "2")]
    pub update: Vec<ContainerUpdate>,
    #[prost(message, repeated, tag = "3")]
    pub evict: Vec<ContainerEviction>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateContainerResponse {
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<ContainerUpdate>,
    #[prost(message, repeated, tag = "2")]
    pub evict: Vec<ContainerEviction>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StopContainerResponse {
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<ContainerUpdate>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StateChangeEvent {
    #[prost(int32, tag = "1")]
    pub event: i32,
    #[prost(message, optional, tag = "2")]
    pub pod: Option<PodSandbox>,
    #[prost(message, optional, tag = "3")]
    pub container: Option<Container>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValidateContainerAdjustmentResponse {
    #[prost(bool, tag = "1")]
    pub reject: bool,
    #[prost(string, tag = "2")]
    pub reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandbox {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub uid: String,
    #[prost(string, tag = "4")]
    pub namespace: String,
    #[prost(map = "string, string", tag = "5")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "6")]
    pub annotations: HashMap<String, String>,
    #[prost(string, tag = "7")]
    pub runtime_handler: String,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandbox>,
    #[prost(uint32, tag = "9")]
    pub pid: u32,
    #[prost(string, repeated, tag = "10")]
    pub ips: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodSandbox {
    #[prost(string, tag = "3")]
    pub cgroup_parent: String,
    #[prost(message, repeated, tag = "5")]
    pub namespaces: Vec<LinuxNamespace>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxNamespace {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(string, tag = "2")]
    pub path: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub pod_sandbox_id: String,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(int32, tag = "4")]
    pub state: i32,
    #[prost(map = "string, string", tag = "5")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "6")]
    pub annotations: HashMap<String, String>,
    #[prost(string, repeated, tag = "7")]
    pub args: Vec<String>,
    /// `KEY=VALUE` strings.
    #[prost(string, repeated, tag = "8")]
    pub env: Vec<String>,
    #[prost(message, repeated, tag = "9")]
    pub mounts: Vec<Mount>,
    #[prost(message, optional, tag = "11")]
    pub linux: Option<LinuxContainer>,
    #[prost(uint32, tag = "12")]
    pub pid: u32,
    #[prost(int64, tag = "14")]
    pub created_at: i64,
    #[prost(int64, tag = "15")]
    pub started_at: i64,
    #[prost(int64, tag = "16")]
    pub finished_at: i64,
    #[prost(int32, tag = "17")]
    pub exit_code: i32,
}

impl Container {
    /// The value of `key` in the container's environment (the last occurrence wins).
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env.iter().rev().find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then_some(v)
        })
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainer {
    #[prost(message, repeated, tag = "1")]
    pub namespaces: Vec<LinuxNamespace>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Mount {
    #[prost(string, tag = "1")]
    pub destination: String,
    #[prost(string, tag = "2")]
    pub r#type: String,
    #[prost(string, tag = "3")]
    pub source: String,
    #[prost(string, repeated, tag = "4")]
    pub options: Vec<String>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerAdjustment {
    #[prost(map = "string, string", tag = "2")]
    pub annotations: HashMap<String, String>,
    /// A mount whose destination equals an existing one replaces it.
    #[prost(message, repeated, tag = "3")]
    pub mounts: Vec<Mount>,
    /// An entry replaces the same key.
    #[prost(message, repeated, tag = "4")]
    pub env: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerUpdate {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(bool, tag = "3")]
    pub ignore_failure: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerEviction {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub reason: String,
}

/// Lifecycle events, numbered as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Event {
    RunPodSandbox = 1,
    StopPodSandbox = 2,
    RemovePodSandbox = 3,
    CreateContainer = 4,
    PostCreateContainer = 5,
    StartContainer = 6,
    PostStartContainer = 7,
    UpdateContainer = 8,
    PostUpdateContainer = 9,
    StopContainer = 10,
    RemoveContainer = 11,
    UpdatePodSandbox = 12,
    PostUpdatePodSandbox = 13,
    ValidateContainerAdjustment = 14,
}

impl Event {
    pub const ALL: [Event; 14] = [
        Event::RunPodSandbox,
        Event::StopPodSandbox,
        Event::RemovePodSandbox,
        Event::CreateContainer,
        Event::PostCreateContainer,
        Event::StartContainer,
        Event::PostStartContainer,
        Event::UpdateContainer,
        Event::PostUpdateContainer,
        Event::StopContainer,
        Event::RemoveContainer,
        Event::UpdatePodSandbox,
        Event::PostUpdatePodSandbox,
        Event::ValidateContainerAdjustment,
    ];

    pub fn from_wire(v: i32) -> Option<Event> {
        Event::ALL.into_iter().find(|e| *e as i32 == v)
    }

    /// The dedicated RPC that newer runtimes call instead of `StateChange` for this event.
    pub fn method(self) -> &'static str {
        match self {
            Event::RunPodSandbox => "RunPodSandbox",
            Event::StopPodSandbox => "StopPodSandbox",
            Event::RemovePodSandbox => "RemovePodSandbox",
            Event::CreateContainer => "CreateContainer",
            Event::PostCreateContainer => "PostCreateContainer",
            Event::StartContainer => "StartContainer",
            Event::PostStartContainer => "PostStartContainer",
            Event::UpdateContainer => "UpdateContainer",
            Event::PostUpdateContainer => "PostUpdateContainer",
            Event::StopContainer => "StopContainer",
            Event::RemoveContainer => "RemoveContainer",
            Event::UpdatePodSandbox => "UpdatePodSandbox",
            Event::PostUpdatePodSandbox => "PostUpdatePodSandbox",
            Event::ValidateContainerAdjustment => "ValidateContainerAdjustment",
        }
    }

    /// Pod-level events carry no container.
    pub fn is_pod_event(self) -> bool {
        matches!(
            self,
            Event::RunPodSandbox
                | Event::StopPodSandbox
                | Event::RemovePodSandbox
                | Event::UpdatePodSandbox
                | Event::PostUpdatePodSandbox
        )
    }
}

/// The set of events a plugin subscribes to: bit `1 << (event - 1)`.
///
/// On the wire 0 means "all events"; [`EventMask::wire`] refuses to send an empty mask for
/// that reason (a plugin that wants nothing should not register).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventMask(i32);

impl EventMask {
    pub const fn empty() -> Self {
        EventMask(0)
    }

    pub fn with(mut self, e: Event) -> Self {
        self.0 |= 1 << (e as i32 - 1);
        self
    }

    pub fn of(events: &[Event]) -> Self {
        events.iter().fold(Self::empty(), |m, e| m.with(*e))
    }

    pub fn contains(self, e: Event) -> bool {
        self.0 == 0 || self.0 & (1 << (e as i32 - 1)) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn wire(self) -> i32 {
        self.0
    }

    pub fn from_wire(v: i32) -> Self {
        EventMask(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn event_mask_bits_follow_event_numbers() {
        let m = EventMask::of(&[Event::CreateContainer, Event::RemoveContainer]);
        assert_eq!(m.wire(), (1 << 3) | (1 << 10));
        assert!(m.contains(Event::CreateContainer));
        assert!(!m.contains(Event::StartContainer));
        // 0 on the wire means every event.
        assert!(EventMask::from_wire(0).contains(Event::StartContainer));
    }

    #[test]
    fn event_numbers_round_trip() {
        for e in Event::ALL {
            assert_eq!(Event::from_wire(e as i32), Some(e));
        }
        assert_eq!(Event::from_wire(0), None);
        assert_eq!(Event::from_wire(15), None);
    }

    #[test]
    fn env_var_takes_last_occurrence_and_exact_key() {
        let c = Container {
            env: vec!["A=1".into(), "AB=x".into(), "A=2=3".into(), "NOEQ".into()],
            ..Default::default()
        };
        assert_eq!(c.env_var("A"), Some("2=3"));
        assert_eq!(c.env_var("AB"), Some("x"));
        assert_eq!(c.env_var("NOEQ"), None);
        assert_eq!(c.env_var("B"), None);
    }

    #[test]
    fn configure_request_decodes_field_numbers_of_the_runtime() {
        // Hand-encoded like containerd 2.1.9 sends it: runtime_name=2, runtime_version=3,
        // registration_timeout=4 (5000), request_timeout=5 (2000).
        let mut b = vec![0x12, 10];
        b.extend_from_slice(b"containerd");
        b.extend_from_slice(&[0x1a, 5]);
        b.extend_from_slice(b"2.1.9");
        b.extend_from_slice(&[0x20, 0x88, 0x27, 0x28, 0xd0, 0x0f]);
        let req = ConfigureRequest::decode(&b[..]).unwrap();
        assert_eq!(req.runtime_name, "containerd");
        assert_eq!(req.runtime_version, "2.1.9");
        assert_eq!(req.registration_timeout, 5000);
        assert_eq!(req.request_timeout, 2000);
        assert_eq!(req.nri_version, "");
    }
}
