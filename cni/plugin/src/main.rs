//! The `berth-cni` binary: the CNI executor around [`berth_cni::BerthCni`].
fn main() {
    berth_cni::trace::mark("main");
    berth_cni_spec::run(&berth_cni::BerthCni {
        net: berth_cni::KernelNet,
        ipam: berth_cni::ipam::DefaultIpam,
    })
}
