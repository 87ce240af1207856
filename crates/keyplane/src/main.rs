//! `keyplane`: the server and its command line.

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use keyplane::client::{
    self, ActivityCommand, ClientArgs, ClientsCommand, KeysCommand, LeaksCommand, MembersCommand,
    OrgsCommand, ProjectsCommand, RolesCommand, RoutesCommand, ServicesCommand,
};
use keyplane::config::{Config, ConfigFlags};
use keyplane::database::{self, DatabaseArgs};
use keyplane::server;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "keyplane",
    version,
    about = "The credential plane of an API platform",
    long_about = "The credential plane of an API platform: API keys, OAuth 2.0 clients and \
                  access tokens, forward auth, and a tamper-evident activity log.\n\n\
                  `keyplane serve` runs the server. The network commands (keys, clients, \
                  members, orgs, projects, roles, services, activity, routes, whoami, \
                  introspect, apply) \
                  talk to a running server with --url and --token (or KEYPLANE_URL and \
                  KEYPLANE_TOKEN); --json prints the API's answer exactly. The database \
                  commands (migrate, admin-key, signing-key, backup, activity verify --local) \
                  open the database directly and never create one unless given --create. \
                  `keyplane healthcheck` asks a running server's /readyz (for container \
                  health checks).\n\n\
                  Exit status: 0 success, 1 a check failed (a broken activity chain, pending \
                  migrations for `migrate --status`, an inactive token for `introspect`, a server not \
                  ready for `healthcheck`), 2 an \
                  error.",
    after_help = "See `keyplane help <command>` for a command's options."
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
        /// Address to listen on (or KEYPLANE_LISTEN; default 127.0.0.1:8780).
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        #[command(flatten)]
        gateway: keyplane::config::GatewayFlags,
        #[command(flatten)]
        edge: keyplane::config::EdgeFlags,
        /// Apply no migration at start; refuse to start if one is pending (for rolling
        /// upgrades: run `keyplane migrate` once, then start every node with --no-migrate).
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply the database's pending migrations and exit; --status only lists them (works on
    /// the database directly).
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
        /// List every migration, applied or pending, and change nothing. Exits 1 when one is
        /// pending (or failed, or changed), 0 when the database is up to date.
        #[arg(long)]
        status: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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
    /// OAuth 2.0 clients, their secrets and tokens, through a running server.
    Clients {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Leaked credentials: report one (it is revoked at once), or print the regular
    /// expressions scanners need, through a running server.
    Leaks {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: LeaksCommand,
    },
    /// Members of an organization, through a running server.
    Members {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// Organizations, through a running server.
    Orgs {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: OrgsCommand,
    },
    /// Projects of an organization, through a running server.
    Projects {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ProjectsCommand,
    },
    /// Roles: named sets of permissions and scopes, through a running server.
    Roles {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: RolesCommand,
    },
    /// Services of the platform and their scopes, through a running server.
    Services {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ServicesCommand,
    },
    /// The activity log: query it through a running server; verify it there or on the
    /// database directly.
    Activity {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ActivityCommand,
    },
    /// Usage analytics through a running server: requests over time by outcome
    /// (GET /v1/usage), or `usage top`, the busiest credentials (GET /v1/usage/top).
    Usage {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        usage: client::UsageArgs,
    },
    /// Route rules of forward auth and the gateway, through a running server (admin key).
    Routes {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// Who the credential is: kind, organization, permissions, scopes (GET /v1/me).
    Whoami {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Whether an access token or API key is active, and what it carries (RFC 7662
    /// introspection; needs tokens:introspect, which the admin key holds). Exits 1 when it is
    /// not active.
    Introspect {
        #[command(flatten)]
        client: ClientArgs,
        /// The token; read from standard input when omitted or `-` (keeps it out of the shell's
        /// history and the process list).
        #[arg(value_name = "TOKEN")]
        subject: Option<String>,
    },
    /// Ask a running server's /readyz; exit 0 when it is ready, 1 otherwise, with one line on
    /// stderr (for a container HEALTHCHECK: needs no curl, opens no database).
    Healthcheck {
        #[command(flatten)]
        args: keyplane::healthcheck::HealthcheckArgs,
    },
    /// Print a shell completion script (bash, zsh or fish).
    ///
    /// Install it with `keyplane completion bash > /etc/bash_completion.d/keyplane`,
    /// `keyplane completion zsh > "${fpath[1]}/_keyplane"` or
    /// `keyplane completion fish > ~/.config/fish/completions/keyplane.fish`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum AdminKeyCommand {
    /// Replace the admin key; prints the new one once. The old one is refused from now on.
    Rotate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Subcommand)]
enum SigningKeyCommand {
    /// Add a new signing key: published at once in the JWKS, signing after the lead time.
    /// Prints its key id.
    Rotate {
        #[command(flatten)]
        database: DatabaseArgs,
        /// `ES256` or `EdDSA` (default: the deployment's algorithm).
        #[arg(long, value_parser = ["ES256", "EdDSA"])]
        alg: Option<String>,
        /// Seconds the new key is published before it signs (default: the configured lead).
        #[arg(long, value_name = "SECONDS")]
        lead_seconds: Option<i64>,
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

/// A network command that succeeded.
fn done(r: Result<()>) -> Result<ExitCode> {
    r.map(|()| ExitCode::SUCCESS)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            gateway,
            edge,
            no_migrate,
        } => {
            let env = env_map();
            // Logging starts before the configuration is loaded (so its warnings are logged),
            // and follows `log_format` of the file too, not only KEYPLANE_LOG_FORMAT.
            init_tracing(&keyplane::config::log_format_early(&config, &env));
            let mut config = Config::load_serve(&config, listen.as_deref(), &gateway, &edge, &env)?;
            if no_migrate {
                database::require_migrated(&config).await?;
                config.migrations = keyplane_store::Migrations::RequireApplied;
            }
            let running = server::start(&config, server::shutdown_signal()).await?;
            if let Some(key) = &running.generated_admin_key {
                eprintln!("{}", server::admin_key_banner(key));
            }
            running.wait().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate {
            database,
            status,
            json,
        } => {
            init_tracing("text");
            database::migrate(&database, status, json).await
        }
        Command::AdminKey {
            command: AdminKeyCommand::Rotate { database },
        } => {
            init_tracing("text");
            database::admin_key_rotate(&database).await
        }
        Command::SigningKey {
            command:
                SigningKeyCommand::Rotate {
                    database,
                    alg,
                    lead_seconds,
                },
        } => {
            init_tracing("text");
            database::signing_key_rotate(&database, alg.as_deref(), lead_seconds).await
        }
        Command::Backup {
            config,
            output,
            force,
        } => {
            init_tracing("text");
            database::backup(&config, &output, force).await
        }
        Command::Apply {
            client,
            config,
            dry_run,
        } => done(client::apply(&client, &config, dry_run).await),
        Command::Keys { client, command } => done(client::keys(&client, command).await),
        Command::Clients { client, command } => done(client::clients(&client, command).await),
        Command::Leaks { client, command } => done(client::leaks(&client, command).await),
        Command::Members { client, command } => done(client::members(&client, command).await),
        Command::Orgs { client, command } => done(client::orgs(&client, command).await),
        Command::Projects { client, command } => done(client::projects(&client, command).await),
        Command::Roles { client, command } => done(client::roles(&client, command).await),
        Command::Services { client, command } => done(client::services(&client, command).await),
        Command::Routes { client, command } => done(client::routes(&client, command).await),
        Command::Whoami { client } => done(client::whoami(&client).await),
        Command::Introspect { client, subject } => {
            Ok(if client::introspect(&client, subject).await? {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Activity {
            client,
            command: ActivityCommand::Verify(v),
        } if v.is_local() => {
            init_tracing("text");
            database::activity_verify(&v.database, client.json).await
        }
        Command::Usage { client, usage } => {
            client::usage(&client, usage).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Activity { client, command } => Ok(if client::activity(&client, command).await? {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }),
        Command::Healthcheck { args } => {
            let (ready, line) = keyplane::healthcheck::check(&args, &env_map()).await;
            eprintln!("{line}");
            Ok(if ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "keyplane", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every subcommand, option and argument says what it is in `--help`, and no environment
    /// variable's value is shown there (an empty `[env: KEYPLANE_URL=]`, or a secret).
    #[test]
    fn every_command_and_option_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if ["help", "version"].contains(&id) {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
                if arg.get_env().is_some() && !arg.is_hide_env_values_set() {
                    missing.push(format!("{path} {id}: shows its environment value"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(p.clone());
                }
                walk(sub, &p, missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "keyplane", &mut missing);
        assert!(missing.is_empty(), "without a description: {missing:#?}");
    }
}
