//! Command line: `run`, `check-config`, `passwd`.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xmpp_mqtt_bridge::app::{App, SHUTDOWN_GRACE};
use xmpp_mqtt_bridge::broker::auth;
use xmpp_mqtt_bridge::config::{self, DEFAULT_CONFIG_FILE};
use xmpp_mqtt_bridge::{shutdown, telemetry};

/// jemalloc instead of glibc's allocator: 5,000 idle connections cost 4.9 KB each instead of
/// 8.6 KB (glibc fragments between long-lived and per-connect allocations); mimalloc was
/// worse (16.8 KB). Measured with benches/broker_compare.rs; see the README.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// EX_USAGE from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;
/// EX_UNAVAILABLE: a component could not start (port in use, unreadable file).
const EXIT_START: u8 = 69;

/// Bridge between a legacy XMPP server and MQTT, with a built-in MQTT 3.1.1/5.0 broker.
///
/// Configuration comes from a TOML file (default config/bridge.toml) and environment
/// variables BRIDGE_<SECTION>__<KEY>, e.g. BRIDGE_BROKER__LISTEN=127.0.0.1:18830.
#[derive(Parser, Debug)]
#[command(name = "xmpp-mqtt-bridge", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the bridge and its built-in MQTT broker until SIGINT or SIGTERM.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG_FILE)]
        config: PathBuf,
    },
    /// Validate the configuration and print the effective settings (secrets redacted).
    /// Exits 0 when valid, 64 with every error listed otherwise.
    CheckConfig {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG_FILE)]
        config: PathBuf,
    },
    /// Manage the MQTT password file (Argon2id hashes).
    Passwd {
        #[command(subcommand)]
        action: PasswdAction,
    },
}

#[derive(Subcommand, Debug)]
enum PasswdAction {
    /// Add a user or replace its password. The password is read from standard input (one
    /// line), or asked for on a terminal.
    Add {
        /// Password file (created with mode 0600 if missing).
        file: PathBuf,
        /// User name.
        user: String,
    },
    /// Remove a user.
    Delete {
        /// Password file.
        file: PathBuf,
        /// User name.
        user: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::CheckConfig { config } => match config::load(&config) {
            Ok(cfg) => {
                print!("{}", cfg.to_toml());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprint!("{errors}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Passwd { action } => passwd(action),
    }
}

fn run(path: PathBuf) -> ExitCode {
    let cfg = match config::load(&path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(&cfg.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_START);
        }
    };
    runtime.block_on(async move {
        let app = match App::start(cfg).await {
            Ok(app) => app,
            Err(error) => {
                tracing::error!(%error, "Cannot start.");
                return ExitCode::from(EXIT_START);
            }
        };
        shutdown::signal().await;
        app.stop(SHUTDOWN_GRACE).await;
        ExitCode::SUCCESS
    })
}

fn passwd(action: PasswdAction) -> ExitCode {
    let result = match action {
        PasswdAction::Add { file, user } => read_password().and_then(|password| {
            auth::set_user(&file, &user, password.as_bytes()).map_err(|e| e.to_string())
        }),
        PasswdAction::Delete { file, user } => match auth::delete_user(&file, &user) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("no user `{user}` in {}", file.display())),
            Err(e) => Err(e.to_string()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn read_password() -> Result<String, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password (input is shown): ");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err("empty password".to_string());
    }
    Ok(password)
}
