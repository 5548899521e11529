//! A deny-list for one-shot Exec commands: a pure check, so the policy is testable and the
//! API layer can show users why a command was refused.
//!
//! It is a guard rail against accidents (`rm -rf /` pasted into the wrong window), not a
//! sandbox: an interactive shell can always spell a command differently, which is why
//! interactive sessions are audited line by line instead.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// One rule: a program (by basename) and what makes its invocation dangerous.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenyRule {
    /// Shown to the user when the rule matches.
    pub name: String,
    /// Program basename (`rm`) or, ending in `*`, a prefix (`mkfs*`).
    pub program: String,
    /// Short flags that must all be present (in any grouping: `-rf`, `-r -f`, `-fr`).
    #[serde(default)]
    pub flags: Vec<char>,
    /// Long spellings of those flags (`recursive` counts as `r`).
    #[serde(default)]
    pub long_flags: Vec<(String, char)>,
    /// The rule matches only when an operand equals one of these, or an operand starts with
    /// one of `operand_prefixes`; both empty means any invocation matches.
    #[serde(default)]
    pub operands: Vec<String>,
    #[serde(default)]
    pub operand_prefixes: Vec<String>,
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "command {command:?} is refused by the deny-list rule {rule:?}; run it in an interactive session if you really mean it"
)]
pub struct Denied {
    pub rule: String,
    pub command: String,
}

/// An ordered set of rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenyList {
    pub rules: Vec<DenyRule>,
}

/// Words that run the next word as the command (`busybox rm`, `env X=1 rm`, `nice rm`).
const WRAPPERS: [&str; 7] = [
    "busybox", "env", "nice", "nohup", "timeout", "exec", "command",
];
const SHELLS: [&str; 5] = ["sh", "bash", "ash", "dash", "zsh"];
const SEPARATORS: [&str; 6] = [";", "&&", "||", "|", "&", "\n"];

impl DenyList {
    /// No rules: everything is allowed.
    pub fn empty() -> Self {
        DenyList { rules: Vec::new() }
    }

    /// berth's default rules: wiping the root, making filesystems, writing raw devices,
    /// stopping the node.
    pub fn defaults() -> Self {
        let rule = |name: &str, program: &str| DenyRule {
            name: name.to_string(),
            program: program.to_string(),
            flags: Vec::new(),
            long_flags: Vec::new(),
            operands: Vec::new(),
            operand_prefixes: Vec::new(),
        };
        DenyList {
            rules: vec![
                DenyRule {
                    flags: vec!['r', 'f'],
                    long_flags: vec![
                        ("recursive".into(), 'r'),
                        ("force".into(), 'f'),
                        ("R".into(), 'r'),
                    ],
                    operands: ["/", "/*", "/.", "/..", "//"].map(String::from).to_vec(),
                    ..rule("rm-root", "rm")
                },
                rule("mkfs", "mkfs*"),
                DenyRule {
                    operand_prefixes: vec!["of=/dev/".into()],
                    ..rule("dd-to-device", "dd")
                },
                rule("shutdown", "shutdown"),
                rule("reboot", "reboot"),
                rule("halt", "halt"),
                rule("poweroff", "poweroff"),
            ],
        }
    }

    /// Checks an argv. `sh -c 'a; b && c'` scripts are split at `;`, `&&`, `||`, `|`, `&`
    /// and newlines and each part is checked.
    pub fn check(&self, argv: &[String]) -> Result<(), Denied> {
        let command = argv.join(" ");
        for words in commands(argv) {
            for rule in &self.rules {
                if rule.matches(&words) {
                    return Err(Denied {
                        rule: rule.name.clone(),
                        command,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The simple commands an argv runs: itself, or the parts of a `<shell> -c <script>`.
fn commands(argv: &[String]) -> Vec<Vec<String>> {
    let argv = strip_wrappers(argv);
    if let Some(program) = argv.first()
        && SHELLS.contains(&basename(program))
        && argv.get(1).map(String::as_str) == Some("-c")
        && let Some(script) = argv.get(2)
    {
        let mut spaced = script.clone();
        for sep in SEPARATORS {
            spaced = spaced.replace(sep, " \u{0} ");
        }
        return spaced
            .split('\u{0}')
            .flat_map(|part| {
                let words: Vec<String> = part
                    .split_whitespace()
                    .map(|w| w.trim_matches(['\'', '"']).to_string())
                    .collect();
                commands(&words)
            })
            .filter(|w| !w.is_empty())
            .collect();
    }
    vec![argv.to_vec()]
}

fn strip_wrappers(mut argv: &[String]) -> &[String] {
    while let Some(first) = argv.first() {
        let name = basename(first);
        if WRAPPERS.contains(&name) || first.contains('=') && !first.starts_with('-') {
            argv = &argv[1..];
        } else {
            break;
        }
    }
    argv
}

fn basename(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

impl DenyRule {
    fn matches(&self, words: &[String]) -> bool {
        let Some(program) = words.first() else {
            return false;
        };
        let name = basename(program);
        let program_matches = match self.program.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == self.program,
        };
        if !program_matches {
            return false;
        }
        let mut flags = BTreeSet::new();
        let mut operands = Vec::new();
        let mut end_of_options = false;
        for word in &words[1..] {
            if end_of_options || !word.starts_with('-') || word == "-" {
                operands.push(word.as_str());
            } else if word == "--" {
                end_of_options = true;
            } else if let Some(long) = word.strip_prefix("--") {
                if let Some((_, c)) = self.long_flags.iter().find(|(l, _)| l == long) {
                    flags.insert(*c);
                }
            } else {
                for c in word[1..].chars() {
                    let c = self
                        .long_flags
                        .iter()
                        .find(|(l, _)| l.len() == 1 && l.starts_with(c))
                        .map(|(_, mapped)| *mapped)
                        .unwrap_or(c);
                    flags.insert(c);
                }
            }
        }
        if !self.flags.iter().all(|f| flags.contains(f)) {
            return false;
        }
        if self.operands.is_empty() && self.operand_prefixes.is_empty() {
            return true;
        }
        operands.iter().any(|op| {
            self.operands.iter().any(|o| o == op)
                || self.operand_prefixes.iter().any(|p| op.starts_with(p))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    fn rule_of(cmd: &[&str]) -> Option<String> {
        DenyList::defaults()
            .check(&argv(cmd))
            .err()
            .map(|denied| denied.rule)
    }

    #[test]
    fn rm_rf_root_is_refused_in_every_spelling() {
        for cmd in [
            &["rm", "-rf", "/"][..],
            &["rm", "-fr", "/"],
            &["rm", "-r", "-f", "/*"],
            &["/bin/rm", "-Rf", "/"],
            &["rm", "--recursive", "--force", "/"],
            &["busybox", "rm", "-rf", "/"],
            &["env", "A=1", "rm", "-rf", "/"],
            &["sh", "-c", "cd /tmp && rm -rf /"],
            &["/bin/sh", "-c", "echo hi; rm -rf '/'"],
        ] {
            assert_eq!(rule_of(cmd).as_deref(), Some("rm-root"), "{cmd:?}");
        }
    }

    #[test]
    fn ordinary_and_near_miss_commands_are_allowed() {
        for cmd in [
            &["rm", "-rf", "/tmp/x"][..],
            &["rm", "-r", "/"], // without -f: refused by rm itself unless confirmed
            &["ls", "-rf", "/"],
            &["sh", "-c", "echo rm -rf"],
            &["ip", "addr"],
            &["dd", "if=/dev/zero", "of=/tmp/x", "count=1"],
            &[],
        ] {
            assert_eq!(rule_of(cmd), None, "{cmd:?}");
        }
    }

    #[test]
    fn other_default_rules_match_and_the_error_says_which() {
        assert_eq!(rule_of(&["mkfs.ext4", "/dev/sda"]).as_deref(), Some("mkfs"));
        assert_eq!(
            rule_of(&["dd", "if=/dev/zero", "of=/dev/sda"]).as_deref(),
            Some("dd-to-device")
        );
        assert_eq!(rule_of(&["reboot"]).as_deref(), Some("reboot"));
        let err = DenyList::defaults()
            .check(&argv(&["sh", "-c", "poweroff"]))
            .unwrap_err();
        assert_eq!(err.rule, "poweroff");
        assert_eq!(err.command, "sh -c poweroff");
        assert!(err.to_string().contains("\"poweroff\""), "{err}");
    }

    #[test]
    fn an_empty_list_allows_everything() {
        assert_eq!(DenyList::empty().check(&argv(&["rm", "-rf", "/"])), Ok(()));
    }
}
