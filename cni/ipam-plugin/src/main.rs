fn main() {
    eprintln!("berth-ipam: not built yet");
    std::process::exit(1);
}
