fn main() {
    eprintln!("berth-agent: not built yet");
    std::process::exit(1);
}
