//! The `tollgate` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate::clock::Clock;
use tollgate::config::{Config, DEFAULT_CONFIG_TOML};

// The hot path allocates per request (headers, JSON, events); mimalloc cut the allocator's
// share of CPU measured under load (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc is told to commit its arenas on demand rather than eagerly: with eager commit (its
/// default on Linux), 1,000 concurrent slow streams peaked at ~97 MB RSS; without, ~64 MB, at no
/// measurable CPU cost (bench/HISTORY.md). mimalloc reads the option from the environment when
/// the process starts, before `main` (its first arena is set up by the first allocation), so
/// the only reliable way to set it is the environment: when it is not set, the process sets it
/// and re-executes itself (same PID, same arguments). An operator's own
/// `MIMALLOC_ARENA_EAGER_COMMIT` is left alone.
fn tune_allocator() {
    use std::os::unix::process::CommandExt;
    const VAR: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // exec only returns on failure; then carry on with the default.
    let _ = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VAR, "0")
        .exec();
}

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "An LLM API gateway with metered packages"
)]
struct Cli {
    /// Configuration file (defaults → this file → TOLLGATE_* environment variables).
    #[arg(long, global = true, default_value = "config.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the commented default configuration.
    PrintDefaultConfig,
    /// Validate the configuration and exit (non-zero with a message naming the key if invalid).
    CheckConfig,
    /// Admin account tasks.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Try it end to end: a local fake upstream, a seeded user, package and key, and the gateway.
    Demo,
    /// Run only the fake upstream (used by benchmarks).
    FakeUpstream {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Set a new password for an admin (a random one is printed unless --password is given).
    ResetPassword {
        #[arg(long, default_value = "admin")]
        username: String,
        #[arg(long, env = "TOLLGATE_NEW_ADMIN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    if let Command::PrintDefaultConfig = cli.command {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    // An explicitly named config file must exist; the default may be absent (defaults apply).
    let explicit = cli.config != std::path::Path::new("config.toml");
    let config = match Config::load(&cli.config, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::CheckConfig = cli.command {
        println!("configuration OK ({})", cli.config.display());
        return ExitCode::SUCCESS;
    }
    tollgate::telemetry::init(&config);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli.command, config));
    // A blocking task stuck on a hung database must not hold the exit back.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let app = tollgate::app::App::build(config, Clock::System).await?;
            if let Some((user, password)) = &app.created_admin {
                println!(
                    "Created the first admin account `{user}` with password: {password}\n\
                     (shown once; change it with `tollgate admin reset-password`)"
                );
            }
            let listener = tollgate::app::bind(app.state.config.listen_addr()).await?;
            let local = listener.local_addr()?;
            tracing::info!(addr = %local, "tollgate listening");
            let base = tollgate::app::base_url(&app.state.config, local);
            println!("Admin console: {base}/admin   OpenAI base URL: {base}/v1   Anthropic base URL: {base}");
            app.serve(listener, tollgate::app::shutdown_signal()).await
        }
        Command::Migrate => {
            tollgate::app::connect(&config).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::ResetPassword { username, password },
        } => {
            let db = tollgate::app::connect(&config).await?;
            let user = db
                .find_user_by_username(&username)
                .await?
                .filter(|u| u.role == tollgate::domain::Role::Admin)
                .ok_or_else(|| anyhow::anyhow!("no admin named `{username}`"))?;
            let (password, generated) = match password {
                Some(p) if p.chars().count() >= 8 => (p, false),
                Some(_) => anyhow::bail!("the password must be at least 8 characters"),
                None => (tollgate::secrets::random_base62(20), true),
            };
            let now = Clock::System.now_ms();
            db.set_password_hash(user.id, &tollgate::secrets::hash_password(&password), now)
                .await?;
            if generated {
                println!("New password for `{username}`: {password}");
            } else {
                println!("Password for `{username}` updated");
            }
            Ok(())
        }
        Command::Demo => tollgate::demo::run(config).await,
        Command::FakeUpstream { listen } => {
            println!(
                "fake upstream on http://{listen}: OpenAI base URL http://{listen}/v1, \
                 Anthropic base URL http://{listen}"
            );
            tollgate::fake_upstream::serve_forever(listen).await?;
            Ok(())
        }
        Command::PrintDefaultConfig | Command::CheckConfig => Ok(()),
    }
}
