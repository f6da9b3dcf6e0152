//! The `edge-agent` binary: parses the command line, loads configuration, runs a command and
//! maps the outcome to an exit code (0 ok, 2 check-config found problems, 64 bad
//! configuration for `run`, 1 any other failure). For `run`, 0 is a clean stop after
//! SIGTERM/SIGINT; a stop that abandoned readings (the buffer could not be written until the
//! deadline) or in which a stage did not stop within the deadline exits 1, with a log line
//! naming them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edge_agent::config::{self, Problems};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const EXIT_BAD_CONFIG: u8 = 64;
const EXIT_CHECK_FAILED: u8 = 2;
/// `run` stopped, but not cleanly: readings were abandoned or a stage missed the deadline.
const EXIT_UNCLEAN_STOP: u8 = 1;
/// After `run` returned, tasks still running (only after an unclean stop) get this long before
/// the process exits: the stop stays within the unit's TimeoutStopSec.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Parser)]
#[command(name = "edge-agent", version = None, disable_version_flag = true, about = "Warehouse edge agent: device readings to canonical events, stored durably first")]
struct Cli {
    /// Print version, git revision and target triple.
    #[arg(long)]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: ingest, buffer, normalize, forward.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration without touching devices; exit 2 listing every problem.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Ask the running daemon for backlog, per-source state and more.
    Status {
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon to send already-delivered events again.
    Replay {
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[arg(long, value_name = "RFC3339")]
        since: String,
        #[arg(long, value_name = "RFC3339")]
        until: Option<String>,
    },
    /// Run the real pipeline with simulated devices on real ptys and an embedded broker
    /// standing in for central; prints the canonical events as central receives them.
    Demo {
        /// Stop after this long (e.g. "20s"); default: until Ctrl-C.
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
    },
    /// Print counts, oldest/newest and a sample of a stopped agent's buffer file.
    Inspect {
        #[arg(long, value_name = "PATH")]
        storage: PathBuf,
    },
    /// Remote configuration: keys, signing, pushing to a site.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Write a new ed25519 secret key to PATH (mode 0600) and its public key to PATH.pub.
    Keygen {
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
    /// Print the signed document (JSON) of an operational configuration.
    Sign {
        #[arg(long, value_name = "PATH")]
        key: PathBuf,
        #[arg(long, value_name = "N")]
        version: u64,
        #[arg(value_name = "FILE.toml")]
        file: PathBuf,
    },
    /// Publish a signed document retained (QoS 1) to {prefix}/{site}/config/set.
    Push {
        #[arg(long, value_name = "mqtt://HOST:PORT")]
        url: String,
        #[arg(long, value_name = "P", default_value = "edge")]
        topic_prefix: String,
        #[arg(long, value_name = "ID")]
        site: String,
        /// For mqtts://: the CA that signed the broker's certificate.
        #[arg(long, value_name = "PATH")]
        ca_file: Option<PathBuf>,
        /// Mutual TLS: this client's certificate (with --key-file).
        #[arg(long, value_name = "PATH")]
        cert_file: Option<PathBuf>,
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
        #[arg(long)]
        username: Option<String>,
        #[arg(long, value_name = "PATH")]
        password_file: Option<PathBuf>,
        #[arg(value_name = "SIGNED.json")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("{}", edge_agent::version_line());
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        eprintln!("edge-agent: no command given; try `edge-agent --help`");
        return ExitCode::from(EXIT_CHECK_FAILED);
    };
    match command {
        Command::Run { config } => run(config),
        Command::CheckConfig { config } => check_config(config),
        Command::Status { socket, json } => {
            let path = socket.unwrap_or_else(config::default_socket);
            client(&path, json!({"cmd": "status"}), |v| {
                if json {
                    println!("{v}");
                } else {
                    print!("{}", edge_agent::control::render_status(v));
                }
            })
        }
        Command::Replay {
            socket,
            since,
            until,
        } => {
            let path = socket.unwrap_or_else(config::default_socket);
            let mut req = json!({"cmd": "replay", "since": since});
            if let Some(u) = until {
                req["until"] = Value::String(u);
            }
            client(&path, req, |v| {
                println!(
                    "replaying {} delivered events observed from {} to {}",
                    v["replaying"],
                    v["since"].as_str().unwrap_or("?"),
                    v["until"].as_str().unwrap_or("?")
                )
            })
        }
        Command::Demo { duration } => edge_agent::demo::run(duration),
        Command::Config(c) => config_command(c),
        Command::Inspect { storage } => match edge_agent::control::inspect(&storage) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("edge-agent: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn config_command(c: ConfigCommand) -> ExitCode {
    use edge_agent::remote;
    let outcome = match c {
        ConfigCommand::Keygen { out } => remote::keygen(&out).map(|public| {
            format!(
                "secret key in {} (keep it off the sites); add the public key to control.trusted_keys:\n{public}",
                out.display()
            )
        }),
        ConfigCommand::Sign { key, version, file } => std::fs::read_to_string(&file)
            .map_err(|e| format!("{}: {e}", file.display()))
            .and_then(|text| remote::sign(&key, version, &text))
            .and_then(|doc| serde_json::to_string(&doc).map_err(|e| e.to_string())),
        ConfigCommand::Push {
            url,
            topic_prefix,
            site,
            ca_file,
            cert_file,
            key_file,
            username,
            password_file,
            file,
        } => std::fs::read(&file)
            .map_err(|e| format!("{}: {e}", file.display()))
            .and_then(|doc| {
                let target = remote::Target {
                    url,
                    topic_prefix,
                    site,
                    ca_file,
                    cert_file,
                    key_file,
                    username,
                    password_file,
                };
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?
                    .block_on(remote::push(&target, &doc))
            }),
    };
    match outcome {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edge-agent config: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn print_problems(path: &std::path::Path, p: &Problems) {
    eprintln!(
        "edge-agent: configuration {} has {} problem(s):",
        path.display(),
        p.0.len()
    );
    for problem in &p.0 {
        eprintln!("  {problem}");
    }
}

fn check_config(path: PathBuf) -> ExitCode {
    match config::load(&path) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok (site {}, {} stations, {} serial and {} MQTT sources)",
                path.display(),
                cfg.site.id,
                cfg.stations.len(),
                cfg.sources.serial.len(),
                cfg.sources.mqtt.len()
            );
            ExitCode::SUCCESS
        }
        Err(p) => {
            print_problems(&path, &p);
            ExitCode::from(EXIT_CHECK_FAILED)
        }
    }
}

fn run(path: PathBuf) -> ExitCode {
    init_logging();
    let cfg = match config::load(&path) {
        Ok(c) => c,
        Err(p) => {
            print_problems(&path, &p);
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    for w in &cfg.warnings {
        tracing::warn!("configuration {}: {w}", path.display());
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("edge-agent")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edge-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        match edge_agent::app::run(cfg, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ edge_agent::app::RunError::Unclean(_)) => {
                tracing::error!("{e}");
                ExitCode::from(EXIT_UNCLEAN_STOP)
            }
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    });
    // Dropping the runtime would wait for blocking tasks without end (a writer stuck in a
    // storage call): bounded instead.
    rt.shutdown_timeout(EXIT_WAIT);
    code
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}

fn client(path: &std::path::Path, req: Value, show: impl FnOnce(&Value)) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edge-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(edge_agent::control::socket::request(path, &req)) {
        Ok(v) if v.get("error").is_some() => {
            eprintln!("edge-agent: {}", v["error"].as_str().unwrap_or("error"));
            ExitCode::FAILURE
        }
        Ok(v) => {
            show(&v);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edge-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
