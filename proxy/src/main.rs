//! The `cascade` command: serve, check a config, or run the demo origin.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Every request allocates headers and buffers; mimalloc's thread-local free
// lists make that markedly cheaper than glibc malloc (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cascade", version, about = "A CDN edge proxy with WebAssembly filters")]
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
    /// Mint a token signed with a keyset's HMAC secret, for the demo and tests.
    Token {
        #[arg(long, short, default_value = "conf/cascade.toml")]
        config: PathBuf,
        #[arg(long, default_value = "demo")]
        keyset: String,
        /// The `sub` claim.
        #[arg(long)]
        sub: String,
        /// Space-separated scopes, in the `scope` claim.
        #[arg(long, default_value = "read")]
        scope: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Extra claims as name=value (repeatable).
        #[arg(long = "claim", value_parser = parse_claim)]
        claims: Vec<(String, String)>,
    },
    /// Manage filter modules through the admin API (token: $CASCADE_ADMIN_TOKEN).
    Module {
        #[command(subcommand)]
        action: ModuleAction,
        #[arg(long, global = true, default_value = "127.0.0.1:9901")]
        admin: String,
    },
    /// Reload the config files through the admin API (token: $CASCADE_ADMIN_TOKEN).
    Reload {
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
    },
    /// Run a small origin that echoes each request back as JSON.
    DemoOrigin {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum ModuleAction {
    /// Upload FILE as the new active version of NAME.
    Push { name: String, file: PathBuf },
    /// List modules, their versions and the routes using them.
    List,
    /// Go back to the previous version of NAME.
    Rollback { name: String },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => cascade::server::serve(&config).map_err(|e| e.to_string()),
        Command::Check { config } => cascade::server::check(&config)
            .map(|control| {
                let snapshot = control.current.load();
                println!(
                    "{}: ok ({} routes, {} modules)",
                    config.display(),
                    snapshot.routes.routes().len(),
                    snapshot.modules.len()
                );
            })
            .map_err(|e| e.to_string()),
        Command::Token { config, keyset, sub, scope, ttl, claims } => {
            token(&config, &keyset, &sub, &scope, ttl, claims)
        }
        Command::Module { action, admin } => {
            let request = match action {
                ModuleAction::Push { name, file } => std::fs::read(&file)
                    .map(|bytes| ("PUT", format!("/modules/{name}"), bytes))
                    .map_err(|e| format!("{}: {e}", file.display())),
                ModuleAction::List => Ok(("GET", "/modules".to_string(), Vec::new())),
                ModuleAction::Rollback { name } => Ok(("POST", format!("/modules/{name}/rollback"), Vec::new())),
            };
            request.and_then(|(method, path, body)| cascade::admin_client::call(&admin, method, &path, &body))
        }
        Command::Reload { admin } => cascade::admin_client::call(&admin, "POST", "/config/reload", &[]),
        Command::DemoOrigin { listen } => demo_origin(&listen).map_err(|e| format!("demo origin on {listen}: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse_claim(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not name=value"))
}

fn token(
    config: &std::path::Path,
    keyset: &str,
    sub: &str,
    scope: &str,
    ttl: u64,
    extra: Vec<(String, String)>,
) -> Result<(), String> {
    let config = cascade::config::load(config).map_err(|e| e.to_string())?;
    let keyset_config =
        config.jwt_keysets.get(keyset).ok_or_else(|| format!("no keyset {keyset:?} in [jwt.keysets]"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let mut claims = serde_json::json!({ "sub": sub, "scope": scope, "iat": now, "exp": now + ttl });
    for (name, value) in extra {
        claims[name] = value.into();
    }
    let token = cascade::filters::capabilities::jwt::sign_with_secret(keyset_config, claims)?;
    println!("{token}");
    Ok(())
}

fn demo_origin(listen: &str) -> std::io::Result<()> {
    let origin = cascade::demo_origin::EchoOrigin::spawn(std::net::TcpListener::bind(listen)?)?;
    println!("cascade demo origin: serving http://{}", origin.addr());
    loop {
        std::thread::park();
    }
}
