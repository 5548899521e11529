//! berth-ipam: the fixed-IP IPAM library as a standalone CNI IPAM plugin
//! (`"ipam": {"type": "berth-ipam", …}` under bridge, macvlan, …).

use std::io::{Read, Write};

fn main() {
    let mut input = Vec::new();
    // An unreadable stdin is left for the executor to report (code 5) on the empty input.
    let _ = std::io::stdin().lock().read_to_end(&mut input);
    let input = berth_ipam::normalize_stdin(input);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let code = berth_cni_spec::execute(
        &berth_ipam::BerthIpam,
        |k| std::env::var(k).ok(),
        &mut input.as_slice(),
        &mut out,
    );
    let _ = out.flush();
    std::process::exit(code)
}
