//! The names the CNI protocol hands a plugin: interface names (`CNI_IFNAME`, and the NICs a
//! config names) and network names (`name`). Each is a type that holds only a valid value;
//! the rules are the kernel's (`dev_valid_name`) and the CNI spec's. [`NetworkName`] lives in
//! berth-common because the IPAM store checks the same rule for names the API hands it.

use berth_common::validated_name;

pub use berth_common::names::{NETWORK_NAME_MAX, NetworkName, check_network_name};

/// Linux's limit for an interface name (IFNAMSIZ minus the NUL byte).
pub const IFNAME_MAX: usize = 15;

/// A Linux interface name: 1–15 bytes, no `/`, whitespace or `:`, not `.`/`..` (the
/// kernel's `dev_valid_name`).
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > IFNAME_MAX {
        return Err(format!(
            "interface name {name:?} is {} bytes, Linux allows at most {IFNAME_MAX}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is reserved"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "interface name {name:?} contains {c:?}, which Linux does not allow"
        ));
    }
    Ok(())
}

validated_name! {
    /// A Linux interface name (see [`check_ifname`]).
    pub struct IfName, check_ifname
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel() {
        for good in ["eth0", "a23456789012345", "net1.100", "veth-x_y"] {
            assert_eq!(IfName::try_from(good).unwrap(), good);
        }
        for (bad, why) in [
            ("", "empty"),
            ("a234567890123456", "16 bytes"),
            (".", "reserved"),
            ("..", "reserved"),
            ("a/b", "'/'"),
            ("a:b", "':'"),
            ("a b", "' '"),
            ("a\tb", "'\\t'"),
        ] {
            let e = IfName::try_from(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_bad_name_in_json_is_refused_with_its_reason() {
        #[derive(serde::Deserialize, Debug)]
        struct Conf {
            #[allow(dead_code)]
            master: IfName,
        }
        let e = serde_json::from_str::<Conf>(r#"{"master": "eth0:1"}"#).unwrap_err();
        assert!(e.to_string().contains("contains ':'"), "{e}");
        let ok: Conf = serde_json::from_str(r#"{"master": "eth1"}"#).unwrap();
        assert_eq!(ok.master, "eth1");
    }
}
