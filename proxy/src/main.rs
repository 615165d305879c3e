//! The `cascade` command: serve, check a config, or run the demo origin.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cascade",
    version,
    about = "A CDN edge proxy with WebAssembly filters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given config until stopped.
    Serve {
        #[arg(long, short, default_value = "conf/cascade.toml")]
        config: PathBuf,
    },
    /// Validate the config, its route files, modules and filter configs, without serving.
    Check {
        #[arg(long, short, default_value = "conf/cascade.toml")]
        config: PathBuf,
    },
    /// Run a small origin that echoes each request back as JSON.
    DemoOrigin {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => cascade::server::serve(&config).map_err(|e| e.to_string()),
        Command::Check { config } => cascade::server::check(&config)
            .map(|snapshot| {
                println!(
                    "{}: ok ({} routes, {} modules)",
                    config.display(),
                    snapshot.routes.routes().len(),
                    snapshot.modules.len()
                );
            })
            .map_err(|e| e.to_string()),
        Command::DemoOrigin { listen } => {
            demo_origin(&listen).map_err(|e| format!("demo origin on {listen}: {e}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn demo_origin(listen: &str) -> std::io::Result<()> {
    let origin = cascade::demo_origin::EchoOrigin::spawn(std::net::TcpListener::bind(listen)?)?;
    println!("cascade demo origin: serving http://{}", origin.addr());
    loop {
        std::thread::park();
    }
}
