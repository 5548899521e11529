//! Command lines of the bench binaries: `--name N` pairs of counts.

use anyhow::{Context, Result, bail};

/// Reads `--flag N` pairs from `args` into the matching counts; an unknown flag or a value
/// that is not a number is an error listing the accepted flags.
pub fn counts(
    args: impl IntoIterator<Item = String>,
    flags: &mut [(&str, &mut usize)],
) -> Result<()> {
    let usage = flags
        .iter()
        .map(|(f, _)| format!("{f} N"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut it = args.into_iter();
    while let Some(k) = it.next() {
        let Some((_, slot)) = flags.iter_mut().find(|(f, _)| *f == k) else {
            bail!("unknown argument {k}; use {usage}");
        };
        **slot = it
            .next()
            .with_context(|| format!("{k}: missing value"))?
            .parse()
            .with_context(|| format!("{k}: not a number"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn counts_are_read_and_bad_input_is_named() {
        let (mut pods, mut rounds) = (200, 2);
        counts(
            args("--rounds 5 --pods 10"),
            &mut [("--pods", &mut pods), ("--rounds", &mut rounds)],
        )
        .unwrap();
        assert_eq!((pods, rounds), (10, 5));
        let e = counts(args("--nope 1"), &mut [("--pods", &mut pods)]).unwrap_err();
        assert_eq!(e.to_string(), "unknown argument --nope; use --pods N");
        let e = counts(args("--pods x"), &mut [("--pods", &mut pods)]).unwrap_err();
        assert_eq!(e.to_string(), "--pods: not a number");
        let e = counts(args("--pods"), &mut [("--pods", &mut pods)]).unwrap_err();
        assert_eq!(e.to_string(), "--pods: missing value");
    }
}
