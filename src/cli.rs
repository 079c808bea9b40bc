//! The command line of `karaoke-realtime` (clap) and its operator subcommands, built
//! into the server binary as centrifugo does: `token mint`, `token check`,
//! `config check`, `migrate`, `health`, `completions`. With no subcommand it serves.
//!
//! Every setting of [`crate::config::SETTINGS`] is a flag here, with its environment
//! variable as the fallback; a flag given wins. The values, whichever way they came,
//! go to the one [`Config::from_lookup`], so validation and its messages stay in
//! `src/config.rs`.

use crate::auth::{TokenKeys, now_secs};
use crate::config::{Config, SETTINGS, Setting};
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, CommandFactory, Parser, Subcommand};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

const AFTER_HELP: &str = "Every setting is a flag and an environment variable (shown as \
[env: NAME]); a flag given on the command line wins over the variable. Prefer the \
variables for secrets: flags are visible to other local users in the process list. \
docs/configuration.md has the rules of each.";

/// `karaoke-realtime [SETTINGS] [COMMAND]`.
#[derive(Debug, Parser)]
#[command(
    name = "karaoke-realtime",
    version,
    about = "Concept Karaoke realtime server: WebSocket edge, authoritative game loop, gRPC admin plane",
    after_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The command asked for; none given means serve.
    pub fn requested(&self) -> Command {
        self.command.clone().unwrap_or(Command::Serve)
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Serve the players' port and the admin plane (the default)
    Serve,
    /// Mint or verify join tokens with REALTIME_SHARED_SECRET
    #[command(subcommand)]
    Token(TokenCommand),
    /// Validate the configuration
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Apply the database migrations (DATABASE_URL) and exit
    Migrate,
    /// GET /health of the server on this host's PORT; exit 0 when it answers 200, else 1
    Health {
        /// How long to wait for the answer, in milliseconds
        #[arg(long, value_name = "MS", default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Print a shell completion script to stdout
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum TokenCommand {
    /// Print a join token for one player of one room
    Mint {
        /// Room code the token is for
        #[arg(long, value_name = "CODE")]
        room: String,
        /// Player id the token is for
        #[arg(long, value_name = "ID")]
        player: String,
        /// Lifetime in seconds (at most ADMIN_TOKEN_MAX_TTL_SECONDS)
        #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
        ttl: u64,
    },
    /// Verify a token and print its claims as JSON; exit 1 when it is not valid
    Check {
        /// The token (JWT or legacy form)
        token: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ConfigCommand {
    /// Validate the settings exactly as start-up does and print them, secrets redacted
    Check,
}

/// The settings given on the command line or in the environment, keyed by variable.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    values: HashMap<&'static str, Given>,
}

#[derive(Debug, Clone)]
struct Given {
    value: String,
    /// True when it came from a flag rather than the environment.
    from_flag: bool,
}

impl Settings {
    /// The one validated [`Config`], or one line per bad value. A bad value given as a
    /// flag is named by its flag and variable (`--port (PORT): …`).
    pub fn config(&self) -> Result<Config, Vec<String>> {
        // The standard OTEL_* variables are not flags (see config::SETTINGS): they
        // are read from the environment as every OpenTelemetry SDK reads them.
        let lookup = |name: &str| match self.values.get(name) {
            Some(given) => Some(given.value.clone()),
            None if name.starts_with("OTEL_") => std::env::var(name).ok(),
            None => None,
        };
        Config::from_lookup(&lookup).map_err(|errors| {
            errors
                .into_iter()
                .map(|line| self.name_the_flag(line))
                .collect()
        })
    }

    fn name_the_flag(&self, line: String) -> String {
        let Some((name, rest)) = line.split_once(':') else {
            return line;
        };
        match SETTINGS.iter().find(|s| s.env == name) {
            Some(s) if self.values.get(s.env).is_some_and(|g| g.from_flag) => {
                format!("--{} ({name}):{rest}", s.flag)
            }
            _ => line,
        }
    }
}

fn arg_of(s: &Setting) -> Arg {
    Arg::new(s.flag)
        .long(s.flag)
        .env(s.env)
        .hide_env_values(s.secret)
        .value_name("VALUE")
        .help(s.help)
        .global(true)
        .help_heading("Settings")
}

impl clap::FromArgMatches for Settings {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Settings, clap::Error> {
        let mut settings = Settings::default();
        settings.update_from_arg_matches(matches)?;
        Ok(settings)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for s in SETTINGS {
            if let Some(value) = matches.get_one::<String>(s.flag) {
                let from_flag = matches.value_source(s.flag) == Some(ValueSource::CommandLine);
                self.values.insert(
                    s.env,
                    Given {
                        value: value.clone(),
                        from_flag,
                    },
                );
            }
        }
        Ok(())
    }
}

impl clap::Args for Settings {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(SETTINGS.iter().map(arg_of))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Settings::augment_args(cmd)
    }
}

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "karaoke-realtime", &mut std::io::stdout());
}

/// Where `health` looks: the players' port on loopback, or on the bind address when
/// the server binds to one address only.
pub fn health_addr(config: &Config) -> SocketAddr {
    let ip = match config.bind_addr {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, config.port)
}

/// `GET /health` on `addr`; `Ok` when the answer's status is 200.
pub async fn probe_health(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send to {addr}: {e}"))?;
        // The status line is all that matters; the body is "ok".
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("read from {addr}: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&head);
        let status_line = text.lines().next().unwrap_or_default().to_string();
        let mut parts = status_line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(v), Some("200")) if v.starts_with("HTTP/") => Ok(()),
            _ => Err(format!("{addr}/health answered {status_line:?}")),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{addr}/health did not answer within {timeout:?}"))?
}

/// Runs `health`: 0 when the server answers, 1 for anything else (Docker's
/// HEALTHCHECK reads 0 and 1 only), with the reason on stderr.
pub async fn health(settings: &Settings, timeout_ms: u64) -> u8 {
    let config = match settings.config() {
        Ok(config) => config,
        Err(errors) => {
            for line in errors {
                eprintln!("config error: {line}");
            }
            return 1;
        }
    };
    if config.port == 0 {
        eprintln!("health: PORT is 0, so there is no fixed port to check");
        return 1;
    }
    match probe_health(health_addr(&config), Duration::from_millis(timeout_ms)).await {
        Ok(()) => {
            println!("ok");
            0
        }
        Err(why) => {
            eprintln!("health: {why}");
            1
        }
    }
}

/// Runs a `token` or `config` command; returns the process exit code.
pub fn run(command: Command, config: &Config) -> u8 {
    let keys = TokenKeys::new(&config.shared_secret.0, config.token_ttl_max_secs);
    match command {
        Command::Serve
        | Command::Migrate
        | Command::Health { .. }
        | Command::Completions { .. } => 0,
        Command::Config(ConfigCommand::Check) => {
            println!("{config:#?}");
            if config.secret_is_random {
                eprintln!("warning: REALTIME_SHARED_SECRET is not set");
            }
            0
        }
        Command::Token(TokenCommand::Mint { room, player, ttl }) => {
            if config.secret_is_random {
                eprintln!(
                    "REALTIME_SHARED_SECRET must be set to mint a token a server will accept"
                );
                return 2;
            }
            // A longer-lived token would be refused by every server with this config.
            if ttl > config.token_ttl_max_secs {
                eprintln!(
                    "--ttl must be at most {} (ADMIN_TOKEN_MAX_TTL_SECONDS)",
                    config.token_ttl_max_secs
                );
                return 2;
            }
            println!("{}", keys.mint_jwt(&room, &player, now_secs(), ttl));
            0
        }
        Command::Token(TokenCommand::Check { token }) => match keys.verify(&token, now_secs()) {
            Ok(claims) => {
                println!(
                    "{}",
                    serde_json::json!({"valid": true, "roomCode": claims.room_code,
                        "playerId": claims.player_id, "exp": claims.exp})
                );
                0
            }
            Err(e) => {
                println!(
                    "{}",
                    serde_json::json!({"valid": false, "error": e.to_string()})
                );
                1
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("karaoke-realtime").chain(line.split_whitespace()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_commands() {
        assert_eq!(parse("").expect("serve").requested(), Command::Serve);
        assert_eq!(
            parse("token mint --room AB --player p --ttl 60")
                .expect("mint")
                .requested(),
            Command::Token(TokenCommand::Mint {
                room: "AB".into(),
                player: "p".into(),
                ttl: 60
            })
        );
        assert!(parse("token mint --room AB").is_err());
        let err = parse("token mint --room AB --player p --ttl soon").expect_err("bad ttl");
        assert!(err.to_string().contains("--ttl"), "{err}");
        assert!(parse("dance").is_err());
    }

    #[test]
    fn a_flag_anywhere_feeds_the_same_validation() {
        let cli = parse("config check --port 9001 --log-level debug").expect("flags");
        let config = cli.settings.config().expect("valid");
        assert_eq!(config.port, 9001);
        assert_eq!(config.log_level.as_str(), "debug");
        let errors = parse("--port eighty")
            .expect("clap takes any text")
            .settings
            .config()
            .expect_err("config refuses it");
        assert_eq!(
            errors,
            ["--port (PORT): expected a whole number from 0 to 65535, got \"eighty\""]
        );
    }

    #[test]
    fn health_looks_at_loopback_unless_bound_to_one_address() {
        let mut config = Config::for_tests("a-secret-of-sixteen-bytes");
        config.port = 8080;
        config.bind_addr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        assert_eq!(health_addr(&config).to_string(), "127.0.0.1:8080");
        config.bind_addr = "::".parse().expect("ip");
        assert_eq!(health_addr(&config).to_string(), "[::1]:8080");
        config.bind_addr = "10.1.2.3".parse().expect("ip");
        assert_eq!(health_addr(&config).to_string(), "10.1.2.3:8080");
    }
}
