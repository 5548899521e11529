//! One call for the agent at container creation: does this container get faketime, and what
//! exactly must be added to it.
//!
//! ```no_run
//! # use std::{path::Path, time::SystemTime};
//! # fn f(annotations: &[(&str, &str)], env: &[String]) -> Result<(), Box<dyn std::error::Error>> {
//! let host_shim = berth_faketime::install_shim(Path::new("/var/lib/berth/faketime"))?; // once
//! let state_dir = Path::new("/run/berth/faketime/0123abcd"); // per container
//! if let Some(plan) = berth_faketime::plan::plan(
//!     annotations.iter().copied(), "app", env, SystemTime::now(), &host_shim, state_dir,
//! )? {
//!     plan.prepare_host()?;  // writes state_dir/offset
//!     // add plan.set_env and plan.mounts to the container (NRI adjustment)
//! }
//! // later, at run time: berth_faketime::file::write_timestamp_file(&plan_file, new_offset)
//! // on removal: berth_faketime::plan::remove_state_dir(state_dir)
//! # Ok(()) }
//! ```
//!
//! Check [`crate::elf::inspect_in_root`] (or [`crate::rootfs::inspect`]) first when the
//! container's root is at hand: the shim loads anywhere, but only a glibc entry point is
//! shifted by it, so the others are better told than injected.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::env::{Injection, env_adjustments};
use crate::file::{FileError, TIMESTAMP_FILE_NAME, write_timestamp_file};
use crate::offset::{Offset, OffsetError, offset_from_annotations};
use crate::shim::{BindMount, bind_mounts};

/// What to add to one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The offset to write now (absolute starts already resolved against creation time).
    pub offset: Offset,
    /// Environment variables to set (replace) on the container.
    pub set_env: Vec<(String, String)>,
    /// Read-only bind mounts to add: the shim and the state directory.
    pub mounts: [BindMount; 2],
    /// Host directory holding the timestamp file (mounted into the container).
    pub state_dir: PathBuf,
    /// Host path of the timestamp file; rewrite it to change the offset at run time.
    pub timestamp_file: PathBuf,
}

impl Plan {
    /// Creates the state directory (0755) and writes the timestamp file into it.
    pub fn prepare_host(&self) -> Result<(), FileError> {
        fs::create_dir_all(&self.state_dir).map_err(|source| FileError::Write {
            path: self.state_dir.clone(),
            source,
        })?;
        write_timestamp_file(&self.timestamp_file, self.offset)
    }
}

/// The plan for container `container` of a pod with `annotations`, whose current environment is
/// `env`; `None` when no faketime annotation applies to it. `host_shim` is what
/// [`crate::install_shim`] returned; `host_state_dir` is a directory for this container alone.
pub fn plan<'a, I>(
    annotations: I,
    container: &str,
    env: &[String],
    now: SystemTime,
    host_shim: &Path,
    host_state_dir: &Path,
) -> Result<Option<Plan>, OffsetError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    plan_with(
        annotations,
        container,
        env,
        now,
        host_shim,
        host_state_dir,
        &Injection::default(),
    )
}

/// [`plan`] with a chosen [`Injection`] (e.g. another `FAKETIME_CACHE_DURATION`).
pub fn plan_with<'a, I>(
    annotations: I,
    container: &str,
    env: &[String],
    now: SystemTime,
    host_shim: &Path,
    host_state_dir: &Path,
    injection: &Injection,
) -> Result<Option<Plan>, OffsetError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let Some(offset) = offset_from_annotations(annotations, container, now)? else {
        return Ok(None);
    };
    Ok(Some(Plan {
        offset,
        set_env: env_adjustments(env, injection),
        mounts: bind_mounts(host_shim, host_state_dir),
        state_dir: host_state_dir.to_path_buf(),
        timestamp_file: host_state_dir.join(TIMESTAMP_FILE_NAME),
    }))
}

/// Removes a container's state directory; one that is already gone is fine.
pub fn remove_state_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::read_timestamp_file;
    use crate::shim::{CONTAINER_SHIM_PATH, CONTAINER_STATE_DIR};

    #[test]
    fn no_annotation_no_plan() {
        let p = plan(
            [("other", "x")],
            "app",
            &[],
            SystemTime::now(),
            Path::new("/s.so"),
            Path::new("/st"),
        );
        assert_eq!(p, Ok(None));
    }

    #[test]
    fn plan_then_prepare_and_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("c1");
        let env = vec!["LD_PRELOAD=/x.so".to_string()];
        let p = plan(
            [("berth.io/faketime", "+2d")],
            "app",
            &env,
            SystemTime::now(),
            Path::new("/var/lib/berth/faketime/libberth-faketime.so"),
            &state,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.offset, "+2d".parse().unwrap());
        assert_eq!(p.set_env[0].1, format!("/x.so:{CONTAINER_SHIM_PATH}"));
        assert_eq!(p.mounts[1].source, state);
        assert_eq!(p.mounts[1].destination, CONTAINER_STATE_DIR);
        p.prepare_host().unwrap();
        assert_eq!(read_timestamp_file(&p.timestamp_file).unwrap(), p.offset);
        remove_state_dir(&state).unwrap();
        assert!(!state.exists());
        remove_state_dir(&state).unwrap(); // already gone
    }

    #[test]
    fn plan_with_sets_the_cache_duration() {
        let inj = Injection {
            cache_duration_secs: 0,
            ..Injection::default()
        };
        let p = plan_with(
            [("berth.io/faketime", "-3h")],
            "app",
            &[],
            SystemTime::now(),
            Path::new("/s.so"),
            Path::new("/st"),
            &inj,
        )
        .unwrap()
        .unwrap();
        assert!(
            p.set_env
                .contains(&("FAKETIME_CACHE_DURATION".to_string(), "0".to_string()))
        );
        assert_eq!(p.offset, "-3h".parse().unwrap());
    }

    #[test]
    fn bad_annotation_is_an_error_naming_the_key() {
        let err = plan(
            [("berth.io/faketime.app", "2 days")],
            "app",
            &[],
            SystemTime::now(),
            Path::new("/s.so"),
            Path::new("/st"),
        )
        .unwrap_err();
        assert!(
            matches!(err, OffsetError::Annotation { ref key, .. } if key == "berth.io/faketime.app")
        );
        assert_eq!(
            err.to_string(),
            "annotation berth.io/faketime.app is invalid"
        );
    }
}
