//! Command line: `run`, `check-config`, `passwd`.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xmpp_mqtt_bridge::app::{App, SHUTDOWN_GRACE};
use xmpp_mqtt_bridge::broker::auth;
use xmpp_mqtt_bridge::config::{self, DEFAULT_CONFIG_FILE};
use xmpp_mqtt_bridge::mapping::MessageKind;
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
    /// Show which mapping rule carries a message and what it becomes on the other side.
    ///
    /// `map xmpp:bob@mqtt.example.org --from alice@example.org` (a message to a bridged JID) or
    /// `map mqtt:users/bob/outbox/alice@example.org --user bob` (a publish by user bob).
    Map {
        /// `xmpp:JID` (recipient in the bridge domain) or `mqtt:TOPIC`.
        address: String,
        /// XMPP sender, for `xmpp:` addresses.
        #[arg(long, default_value = "someone@example.org")]
        from: String,
        /// XMPP message type, for `xmpp:` addresses.
        #[arg(long, default_value = "chat")]
        kind: String,
        /// Authenticated MQTT user name of the publisher, for `mqtt:` addresses.
        #[arg(long)]
        user: Option<String>,
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
        Command::Map {
            address,
            from,
            kind,
            user,
            config,
        } => map(&config, &address, &from, &kind, user.as_deref()),
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

fn map(path: &Path, address: &str, from: &str, kind: &str, user: Option<&str>) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(bridge) = cfg.bridge else {
        eprintln!(
            "error: {} has no [xmpp] section, so no mapping table",
            path.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let table = &bridge.mapping;
    let found = if let Some(to) = address.strip_prefix("xmpp:") {
        let Ok(kind) = kind.parse::<MessageKind>() else {
            eprintln!("error: `{kind}` is not a message type (chat, normal, headline, groupchat)");
            return ExitCode::from(EXIT_CONFIG);
        };
        let bare = |j: &str| j.split('/').next().unwrap_or_default().to_string();
        table
            .to_mqtt(&bare(from), &bare(to), kind)
            .map(|r| {
                let rule = r.rule;
                format!(
                    "rule `{}` ({}:{})\n  publish on `{}` qos {} format {}{}",
                    rule.name,
                    rule.file.display(),
                    rule.line,
                    r.topic,
                    rule.qos,
                    rule.format,
                    if rule.retain { " retained" } else { "" }
                )
            })
            .ok_or_else(|| format!("no rule carries a {kind} message from {from} to {to}"))
    } else if let Some(topic) = address.strip_prefix("mqtt:") {
        table
            .to_xmpp(topic, user)
            .map(|r| {
                format!(
                    "rule `{}` ({}:{})\n  message from {} to {} format {}",
                    r.rule.name,
                    r.rule.file.display(),
                    r.rule.line,
                    r.from,
                    r.to,
                    r.rule.format
                )
            })
            .map_err(|refusal| refusal.to_string())
    } else {
        Err(format!("`{address}` must start with xmpp: or mqtt:"))
    };
    match found {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("not carried: {why}");
            ExitCode::FAILURE
        }
    }
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
