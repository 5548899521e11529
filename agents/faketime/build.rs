//! Builds the time shim (a shared library) and the probe program the tests run under it.
//!
//! The shim must load into every x86_64 glibc from 2.17 on, so it is built without the
//! hardening that pulls in newer symbol versions (stack protector, fortify) and links
//! libdl.so.2 for the `dlsym@GLIBC_2.2.5` it pins (see shim/berth_faketime.c).

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
            "-Wl,-soname,libberth-faketime.so",
            "-Wl,--no-as-needed",
            "-l:libdl.so.2",
            "-Wl,--no-undefined",
            "-Wl,--hash-style=both",
            "-Wl,-z,noexecstack",
            "-Wl,-z,relro",
            "-s",
        ],
    );
    println!("cargo:rustc-env=BERTH_FAKETIME_SHIM={}", shim.display());

    // The same shim without libdl.so.2: dlsym@GLIBC_2.2.5 then binds to libc.so.6, where
    // glibc 2.34 and later keep it. For images with such a glibc and no libdl.so.2 (minimal
    // images that copy only the libraries their programs need).
    let libc_only = out.join("libberth-faketime-libc.so");
    compile(
        Path::new("shim/berth_faketime.c"),
        &libc_only,
        &[
            "-shared",
            "-fPIC",
            "-fvisibility=hidden",
            "-fno-stack-protector",
            "-U_FORTIFY_SOURCE",
            "-D_FORTIFY_SOURCE=0",
            "-fno-delete-null-pointer-checks",
            "-Wno-nonnull-compare",
            "-Wl,-soname,libberth-faketime.so",
            "-Wl,--no-undefined",
            "-Wl,--hash-style=both",
            "-Wl,-z,noexecstack",
            "-Wl,-z,relro",
            "-s",
        ],
    );
    println!(
        "cargo:rustc-env=BERTH_FAKETIME_SHIM_LIBC_ONLY={}",
        libc_only.display()
    );

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
