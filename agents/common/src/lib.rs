//! Small pieces the agent and CNI crates share, so that each rule is written once:
//!
//! - [`error_chain`]: an error and its causes on one line;
//! - [`fs::openat2_beneath`]: opening a path beneath a directory fd without following
//!   symlinks, magic links or mount points out of it;
//! - [`names`]: names checked once where they enter ([`names::K8sName`], and the
//!   [`validated_name!`] macro the CNI crates define theirs with).
//!
//! It depends on no berth crate, so the API can use it without a feature crate.

#![forbid(unsafe_code)]

pub mod fs;
pub mod names;

/// `error: cause: cause …` on one line, for logs and status messages. Our errors' `Display`
/// describe their own layer only; a library error that already prints its cause (tonic's
/// `Status`, some `io::Error`s) would repeat it, so a cause whose text the line already
/// contains is left out.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// Only the causes of `e` (what [`error_chain`] adds after `e` itself), or `None` when it
/// has none: for a message that already says what failed in its own words.
pub fn error_causes(e: &dyn std::error::Error) -> Option<String> {
    let first = e.source()?;
    Some(error_chain(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn a_cause_the_line_already_contains_is_not_repeated() {
        let e = Layer(
            "etcd request failed: connection refused",
            Some(Box::new(Layer(
                "connection refused",
                Some(Box::new(Layer("os error 111", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "etcd request failed: connection refused: os error 111"
        );
    }

    #[test]
    fn chains_join_every_layer_once() {
        let e = Layer(
            "cannot open x",
            Some(Box::new(Layer(
                "permission denied",
                Some(Box::new(Layer("os error 13", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "cannot open x: permission denied: os error 13"
        );
        assert_eq!(
            error_causes(&e).as_deref(),
            Some("permission denied: os error 13")
        );
        let alone = Layer("alone", None);
        assert_eq!(error_chain(&alone), "alone");
        assert_eq!(error_causes(&alone), None);
    }
}
