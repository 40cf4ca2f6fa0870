//! Command line: `run`, `check-config`, `map`, `passwd`, `audit`.

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
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// EX_USAGE from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;
/// EX_UNAVAILABLE: a component could not start (port in use, unreadable file).
const EXIT_START: u8 = 69;
/// EX_DATAERR: the persistence store is damaged (truncated, not a store, undecodable record).
const EXIT_STORE_DAMAGED: u8 = 65;

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
    /// Inspect the audit trail of translated traffic.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
}

#[derive(Subcommand, Debug)]
enum AuditAction {
    /// Check the hash chain, sequence numbers and checkpoints of every file; print each
    /// problem as FILE:LINE: WHAT. Exits 0 when intact, 1 otherwise.
    Verify {
        /// Trail folder (default: `[audit] dir` of the configuration).
        dir: Option<PathBuf>,
        /// Configuration file (for the default folder).
        #[arg(long, short, default_value = DEFAULT_CONFIG_FILE)]
        config: PathBuf,
    },
    /// Print the records that match every given filter.
    Query {
        /// Trail folder (default: `[audit] dir` of the configuration).
        dir: Option<PathBuf>,
        #[command(flatten)]
        filter: AuditFilter,
        /// Configuration file (for the default folder).
        #[arg(long, short, default_value = DEFAULT_CONFIG_FILE)]
        config: PathBuf,
    },
    /// Print the last records, then follow the trail as it grows (until interrupted).
    Tail {
        /// Trail folder (default: `[audit] dir` of the configuration).
        dir: Option<PathBuf>,
        /// How many existing records to print first.
        #[arg(long, short = 'n', default_value_t = 10)]
        lines: usize,
        /// Output: `json` (the lines as stored) or `table`.
        #[arg(long, default_value = "json")]
        format: String,
        /// Configuration file (for the default folder).
        #[arg(long, short, default_value = DEFAULT_CONFIG_FILE)]
        config: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct AuditFilter {
    /// From this time on: RFC 3339 (`2026-11-26T10:00:00Z`) or an age (`1h`, `30m`).
    #[arg(long)]
    since: Option<String>,
    /// Before this time: RFC 3339 or an age.
    #[arg(long)]
    until: Option<String>,
    /// Sender or recipient JID (a bare JID matches every resource).
    #[arg(long)]
    jid: Option<String>,
    /// MQTT topic filter (`+` and `#` allowed).
    #[arg(long)]
    topic: Option<String>,
    /// Mapping rule name.
    #[arg(long)]
    rule: Option<String>,
    /// Outcome: published, delivered, denied, dropped.
    #[arg(long)]
    outcome: Option<String>,
    /// Output: `json` (the lines as stored) or `table`.
    #[arg(long, default_value = "json")]
    format: String,
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
        Command::Audit { action } => audit_cli::run(action),
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
    // Human logs already show why the start failed; JSON logs get a plain line beside them.
    let plain_start_error = cfg.log.format == config::LogFormat::Json;
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
        shutdown::survive_file_size_limit();
        let app = match App::start(cfg).await {
            Ok(app) => app,
            Err(error) => {
                tracing::error!(%error, "Cannot start.");
                if plain_start_error {
                    eprintln!("error: {error}");
                }
                return ExitCode::from(exit_code(&error));
            }
        };
        shutdown::signal().await;
        app.stop(SHUTDOWN_GRACE).await;
        ExitCode::SUCCESS
    })
}

/// The exit status for a start failure: 65 for a damaged store, 69 otherwise.
fn exit_code(error: &xmpp_mqtt_bridge::app::StartError) -> u8 {
    use xmpp_mqtt_bridge::app::StartError as App;
    use xmpp_mqtt_bridge::broker::StartError as Broker;
    match error {
        App::Broker(Broker::Store(e)) if e.is_corruption() => EXIT_STORE_DAMAGED,
        _ => EXIT_START,
    }
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

mod audit_cli {
    //! `audit verify | query | tail`.

    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::time::{Duration, SystemTime};

    use xmpp_mqtt_bridge::audit::query::{Filter, TABLE_HEADER, read_all, table_row};
    use xmpp_mqtt_bridge::audit::record::Line;
    use xmpp_mqtt_bridge::audit::{list_files, verify};
    use xmpp_mqtt_bridge::config;

    use super::{AuditAction, AuditFilter, EXIT_CONFIG};

    /// How often `tail` looks for new lines.
    const TAIL_POLL: Duration = Duration::from_millis(200);

    pub(super) fn run(action: AuditAction) -> ExitCode {
        let result = match action {
            AuditAction::Verify { dir, config } => trail_dir(dir, &config).map(|d| verify_dir(&d)),
            AuditAction::Query {
                dir,
                filter,
                config,
            } => trail_dir(dir, &config).and_then(|d| query(&d, &filter)),
            AuditAction::Tail {
                dir,
                lines,
                format,
                config,
            } => trail_dir(dir, &config).and_then(|d| tail(&d, lines, &format)),
        };
        result.unwrap_or_else(|(code, message)| {
            eprintln!("error: {message}");
            ExitCode::from(code)
        })
    }

    type Failure = (u8, String);

    fn trail_dir(dir: Option<PathBuf>, path: &Path) -> Result<PathBuf, Failure> {
        if let Some(dir) = dir {
            return Ok(dir);
        }
        let cfg = config::load(path).map_err(|e| (EXIT_CONFIG, e.to_string()))?;
        cfg.audit.map(|a| a.dir).ok_or_else(|| {
            (
                EXIT_CONFIG,
                format!("{} has no [audit] section; give the folder", path.display()),
            )
        })
    }

    fn verify_dir(dir: &Path) -> ExitCode {
        match verify::verify(dir) {
            Ok(report) => {
                for p in &report.problems {
                    println!("{p}");
                }
                for n in &report.notes {
                    println!("note: {n}");
                }
                println!(
                    "{}: {} files, {} records, {} problems",
                    if report.ok() {
                        "intact"
                    } else {
                        "TAMPERED OR DAMAGED"
                    },
                    report.files,
                    report.records,
                    report.problems.len()
                );
                if report.ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        }
    }

    fn when(text: &str) -> Result<SystemTime, Failure> {
        if let Ok(t) = humantime::parse_rfc3339_weak(text) {
            return Ok(t);
        }
        humantime::parse_duration(text)
            .ok()
            .and_then(|age| SystemTime::now().checked_sub(age))
            .ok_or_else(|| {
                (
                    EXIT_CONFIG,
                    format!("`{text}` is neither an RFC 3339 time nor an age like 1h"),
                )
            })
    }

    fn table(format: &str) -> Result<bool, Failure> {
        match format {
            "json" => Ok(false),
            "table" => Ok(true),
            other => Err((
                EXIT_CONFIG,
                format!("`{other}` is not a format; use json or table"),
            )),
        }
    }

    fn print(raw: &str, line: &Line, table: bool) -> bool {
        let text = if table {
            table_row(line)
        } else {
            raw.to_string()
        };
        // A closed pipe (`| head`) ends the output quietly.
        writeln!(std::io::stdout(), "{text}").is_ok()
    }

    fn query(dir: &Path, f: &AuditFilter) -> Result<ExitCode, Failure> {
        let table = table(&f.format)?;
        let filter = Filter {
            since: f.since.as_deref().map(when).transpose()?,
            until: f.until.as_deref().map(when).transpose()?,
            jid: f.jid.clone(),
            topic: f.topic.clone(),
            rule: f.rule.clone(),
            outcome: f.outcome.clone(),
        };
        let lines =
            read_all(dir).map_err(|e| (1, format!("cannot read {}: {e}", dir.display())))?;
        if table {
            println!("{TABLE_HEADER}");
        }
        for (raw, line) in lines.iter().filter(|(_, l)| filter.keeps(l)) {
            if !print(raw, line, table) {
                break;
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn tail(dir: &Path, last: usize, format: &str) -> Result<ExitCode, Failure> {
        let table = table(format)?;
        let keep = Filter::default();
        let cannot = |e: std::io::Error| (1, format!("cannot read {}: {e}", dir.display()));
        // One snapshot for both the last records and where following starts, so that a
        // record written meanwhile is printed once: in neither part twice, in none never.
        let files = list_files(dir).map_err(cannot)?;
        let mut lines = Vec::new();
        let mut current = None;
        for (n, path) in &files {
            let bytes = std::fs::read(path).map_err(cannot)?;
            let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            for raw in String::from_utf8_lossy(&bytes[..complete]).lines() {
                if let Ok(line) = serde_json::from_str::<Line>(raw) {
                    lines.push((raw.to_string(), line));
                }
            }
            current = Some((*n, complete as u64));
        }
        if table {
            println!("{TABLE_HEADER}");
        }
        let records: Vec<_> = lines.iter().filter(|(_, l)| keep.keeps(l)).collect();
        for (raw, line) in &records[records.len().saturating_sub(last)..] {
            if !print(raw, line, table) {
                return Ok(ExitCode::SUCCESS);
            }
        }
        // Follow: the newest file from the snapshot's end, then each newer file from its start.
        let mut partial = String::new();
        loop {
            std::thread::sleep(TAIL_POLL);
            let Ok(files) = list_files(dir) else { continue };
            let (number, offset) = match current {
                Some(c) => c,
                None => match files.first() {
                    Some((n, _)) => (*n, 0),
                    None => continue,
                },
            };
            let Some((_, path)) = files.iter().find(|(n, _)| *n == number) else {
                // Not there yet, or deleted by retention: a newer file is where to go on.
                if let Some((n, _)) = files.iter().find(|(n, _)| *n > number) {
                    current = Some((*n, 0));
                }
                continue;
            };
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            if start == bytes.len() {
                // Nothing new here; once a newer file exists, this one is finished.
                if let Some((n, _)) = files.iter().find(|(n, _)| *n > number) {
                    current = Some((*n, 0));
                    partial.clear();
                }
                continue;
            }
            partial.push_str(&String::from_utf8_lossy(&bytes[start..]));
            current = Some((number, bytes.len() as u64));
            while let Some(end) = partial.find('\n') {
                let raw: String = partial.drain(..=end).collect();
                let raw = raw.trim_end_matches('\n');
                if let Ok(line) = serde_json::from_str::<Line>(raw) {
                    if keep.keeps(&line) && !print(raw, &line, table) {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
        }
    }
}
