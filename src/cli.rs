//! Operator subcommands built into the server binary (as centrifugo does):
//! `token mint`, `token check`, `config check`. With no subcommand the binary serves.

use crate::auth::{TokenKeys, now_secs};
use crate::config::Config;

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve,
    MintToken {
        room: String,
        player: String,
        ttl: u64,
    },
    CheckToken {
        token: String,
    },
    CheckConfig,
    /// Apply the database migrations and exit (handled by main: it needs a runtime).
    Migrate,
    Help,
}

pub const USAGE: &str = "usage:
  karaoke-realtime                      serve (configuration from the environment)
  karaoke-realtime token mint --room CODE --player ID [--ttl SECONDS]
  karaoke-realtime token check TOKEN
  karaoke-realtime config check         validate the environment and print the settings
  karaoke-realtime migrate              apply the database migrations (DATABASE_URL) and exit
Tokens use REALTIME_SHARED_SECRET.";

pub fn parse(args: &[String]) -> Result<Command, String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        [] | ["serve"] => Ok(Command::Serve),
        ["help"] | ["--help"] | ["-h"] => Ok(Command::Help),
        ["config", "check"] => Ok(Command::CheckConfig),
        ["migrate"] => Ok(Command::Migrate),
        ["token", "check", token] => Ok(Command::CheckToken {
            token: (*token).to_string(),
        }),
        ["token", "mint", rest @ ..] => {
            let (mut room, mut player, mut ttl) = (None, None, 3600u64);
            let mut it = rest.iter();
            while let Some(flag) = it.next() {
                let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
                match *flag {
                    "--room" => room = Some((*value).to_string()),
                    "--player" => player = Some((*value).to_string()),
                    "--ttl" => {
                        ttl = value
                            .parse()
                            .map_err(|_| format!("--ttl: expected seconds, got {value:?}"))?
                    }
                    other => return Err(format!("unknown flag {other}")),
                }
            }
            Ok(Command::MintToken {
                room: room.ok_or("--room is required")?,
                player: player.ok_or("--player is required")?,
                ttl,
            })
        }
        _ => Err(format!("unknown command: {}", words.join(" "))),
    }
}

/// Runs a non-serving command; returns the process exit code.
pub fn run(command: Command, config: &Config) -> u8 {
    let keys = TokenKeys::new(&config.shared_secret.0, config.token_ttl_max_secs);
    match command {
        Command::Serve | Command::Migrate => 0,
        Command::Help => {
            println!("{USAGE}");
            0
        }
        Command::CheckConfig => {
            println!("{config:#?}");
            if config.secret_is_random {
                eprintln!("warning: REALTIME_SHARED_SECRET is not set");
            }
            0
        }
        Command::MintToken { room, player, ttl } => {
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
        Command::CheckToken { token } => match keys.verify(&token, now_secs()) {
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

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn parses_commands() {
        assert_eq!(parse(&args("")), Ok(Command::Serve));
        assert_eq!(
            parse(&args("token mint --room AB --player p --ttl 60")),
            Ok(Command::MintToken {
                room: "AB".into(),
                player: "p".into(),
                ttl: 60
            })
        );
        assert!(parse(&args("token mint --room AB")).is_err());
        assert!(parse(&args("token mint --room AB --player p --ttl soon")).is_err());
        assert!(parse(&args("dance")).is_err());
    }
}
