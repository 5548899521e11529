//! The [`Plugin`] trait and the one executor that owns the CNI process protocol.

use std::io::{Read, Write};

use serde_json::json;

use crate::config::{NetConf, peek_version};
use crate::env::{Command, Env};
use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;
use crate::version::CniVersion;

/// One call's input: the environment and the decoded config.
#[derive(Clone, Debug)]
pub struct Context {
    pub env: Env,
    pub config: NetConf,
}

/// A CNI plugin. The executor calls one method per process; `VERSION` is answered by the
/// executor from [`Plugin::supported_versions`].
///
/// Contract for implementors (the spec's): `del` must succeed when the container, netns or
/// allocation is already gone, and may be called twice; `check` compares the live state with
/// `ctx.config.prev_result`; `status` returns code 50/51 when ADD cannot work; `gc` frees
/// everything not in `ctx.config.valid_attachments`.
pub trait Plugin {
    /// The versions this plugin accepts in `cniVersion`.
    fn supported_versions(&self) -> &[CniVersion] {
        &CniVersion::ALL
    }
    fn add(&self, ctx: &Context) -> Result<CniResult, CniError>;
    fn del(&self, ctx: &Context) -> Result<(), CniError>;
    fn check(&self, ctx: &Context) -> Result<(), CniError>;
    fn status(&self, ctx: &Context) -> Result<(), CniError>;
    fn gc(&self, ctx: &Context) -> Result<(), CniError>;
}

/// Runs one CNI call against the process's environment, stdin and stdout, then exits with
/// the code the spec wants (0 on success, 1 after an error JSON on stdout).
pub fn run<P: Plugin + ?Sized>(plugin: &P) -> ! {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let code = execute(
        plugin,
        |k| std::env::var(k).ok(),
        &mut stdin.lock(),
        &mut stdout.lock(),
    );
    std::process::exit(code)
}

/// Runs one CNI call with the given environment lookup, stdin and stdout; returns the exit
/// code. This is [`run`] without the process: tests call it directly.
pub fn execute<P: Plugin + ?Sized>(
    plugin: &P,
    get_env: impl Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
) -> i32 {
    // Configs are a few hundred bytes to a few KiB: with room up front, stdin is read in one
    // call instead of read_to_end's growing probes (this runs once per plugin process).
    let mut input = Vec::with_capacity(16 << 10);
    let (version, outcome) = match stdin.read_to_end(&mut input) {
        Err(e) => (
            CniVersion::LATEST,
            Err(
                CniError::new(ErrorCode::Io, "cannot read the network config from stdin")
                    .with_details(e.to_string()),
            ),
        ),
        Ok(_) => dispatch(plugin, &get_env, &input),
    };
    let written = match outcome {
        Ok(None) => Ok(()),
        Ok(Some(value)) => writeln!(stdout, "{value}"),
        Err(err) => {
            let _ = writeln!(stdout, "{}", err.to_json(version));
            let _ = stdout.flush();
            return 1;
        }
    };
    match written.and_then(|()| stdout.flush()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

type Outcome = Result<Option<serde_json::Value>, CniError>;

fn dispatch<P: Plugin + ?Sized>(
    plugin: &P,
    get_env: &dyn Fn(&str) -> Option<String>,
    input: &[u8],
) -> (CniVersion, Outcome) {
    let supported = plugin.supported_versions();
    let peeked = peek_version(input).filter(|v| supported.contains(v));
    let reply_version = peeked.unwrap_or(CniVersion::LATEST);
    let env = match Env::from_vars(get_env) {
        Ok(env) => env,
        Err(e) => return (reply_version, Err(e)),
    };
    if env.command == Command::Version {
        let versions: Vec<&str> = supported.iter().map(|v| v.as_str()).collect();
        return (
            reply_version,
            Ok(Some(json!({
                "cniVersion": reply_version.as_str(),
                "supportedVersions": versions,
            }))),
        );
    }
    let config = match NetConf::parse(input) {
        Ok(c) => c,
        Err(e) => return (reply_version, Err(e)),
    };
    let version = config.cni_version;
    if !supported.contains(&version) {
        return (
            CniVersion::LATEST,
            Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("this plugin does not speak cniVersion {version}"),
            )
            .with_details(format!(
                "use one of {}",
                supported
                    .iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        );
    }
    let too_old = |verb: &str, min: &str| {
        Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("{verb} needs cniVersion {min} or newer, the config says {version}"),
        ))
    };
    let command = env.command;
    let ctx = Context { env, config };
    let outcome = match command {
        Command::Add => plugin.add(&ctx).map(|r| Some(r.to_value(version))),
        Command::Del => plugin.del(&ctx).map(|()| None),
        Command::Check if !version.supports_check() => too_old("CHECK", "0.4.0"),
        Command::Check => plugin.check(&ctx).map(|()| None),
        Command::Status if !version.supports_status_gc() => too_old("STATUS", "1.1.0"),
        Command::Status => plugin.status(&ctx).map(|()| None),
        Command::Gc if !version.supports_status_gc() => too_old("GC", "1.1.0"),
        Command::Gc => plugin.gc(&ctx).map(|()| None),
        Command::Version => unreachable!("answered above"),
    };
    (version, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::IpConfig;
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<(Command, String)>>,
        fail_with: Option<CniError>,
    }

    impl Recorder {
        fn record(&self, ctx: &Context) -> Result<(), CniError> {
            self.calls
                .borrow_mut()
                .push((ctx.env.command, ctx.config.name.to_string()));
            match &self.fail_with {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            }
        }
    }

    impl Plugin for Recorder {
        fn add(&self, ctx: &Context) -> Result<CniResult, CniError> {
            self.record(ctx)?;
            Ok(CniResult {
                ips: vec![IpConfig {
                    address: "10.9.0.2/24".parse().unwrap(),
                    gateway: None,
                    interface: None,
                }],
                ..CniResult::default()
            })
        }
        fn del(&self, ctx: &Context) -> Result<(), CniError> {
            self.record(ctx)
        }
        fn check(&self, ctx: &Context) -> Result<(), CniError> {
            self.record(ctx)
        }
        fn status(&self, ctx: &Context) -> Result<(), CniError> {
            self.record(ctx)
        }
        fn gc(&self, ctx: &Context) -> Result<(), CniError> {
            self.record(ctx)
        }
    }

    fn call(p: &Recorder, verb: &str, stdin: &str) -> (i32, String) {
        let env: HashMap<&str, &str> = [
            ("CNI_COMMAND", verb),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
        ]
        .into();
        let mut out = Vec::new();
        let code = execute(
            p,
            |k| env.get(k).map(|v| v.to_string()),
            &mut stdin.as_bytes(),
            &mut out,
        );
        (code, String::from_utf8(out).unwrap())
    }

    fn conf(version: &str) -> String {
        format!(r#"{{"cniVersion":"{version}","name":"net1","type":"rec"}}"#)
    }

    #[test]
    fn every_verb_in_every_version_reaches_the_plugin_or_is_refused_with_code_1() {
        for v in CniVersion::ALL {
            for verb in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
                let p = Recorder::default();
                let (code, out) = call(&p, verb, &conf(v.as_str()));
                let allowed = match verb {
                    "CHECK" => v.supports_check(),
                    "STATUS" | "GC" => v.supports_status_gc(),
                    _ => true,
                };
                if allowed {
                    assert_eq!(code, 0, "{verb} {v}: {out}");
                    assert_eq!(p.calls.borrow().len(), 1, "{verb} {v}");
                    if verb == "ADD" {
                        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
                        assert_eq!(r["cniVersion"], v.as_str());
                        assert_eq!(r["ips"][0]["address"], "10.9.0.2/24");
                        assert_eq!(
                            r["ips"][0].get("version").is_some(),
                            v.ip_has_version_field()
                        );
                    } else {
                        assert!(out.is_empty(), "{verb} {v}: {out}");
                    }
                } else {
                    assert_eq!(code, 1);
                    assert!(
                        p.calls.borrow().is_empty(),
                        "{verb} {v} must not reach the plugin"
                    );
                    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
                    assert_eq!(e["code"], 1, "{verb} {v}");
                    assert_eq!(e["cniVersion"], v.as_str());
                }
            }
        }
    }

    #[test]
    fn version_answers_without_a_config_and_echoes_a_requested_version() {
        let p = Recorder::default();
        let (code, out) = call(&p, "VERSION", "");
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        let (_, out) = call(&p, "VERSION", r#"{"cniVersion":"0.4.0"}"#);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert!(p.calls.borrow().is_empty());
    }

    #[test]
    fn plugin_errors_become_json_in_the_config_version_with_exit_1() {
        let p = Recorder {
            fail_with: Some(
                CniError::new(ErrorCode::Plugin(120), "address in use")
                    .with_details("pick another"),
            ),
            ..Recorder::default()
        };
        let (code, out) = call(&p, "ADD", &conf("0.4.0"));
        assert_eq!(code, 1);
        let e: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            e,
            json!({"cniVersion": "0.4.0", "code": 120, "msg": "address in use", "details": "pick another"})
        );
    }

    #[test]
    fn input_errors_never_reach_the_plugin() {
        let p = Recorder::default();
        for (stdin, code) in [
            ("{oops", 6),
            (r#"{"cniVersion":"2.0.0","name":"n","type":"t"}"#, 1),
            (r#"{"cniVersion":"1.1.0","type":"t"}"#, 7),
        ] {
            let (exit, out) = call(&p, "ADD", stdin);
            assert_eq!(exit, 1);
            let e: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(e["code"], code, "{stdin}");
        }
        let mut out = Vec::new();
        let exit = execute(&p, |_| None, &mut conf("1.1.0").as_bytes(), &mut out);
        assert_eq!(exit, 1);
        let e: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(e["code"], 4);
        assert!(p.calls.borrow().is_empty());
    }

    #[test]
    fn a_plugin_may_limit_its_versions() {
        struct Modern(Recorder);
        impl Plugin for Modern {
            fn supported_versions(&self) -> &[CniVersion] {
                &[CniVersion::V1_0_0, CniVersion::V1_1_0]
            }
            fn add(&self, c: &Context) -> Result<CniResult, CniError> {
                self.0.add(c)
            }
            fn del(&self, c: &Context) -> Result<(), CniError> {
                self.0.del(c)
            }
            fn check(&self, c: &Context) -> Result<(), CniError> {
                self.0.check(c)
            }
            fn status(&self, c: &Context) -> Result<(), CniError> {
                self.0.status(c)
            }
            fn gc(&self, c: &Context) -> Result<(), CniError> {
                self.0.gc(c)
            }
        }
        let p = Modern(Recorder::default());
        let env = |k: &str| {
            (k == "CNI_COMMAND")
                .then(|| "DEL".to_string())
                .or_else(|| matches!(k, "CNI_CONTAINERID" | "CNI_IFNAME").then(|| "x".to_string()))
        };
        let mut out = Vec::new();
        assert_eq!(execute(&p, env, &mut conf("0.4.0").as_bytes(), &mut out), 1);
        let e: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(e["code"], 1);
        assert!(p.0.calls.borrow().is_empty());
    }
}
