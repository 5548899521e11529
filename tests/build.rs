//! The target triple, for finding the static CNI plugins: `scripts/lib/plugins.sh` builds
//! them with an explicit `--target`, so they are under `target/<triple>/`.

fn main() {
    let triple = std::env::var("TARGET").expect("cargo sets TARGET for build scripts");
    println!("cargo:rustc-env=BERTH_TARGET_TRIPLE={triple}");
}
