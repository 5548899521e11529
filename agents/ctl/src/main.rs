//! berthctl: parse, run, print errors with their causes.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = berthctl::cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthctl: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = rt.block_on(berthctl::run(cli, &mut stdout)) {
        // The remote command's exit status (debug, exec): already reported, if at all.
        if let Some(berthctl::debug::ExitStatus(code)) = e.downcast_ref() {
            std::process::exit(*code);
        }
        eprintln!("berthctl: {e:#}");
        let code = match e.downcast_ref::<berthctl::commands::RpcError>() {
            Some(r) if r.status == tonic::Code::PermissionDenied => 3,
            Some(r) if r.status == tonic::Code::NotFound => 4,
            Some(_) => 5,
            None => 1,
        };
        std::process::exit(code);
    }
}
