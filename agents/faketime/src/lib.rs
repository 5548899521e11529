//! berth's time shim and what the agent needs to inject it.
//!
//! The shim (`libberth-faketime.so`, built from `shim/berth_faketime.c` by this crate's
//! build script and embedded as [`SHIM`]) is a preload library that shifts the wall clock
//! of a container by an offset read from a file, and leaves every other clock real. This
//! crate gives the agent everything around it, as pure functions where possible:
//!
//! - [`offset`]: parsing the `berth.io/faketime` annotations into an [`Offset`];
//! - [`file`]: the timestamp file the shim reads (format, atomic write, read);
//! - [`env`]: the environment a container needs (`LD_PRELOAD` appended, never replaced);
//! - [`elf`]: whether the shim can work for a container's entry point at all ([`Coverage`]);
//! - [`rootfs`]: finding the entry point in a view of the container's root (links, `#!`);
//! - [`shim`]: the embedded library, [`install_shim`], and the fixed in-container paths;
//! - [`plan`]: all of the above for one container in one call;
//! - [`vdso`]: shifting static, Go and musl programs by patching the vDSO of the running
//!   process instead (x86-64).
//!
//! A typical container creation in the agent:
//!
//! ```no_run
//! use std::path::Path;
//! use std::time::SystemTime;
//! use berth_faketime::{env, file, offset, shim};
//!
//! let annotations = [("berth.io/faketime", "+2d")];
//! let Some(offset) = offset::offset_from_annotations(annotations, "app", SystemTime::now())?
//! else {
//!     return Ok(()); // no faketime for this container
//! };
//! let host_shim = shim::install_shim(Path::new("/var/lib/berth/faketime"))?;
//! let state_dir = Path::new("/run/berth/faketime/<container-id>");
//! file::write_timestamp_file(&state_dir.join(file::TIMESTAMP_FILE_NAME), offset)?;
//! let mounts = shim::bind_mounts(&host_shim, state_dir); // add both, read-only
//! let set_env = env::env_adjustments(&["PATH=/bin".to_string()], &env::Injection::default());
//! # let _ = (mounts, set_env);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod elf;
pub mod env;
pub mod file;
mod fsutil;
pub mod offset;
pub mod plan;
pub mod rootfs;
pub mod shim;
pub mod vdso;

pub use elf::Coverage;
pub use offset::Offset;
pub use shim::{SHIM, install_shim};
