//! berth's agent gRPC API (tonic/prost): package `berth.v1`, one service per concern.
//!
//! - [`v1::node_server::Node`]: node info, health, capabilities
//! - [`v1::logs_server::Logs`]: file-log directories of pods
//! - [`v1::ipam_server::Ipam`]: fixed-IP allocations and reservations
//! - [`v1::audit_server::Audit`]: the audit log
//! - [`v1::fake_time_server::FakeTime`]: shifted wall clocks of containers (faketime)
//! - [`v1::debug_server::Debug`]: debug containers next to a target container
//! - [`v1::grants_server::Grants`]: temporary role grants
//!
//! Every message derives `serde::Serialize` so clients can print it as JSON.

#![forbid(unsafe_code)]

/// The `berth.v1` package.
pub mod v1 {
    #![allow(
        clippy::all,
        missing_docs,
        rustdoc::invalid_html_tags,
        rustdoc::bare_urls,
        rustdoc::broken_intra_doc_links
    )]
    tonic::include_proto!("berth.v1");

    /// The encoded `FileDescriptorSet` of `berth.v1` (for reflection and completeness tests).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("berth_v1_descriptor");
}

/// Every RPC of the API as its full gRPC path, `/berth.v1.<Service>/<Method>`, with whether
/// the server streams its response and whether the client streams its requests. Kept in step
/// with the .proto files by a test.
pub const METHODS: &[(&str, bool, bool)] = &[
    ("/berth.v1.Node/Info", false, false),
    ("/berth.v1.Node/Health", false, false),
    ("/berth.v1.Node/Capabilities", false, false),
    ("/berth.v1.Logs/List", false, false),
    ("/berth.v1.Logs/Read", true, false),
    ("/berth.v1.Logs/Download", true, false),
    ("/berth.v1.Ipam/List", false, false),
    ("/berth.v1.Ipam/Show", false, false),
    ("/berth.v1.Ipam/History", false, false),
    ("/berth.v1.Ipam/Reserve", false, false),
    ("/berth.v1.Ipam/Release", false, false),
    ("/berth.v1.Ipam/Gc", false, false),
    ("/berth.v1.Audit/Query", false, false),
    ("/berth.v1.FakeTime/Get", false, false),
    ("/berth.v1.FakeTime/Set", false, false),
    ("/berth.v1.FakeTime/Clear", false, false),
    ("/berth.v1.Debug/Attach", true, true),
    ("/berth.v1.Debug/Exec", true, false),
    ("/berth.v1.Debug/CopyIn", false, true),
    ("/berth.v1.Debug/CopyOut", true, false),
    ("/berth.v1.Debug/List", false, false),
    ("/berth.v1.Debug/Terminate", false, false),
    ("/berth.v1.Grants/Grant", false, false),
    ("/berth.v1.Grants/List", false, false),
    ("/berth.v1.Grants/Revoke", false, false),
];

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Walks the compiled descriptor: every RPC in the .proto files is in METHODS with the
    /// right streaming flag, and METHODS names nothing that does not exist.
    #[test]
    fn methods_table_matches_the_descriptor() {
        let set = prost_types_lite::FileDescriptorSet::decode(v1::FILE_DESCRIPTOR_SET).unwrap();
        let mut found = Vec::new();
        for file in &set.file {
            assert_eq!(file.package.as_deref(), Some("berth.v1"));
            for svc in &file.service {
                for m in &svc.method {
                    found.push((
                        format!(
                            "/berth.v1.{}/{}",
                            svc.name.as_deref().unwrap(),
                            m.name.as_deref().unwrap()
                        ),
                        m.server_streaming.unwrap_or(false),
                        m.client_streaming.unwrap_or(false),
                    ));
                }
            }
        }
        assert_eq!(found.len(), METHODS.len(), "descriptor has {found:?}");
        for (path, server_streaming, client_streaming) in &found {
            let entry = METHODS.iter().find(|(p, _, _)| p == path);
            assert_eq!(
                entry.map(|e| (e.1, e.2)),
                Some((*server_streaming, *client_streaming)),
                "{path}"
            );
        }
    }

    /// The few descriptor messages the test needs, decoded with prost (no prost-types dep).
    mod prost_types_lite {
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct FileDescriptorSet {
            #[prost(message, repeated, tag = "1")]
            pub file: Vec<FileDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct FileDescriptorProto {
            #[prost(string, optional, tag = "2")]
            pub package: Option<String>,
            #[prost(message, repeated, tag = "6")]
            pub service: Vec<ServiceDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct ServiceDescriptorProto {
            #[prost(string, optional, tag = "1")]
            pub name: Option<String>,
            #[prost(message, repeated, tag = "2")]
            pub method: Vec<MethodDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct MethodDescriptorProto {
            #[prost(string, optional, tag = "1")]
            pub name: Option<String>,
            #[prost(bool, optional, tag = "5")]
            pub client_streaming: Option<bool>,
            #[prost(bool, optional, tag = "6")]
            pub server_streaming: Option<bool>,
        }
    }
}
