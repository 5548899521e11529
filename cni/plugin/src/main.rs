fn main() {
    eprintln!("berth-cni: not built yet");
    std::process::exit(1);
}
