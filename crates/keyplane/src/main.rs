//! `keyplane`: the server and its command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use keyplane::client::{ClientArgs, KeysCommand, ServicesCommand};
use keyplane::config::{Config, ConfigFlags};
use keyplane::server;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "keyplane",
    version,
    about = "The credential plane of an API platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        config: ConfigFlags,
        /// Address to listen on (default 127.0.0.1:8780).
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        #[command(flatten)]
        gateway: keyplane::config::GatewayFlags,
        #[command(flatten)]
        edge: keyplane::config::EdgeFlags,
    },
    /// The admin key (works on the database directly).
    AdminKey {
        #[command(subcommand)]
        command: AdminKeyCommand,
    },
    /// Signing keys of JWT access tokens (works on the database directly).
    SigningKey {
        #[command(subcommand)]
        command: SigningKeyCommand,
    },
    /// The activity log (works on the database directly).
    Activity {
        #[command(subcommand)]
        command: ActivityCommand,
    },
    /// Write a consistent copy of the SQLite database, also while the server runs (works on
    /// the database directly; for PostgreSQL use pg_dump: see docs/operations.md).
    Backup {
        #[command(flatten)]
        config: ConfigFlags,
        /// The file to write, created with mode 0600 (owner only). It must not exist unless
        /// --force is given. Keep it with the pepper: the copy is useless without it.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: PathBuf,
        /// Replace FILE if it exists (atomically: FILE is either the old or the whole new copy).
        #[arg(long)]
        force: bool,
    },
    /// Apply the organizations, projects, services, roles, members and OAuth clients a
    /// configuration file declares, through a running server (admin key; see
    /// docs/configuration.md). Prints create/update/unchanged per object.
    Apply {
        #[command(flatten)]
        client: ClientArgs,
        /// The configuration file (TOML). Secret files it names are read and written by the
        /// server, on its machine.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Only say what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// API keys, through a running server.
    Keys {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Services, through a running server.
    Services {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ServicesCommand,
    },
}

#[derive(Subcommand)]
enum AdminKeyCommand {
    /// Replace the admin key; prints the new one once. The old one is refused from now on.
    Rotate {
        #[command(flatten)]
        config: ConfigFlags,
    },
}

#[derive(Subcommand)]
enum SigningKeyCommand {
    /// Add a new signing key: published at once in the JWKS, signing after the lead time.
    Rotate {
        #[command(flatten)]
        config: ConfigFlags,
        /// `ES256` or `EdDSA` (default: the deployment's algorithm).
        #[arg(long)]
        alg: Option<String>,
        /// Seconds the new key is published before it signs (default: the configured lead).
        #[arg(long)]
        lead_seconds: Option<i64>,
    },
}

#[derive(Subcommand)]
enum ActivityCommand {
    /// Check that no event was edited, deleted or reordered: the whole chain from its first
    /// event, through every checkpoint. Exits 1 if the chain is broken.
    Verify {
        #[command(flatten)]
        config: ConfigFlags,
    },
}

fn init_tracing(format: &str) {
    keyplane::telemetry::init_logging(format);
}

fn env_map() -> HashMap<String, String> {
    std::env::vars().collect()
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            gateway,
            edge,
        } => {
            let env = env_map();
            let log_format = env
                .get("KEYPLANE_LOG_FORMAT")
                .cloned()
                .unwrap_or_else(|| "text".into());
            init_tracing(&log_format);
            let config = Config::load_serve(&config, listen.as_deref(), &gateway, &edge, &env)?;
            let running = server::start(&config, server::shutdown_signal()).await?;
            if let Some(key) = &running.generated_admin_key {
                eprintln!("{}", server::admin_key_banner(key));
            }
            running.wait().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::AdminKey {
            command: AdminKeyCommand::Rotate { config },
        } => {
            init_tracing("text");
            let config = Config::load(&config, None, &env_map())?;
            let app = server::build(&config).await?;
            app.bootstrap(None).await?;
            let key = app
                .rotate_admin_key()
                .await
                .context("cannot rotate the admin key")?;
            app.close_storage().await?;
            eprintln!("{}", server::admin_key_banner(&key));
            Ok(ExitCode::SUCCESS)
        }
        Command::SigningKey {
            command:
                SigningKeyCommand::Rotate {
                    config,
                    alg,
                    lead_seconds,
                },
        } => {
            init_tracing("text");
            let config = Config::load(&config, None, &env_map())?;
            let alg = keyplane_core::domain::token::Alg::parse(
                alg.as_deref().unwrap_or(&config.signing_alg),
            )
            .context("--alg must be ES256 or EdDSA")?;
            let app = server::build(&config).await?;
            app.ensure_defaults().await?;
            app.ensure_signing_keys().await?;
            let kid = app.rotate_signing_key(alg, lead_seconds).await?;
            app.close_storage().await?;
            println!("{kid}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Activity {
            command: ActivityCommand::Verify { config },
        } => {
            init_tracing("text");
            let config = Config::load(&config, None, &env_map())?;
            let app = server::build(&config).await?;
            let report = app.verify_chain().await?;
            app.close_storage().await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.intact {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Backup {
            config,
            output,
            force,
        } => {
            init_tracing("text");
            let config = Config::load(&config, None, &env_map())?;
            backup(&config, &output, force).await
        }
        Command::Apply {
            client,
            config,
            dry_run,
        } => {
            keyplane::client::apply(&client, &config, dry_run).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { client, command } => {
            keyplane::client::keys(&client, command).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Services { client, command } => {
            keyplane::client::services(&client, command).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `keyplane backup`: SQLite's `VACUUM INTO`, a consistent snapshot even while a server writes.
/// PostgreSQL has its own tool, and keyplane does not pretend to be it.
async fn backup(config: &Config, output: &std::path::Path, force: bool) -> Result<ExitCode> {
    if !config.database.starts_with("sqlite:") {
        anyhow::bail!(
            "keyplane backup copies SQLite databases only, and this deployment uses PostgreSQL.\n\
             Back it up with pg_dump, which takes a consistent snapshot while keyplane runs:\n\n    \
             pg_dump --format=custom --file=keyplane.dump \"$KEYPLANE_DATABASE\"\n\n\
             and restore into a new, empty database with\n\n    \
             pg_restore --no-owner --dbname=\"$NEW_DATABASE_URL\" keyplane.dump\n\n\
             Keep the pepper with the dump: without it no credential in it can be checked.\n\
             See docs/operations.md."
        );
    }
    let snapshot = match keyplane_store::backup_sqlite(&config.database, output, force).await {
        Ok(s) => s,
        Err(keyplane_store::BackupError::Exists(p)) => {
            anyhow::bail!("{} already exists; pass --force to replace it", p.display())
        }
        Err(e) => return Err(e).context("no backup was written"),
    };
    let pepper = if config.pepper.is_some() {
        "the pepper this deployment is given (KEYPLANE_PEPPER, KEYPLANE_PEPPER_FILE or pepper_file)"
            .to_string()
    } else {
        config
            .data_dir
            .join("keyplane.pepper")
            .display()
            .to_string()
    };
    println!(
        "wrote {} ({} bytes): a consistent copy of {}\nkeep it with {pepper}: without the pepper no credential in the copy can be checked",
        snapshot.output.display(),
        snapshot.bytes,
        snapshot.database.display()
    );
    Ok(ExitCode::SUCCESS)
}
