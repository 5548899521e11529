//! Builds the time shim (a shared library) and the probe program the tests run under it.
//!
//! The shim must load into every x86_64 glibc from 2.17 on, including images that hold only
//! the loader and libc.so.6, so it is built without the hardening that pulls in newer symbol
//! versions (stack protector, fortify) and needs nothing but libc.so.6: it finds the functions
//! it wraps itself, without libdl (see shim/berth_faketime.c).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = env::var("TARGET").unwrap_or_default();
    if !target.starts_with("x86_64-") || !target.contains("linux") {
        panic!("berth-faketime builds its shim for x86_64 Linux only (target is {target})");
    }
    println!("cargo:rerun-if-changed=shim/berth_faketime.c");
    println!("cargo:rerun-if-changed=shim/probe.c");

    let shim = out.join("libberth-faketime.so");
    compile(
        Path::new("shim/berth_faketime.c"),
        &shim,
        &[
            "-shared",
            "-fPIC",
            "-fvisibility=hidden",
            "-fno-stack-protector",
            "-U_FORTIFY_SOURCE",
            "-D_FORTIFY_SOURCE=0",
            // The wrappers check pointers glibc's headers declare nonnull (gettimeofday(NULL, ..)
            // is valid for the kernel); keep those checks.
            "-fno-delete-null-pointer-checks",
            "-Wno-nonnull-compare",
            // No loop turned into a memset/memcpy call: the import list stays getenv,
            // dl_iterate_phdr and __errno_location.
            "-fno-tree-loop-distribute-patterns",
            "-Wl,-soname,libberth-faketime.so",
            // libc.so.6 is the only DT_NEEDED, whatever the toolchain's defaults.
            "-Wl,--as-needed",
            "-Wl,--no-undefined",
            "-Wl,--hash-style=both",
            "-Wl,-z,noexecstack",
            "-Wl,-z,relro",
            "-s",
        ],
    );
    println!("cargo:rustc-env=BERTH_FAKETIME_SHIM={}", shim.display());

    let probe = out.join("berth-faketime-probe");
    compile(
        Path::new("shim/probe.c"),
        &probe,
        &["-pthread", "-Wno-deprecated-declarations", "-lrt"],
    );
    println!("cargo:rustc-env=BERTH_FAKETIME_PROBE={}", probe.display());
}

fn compile(source: &Path, output: &Path, extra: &[&str]) {
    let compiler = cc::Build::new()
        .cargo_metadata(false)
        .opt_level(2)
        .debug(false)
        .pic(true)
        .get_compiler();
    let mut cmd: Command = compiler.to_command();
    cmd.args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(output)
        .arg(source)
        .args(extra);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler ({cmd:?}): {e}; install gcc"));
    if !status.success() {
        panic!(
            "compiling {} failed ({status}): see the compiler output above",
            source.display()
        );
    }
}
