//! Writes the embedded shim into a directory and prints its path:
//! `cargo run -p berth-faketime --example install-shim -- <dir>`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .ok_or("usage: install-shim <directory>")?;
    let path = berth_faketime::install_shim(std::path::Path::new(&dir))?;
    println!("{}", path.display());
    Ok(())
}
