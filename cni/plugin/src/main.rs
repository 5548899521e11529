//! The `berth-cni` binary: the CNI executor around [`berth_cni::BerthCni`].

#![forbid(unsafe_code)]

/// One process per CNI call: its allocations come from a static arena and are never freed
/// one by one (`berth_cni_spec::arena`).
#[global_allocator]
static ALLOCATOR: berth_cni_spec::arena::OneShotArena = berth_cni_spec::arena::OneShotArena::new();

fn main() {
    berth_cni::trace::mark("main");
    berth_cni_spec::run(&berth_cni::BerthCni {
        net: berth_cni::KernelNet,
        ipam: berth_cni::ipam::DefaultIpam,
    })
}
