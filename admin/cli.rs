//! `karaoke-admin`: the operator CLI for the admin plane, for people without grpcurl.
//!
//! Every call of the RoomAdmin service, plus a local token check. Output is one JSON
//! object per line on stdout; errors go to stderr with the gRPC status code.

use clap::builder::PossibleValuesParser;
use clap::{CommandFactory, Parser, Subcommand};
use karaoke_realtime::admin::convert;
use karaoke_realtime::admin::pb::{self, room_admin_client::RoomAdminClient};
use karaoke_realtime::auth::{TokenKeys, now_secs};
use karaoke_realtime::protocol::{CreationPhase, GameStatus};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const AFTER_HELP: &str = "Output is one JSON object per line on stdout; errors go to stderr \
with the gRPC status code. Exit codes: 0 success, 1 a failed call or an invalid token, \
2 a usage error. A flag given wins over its environment variable.";

/// `karaoke-admin [OPTIONS] COMMAND`.
#[derive(Debug, Parser)]
#[command(
    name = "karaoke-admin",
    version,
    about = "Operator CLI for the realtime server's gRPC admin plane",
    after_help = AFTER_HELP,
    propagate_version = true,
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Cmd,
}

/// How to reach the admin plane; given before or after the command.
#[derive(Debug, clap::Args)]
struct Conn {
    /// Admin plane address: http:// for plaintext, https:// for TLS
    #[arg(
        long,
        global = true,
        env = "KARAOKE_ADMIN_ADDR",
        value_name = "URL",
        default_value = "http://127.0.0.1:50051"
    )]
    addr: String,
    /// Admin bearer token, sent as `authorization: Bearer …`
    #[arg(
        long,
        global = true,
        env = "ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// CA certificate (PEM) when the admin plane uses TLS (https:// address)
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) when the admin plane requires one (with --key and --ca)
    #[arg(long, global = true, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PEM) for --cert
    #[arg(long, global = true, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Seconds a call may wait for its answer to begin (connecting gives up after 5)
    #[arg(
        long,
        global = true,
        env = "KARAOKE_ADMIN_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    timeout: u64,
}

const STATUSES: [&str; 6] = [
    "lobby",
    "briefing",
    "creating",
    "presenting",
    "voting",
    "results",
];
const PHASES: [&str; 4] = ["big_idea", "visual", "headline", "pitch"];

#[derive(Debug, Subcommand)]
enum Cmd {
    /// CreateRoom: a new room, optionally with its host
    CreateRoom {
        /// Room code; empty: the server generates one
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
        /// The host player, as ID:NAME
        #[arg(long, value_name = "ID:NAME")]
        host: Option<String>,
        /// Seconds per phase
        #[arg(long, value_name = "SECONDS")]
        phase_duration: Option<u32>,
        /// Advance phases when their time is up
        #[arg(long)]
        auto_advance: bool,
    },
    /// ListRooms: one page of live rooms
    ListRooms {
        /// Rooms per page (0: the server's default)
        #[arg(long, value_name = "N")]
        page_size: Option<u32>,
        /// The nextPageToken of the previous page
        #[arg(long, value_name = "CODE")]
        page_token: Option<String>,
    },
    /// GetRoom: one room's state
    GetRoom {
        /// Room code
        code: String,
    },
    /// UpsertPlayer: add or replace a player (flags not given are false/0/empty)
    AddPlayer {
        /// Room code
        code: String,
        /// Player id
        id: String,
        /// Display name
        name: String,
        #[arg(long, value_name = "E")]
        emoji: Option<String>,
        /// Seat index (the server checks its range)
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        seat: Option<i32>,
        /// Make the player the host
        #[arg(long)]
        host: bool,
        /// Mark the player ready
        #[arg(long)]
        ready: bool,
    },
    /// RemovePlayer
    RemovePlayer {
        /// Room code
        code: String,
        /// Player id
        id: String,
    },
    /// MintPlayerToken: a join token for one player
    MintToken {
        /// Room code
        code: String,
        /// Player id
        player: String,
        /// Lifetime in seconds (0 or none: the server's default)
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<u32>,
    },
    /// Verify a token locally with REALTIME_SHARED_SECRET (no server call)
    CheckToken {
        /// The token
        token: String,
        /// The secret tokens are signed with
        #[arg(
            long,
            env = "REALTIME_SHARED_SECRET",
            hide_env_values = true,
            value_name = "SECRET"
        )]
        secret: Option<String>,
        /// The server's longest token lifetime, in seconds [default: 86400]
        #[arg(long, env = "ADMIN_TOKEN_MAX_TTL_SECONDS", value_name = "SECONDS")]
        max_ttl: Option<String>,
    },
    /// ForcePhase: move a room to a status (and creation phase)
    ForcePhase {
        /// Room code
        code: String,
        #[arg(value_parser = PossibleValuesParser::new(STATUSES))]
        status: String,
        #[arg(value_parser = PossibleValuesParser::new(PHASES))]
        phase: Option<String>,
        /// Phase start time (RFC 3339); none: now
        #[arg(long, value_name = "RFC3339")]
        start: Option<String>,
    },
    /// UpdateSettings: change only the settings given
    UpdateSettings {
        /// Room code
        code: String,
        #[arg(long, value_name = "X")]
        product_category: Option<String>,
        #[arg(long, value_name = "SECONDS")]
        phase_duration: Option<u32>,
        #[arg(long, value_name = "X")]
        brief_style: Option<String>,
        #[arg(long, value_name = "X")]
        wacky_brief_style: Option<String>,
        /// true or false (alone: true)
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        auto_advance: Option<bool>,
    },
    /// PublishEvent briefUpdated
    PublishBrief {
        /// Room code
        code: String,
        brief_id: String,
    },
    /// PublishEvent contentSubmitted
    PublishContent {
        /// Room code
        code: String,
        adlob_id: String,
        #[arg(value_parser = PossibleValuesParser::new(PHASES))]
        phase: String,
        player_id: String,
    },
    /// CloseRoom
    CloseRoom {
        /// Room code
        code: String,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// WatchRoom: print each event until the room closes
    Watch {
        /// Room code
        code: String,
    },
    /// Print a shell completion script to stdout
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

// Names are the players' wire names ("lobby", "big_idea"); the mapping to the proto's
// enums is the admin plane's own (`admin::convert`).

fn status_of(name: &str) -> Result<i32, String> {
    let status: GameStatus =
        serde_json::from_value(json!(name)).map_err(|_| format!("unknown status {name}"))?;
    Ok(convert::status_to_pb(status) as i32)
}

fn phase_of(name: &str) -> Result<i32, String> {
    let phase: CreationPhase =
        serde_json::from_value(json!(name)).map_err(|_| format!("unknown phase {name}"))?;
    Ok(convert::phase_to_pb(Some(phase)) as i32)
}

fn status_name(v: i32) -> &'static str {
    convert::status_from_pb("status", v)
        .map(GameStatus::as_str)
        .unwrap_or("unspecified")
}

fn phase_name(v: i32) -> Value {
    match convert::phase_from_pb("current_phase", v) {
        Ok(Some(phase)) => phase.as_str().into(),
        _ => Value::Null,
    }
}

fn room_json(r: &pb::Room) -> Value {
    let players: Vec<Value> = r
        .players
        .iter()
        .map(|p| {
            json!({"id": p.id, "name": p.name, "emoji": p.emoji, "isReady": p.is_ready,
                   "isHost": p.is_host, "seatIndex": p.seat_index, "connected": p.connected})
        })
        .collect();
    let s = r.settings.clone().unwrap_or_default();
    json!({
        "id": r.id, "code": r.code, "status": status_name(r.status),
        "currentPhase": phase_name(r.current_phase),
        "phaseStartTime": r.phase_start_time, "phaseEndsAt": r.phase_ends_at,
        "players": players, "version": r.version, "connectionCount": r.connection_count,
        "settings": {"productCategory": s.product_category,
                     "phaseDurationSeconds": s.phase_duration_seconds,
                     "briefStyle": s.brief_style, "wackyBriefStyle": s.wacky_brief_style,
                     "autoAdvance": s.auto_advance}
    })
}

/// Adds the bearer token to a request when one is configured.
fn request<T>(message: T, token: &Option<String>) -> Result<tonic::Request<T>, String> {
    let mut req = tonic::Request::new(message);
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the admin token is not valid header text".to_string())?;
        req.metadata_mut().insert("authorization", value);
    }
    Ok(req)
}

enum Failure {
    Usage(String),
    Call(tonic::Status),
}

impl From<String> for Failure {
    fn from(s: String) -> Failure {
        Failure::Usage(s)
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        Failure::Call(s)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors exit 2 naming the argument; --help and --version exit 0.
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            let _ = Cli::command()
                .error(clap::error::ErrorKind::ValueValidation, message)
                .print();
            ExitCode::from(2)
        }
        Err(Failure::Call(status)) => {
            eprintln!("error: {:?}: {}", status.code(), status.message());
            ExitCode::from(1)
        }
    }
}

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn connect(conn: &Conn) -> Result<RoomAdminClient<Channel>, Failure> {
    let addr = conn.addr.clone();
    let mut endpoint =
        Channel::from_shared(addr.clone()).map_err(|e| Failure::Usage(format!("--addr: {e}")))?;
    if let Some(ca) = &conn.ca {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| Failure::Usage(format!("{flag} {}: {e}", path.display())))
        };
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--ca", ca)?));
        // A client certificate, for an admin plane that requires one (mTLS); clap
        // makes --cert and --key go together.
        if let (Some(cert), Some(key)) = (&conn.cert, &conn.key) {
            tls = tls.identity(Identity::from_pem(
                read("--cert", cert)?,
                read("--key", key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Failure::Usage(format!("--ca: {e}")))?;
    } else if conn.cert.is_some() {
        return Err(Failure::Usage("--cert and --key need --ca".into()));
    }
    // Bounded waits: a black-holed address or a stalled admin plane ends the command
    // with UNAVAILABLE / DEADLINE_EXCEEDED instead of hanging the operator's shell.
    // (The request timeout ends at the response headers, so `watch` streams on.)
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(std::time::Duration::from_secs(conn.timeout))
        .connect()
        .await
        .map_err(|e| Failure::Call(tonic::Status::unavailable(format!("{addr}: {e}"))))?;
    Ok(RoomAdminClient::new(channel))
}

/// `check-token`: verifies locally, as a server with this secret and cap would.
fn check_token(
    token: &str,
    secret: Option<String>,
    max_ttl: Option<String>,
) -> Result<(), Failure> {
    let secret = secret
        .filter(|s| !s.is_empty())
        .ok_or_else(|| "check-token needs REALTIME_SHARED_SECRET (or --secret)".to_string())?;
    // The server's lifetime cap, as the server reads it (default 24 h).
    let max_lifetime = match max_ttl.filter(|v| !v.trim().is_empty()) {
        None => karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS,
        Some(v) => v.trim().parse().map_err(|_| {
            format!("--max-ttl (ADMIN_TOKEN_MAX_TTL_SECONDS): expected seconds, got {v:?}")
        })?,
    };
    let keys = TokenKeys::new(secret.as_bytes(), max_lifetime);
    let out = match keys.verify(token, now_secs()) {
        Ok(c) => {
            json!({"valid": true, "roomCode": c.room_code, "playerId": c.player_id, "exp": c.exp})
        }
        Err(e) => json!({"valid": false, "error": e.to_string()}),
    };
    println!("{out}");
    if out["valid"] == true {
        Ok(())
    } else {
        Err(Failure::Call(tonic::Status::unauthenticated(
            "token is not valid",
        )))
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let command = match cli.command {
        Cmd::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "karaoke-admin", &mut std::io::stdout());
            return Ok(());
        }
        Cmd::CheckToken {
            token,
            secret,
            max_ttl,
        } => return check_token(&token, secret, max_ttl),
        command => command,
    };
    let token = cli.conn.token.clone().filter(|t| !t.is_empty());
    let mut client = connect(&cli.conn).await?;
    let out = match command {
        Cmd::CreateRoom {
            code,
            host,
            phase_duration,
            auto_advance,
        } => {
            let host = match host {
                Some(spec) => {
                    let (id, name) = spec
                        .split_once(':')
                        .ok_or_else(|| "--host takes ID:NAME".to_string())?;
                    Some(pb::Player {
                        id: id.into(),
                        name: name.into(),
                        is_host: true,
                        ..Default::default()
                    })
                }
                None => None,
            };
            let settings = pb::Settings {
                phase_duration_seconds: phase_duration,
                auto_advance: auto_advance.then_some(true),
                ..Default::default()
            };
            let req = pb::CreateRoomRequest {
                code: code.unwrap_or_default(),
                host,
                settings: Some(settings),
            };
            let room = client
                .create_room(request(req, &token)?)
                .await?
                .into_inner()
                .room;
            room.as_ref().map(room_json).unwrap_or(Value::Null)
        }
        Cmd::ListRooms {
            page_size,
            page_token,
        } => {
            let req = pb::ListRoomsRequest {
                page_size: page_size.unwrap_or(0),
                page_token: page_token.unwrap_or_default(),
            };
            let res = client.list_rooms(request(req, &token)?).await?.into_inner();
            let rooms: Vec<Value> = res
                .rooms
                .iter()
                .map(|r| {
                    json!({"code": r.code, "status": status_name(r.status),
                    "playerCount": r.player_count, "connectionCount": r.connection_count,
                    "version": r.version})
                })
                .collect();
            json!({"rooms": rooms, "nextPageToken": res.next_page_token})
        }
        Cmd::GetRoom { code } => {
            let req = pb::GetRoomRequest { room_code: code };
            let room = client
                .get_room(request(req, &token)?)
                .await?
                .into_inner()
                .room;
            room.as_ref().map(room_json).unwrap_or(Value::Null)
        }
        Cmd::AddPlayer {
            code,
            id,
            name,
            emoji,
            seat,
            host,
            ready,
        } => {
            let req = pb::UpsertPlayerRequest {
                room_code: code,
                player: Some(pb::Player {
                    id,
                    name,
                    emoji: emoji.unwrap_or_default(),
                    seat_index: seat.unwrap_or(0),
                    is_host: host,
                    is_ready: ready,
                    connected: false,
                }),
            };
            let res = client
                .upsert_player(request(req, &token)?)
                .await?
                .into_inner();
            json!({"version": res.version})
        }
        Cmd::RemovePlayer { code, id } => {
            let req = pb::RemovePlayerRequest {
                room_code: code,
                player_id: id,
            };
            let res = client
                .remove_player(request(req, &token)?)
                .await?
                .into_inner();
            json!({"version": res.version})
        }
        Cmd::MintToken { code, player, ttl } => {
            let req = pb::MintPlayerTokenRequest {
                room_code: code,
                player_id: player,
                ttl_seconds: ttl.unwrap_or(0),
            };
            let res = client
                .mint_player_token(request(req, &token)?)
                .await?
                .into_inner();
            json!({"token": res.token, "expiresAt": res.expires_at})
        }
        Cmd::ForcePhase {
            code,
            status,
            phase,
            start,
        } => {
            let req = pb::ForcePhaseRequest {
                room_code: code,
                status: status_of(&status)?,
                current_phase: match phase {
                    Some(p) => phase_of(&p)?,
                    None => 0,
                },
                phase_start_time: start.unwrap_or_default(),
            };
            let res = client
                .force_phase(request(req, &token)?)
                .await?
                .into_inner();
            json!({"version": res.version})
        }
        Cmd::UpdateSettings {
            code,
            product_category,
            phase_duration,
            brief_style,
            wacky_brief_style,
            auto_advance,
        } => {
            let req = pb::UpdateSettingsRequest {
                room_code: code,
                settings: Some(pb::Settings {
                    product_category,
                    phase_duration_seconds: phase_duration,
                    brief_style,
                    wacky_brief_style,
                    auto_advance,
                }),
            };
            let res = client
                .update_settings(request(req, &token)?)
                .await?
                .into_inner();
            json!({"version": res.version})
        }
        Cmd::PublishBrief { code, brief_id } => {
            publish(
                &mut client,
                &token,
                code,
                pb::publish_event_request::Event::BriefUpdated(pb::BriefUpdated { brief_id }),
            )
            .await?
        }
        Cmd::PublishContent {
            code,
            adlob_id,
            phase,
            player_id,
        } => {
            let event = pb::publish_event_request::Event::ContentSubmitted(pb::ContentSubmitted {
                adlob_id,
                phase: phase_of(&phase)?,
                player_id,
            });
            publish(&mut client, &token, code, event).await?
        }
        Cmd::CloseRoom { code, reason } => {
            let req = pb::CloseRoomRequest {
                room_code: code,
                reason: reason.unwrap_or_default(),
            };
            let res = client.close_room(request(req, &token)?).await?.into_inner();
            json!({"finalVersion": res.final_version})
        }
        Cmd::Watch { code } => {
            let req = pb::WatchRoomRequest { room_code: code };
            let mut stream = client.watch_room(request(req, &token)?).await?.into_inner();
            while let Some(event) = stream.message().await? {
                // The event is the exact frame players received.
                println!("{}", event.json);
            }
            return Ok(());
        }
        Cmd::Completions { .. } | Cmd::CheckToken { .. } => return Ok(()),
    };
    println!("{out}");
    Ok(())
}

async fn publish(
    client: &mut RoomAdminClient<Channel>,
    token: &Option<String>,
    code: String,
    event: pb::publish_event_request::Event,
) -> Result<Value, Failure> {
    let req = pb::PublishEventRequest {
        room_code: code,
        event: Some(event),
    };
    let res = client
        .publish_event(request(req, token)?)
        .await?
        .into_inner();
    Ok(json!({"version": res.version}))
}

#[cfg(test)]
mod tests {
    use super::{Cli, Cmd};
    use clap::{CommandFactory, Parser};

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("karaoke-admin").chain(line.split(' ')))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn host_takes_a_value_only_in_create_room() {
        let cli = parse("create-room --host h1:Hana --code ABC").expect("parses");
        assert!(matches!(
            cli.command,
            Cmd::CreateRoom { host: Some(ref h), code: Some(ref c), .. } if h == "h1:Hana" && c == "ABC"
        ));
        let cli = parse("add-player ABC p2 Pia --host --seat 1").expect("parses");
        assert!(matches!(
            cli.command,
            Cmd::AddPlayer { host: true, seat: Some(1), ref name, .. } if name == "Pia"
        ));
    }

    #[test]
    fn auto_advance_alone_or_with_a_value() {
        for (line, want) in [
            ("update-settings ABC --auto-advance", Some(true)),
            ("update-settings ABC --auto-advance false", Some(false)),
            ("update-settings ABC", None),
        ] {
            let cli = parse(line).expect("parses");
            assert!(
                matches!(cli.command, Cmd::UpdateSettings { auto_advance, .. } if auto_advance == want),
                "{line}"
            );
        }
        let err = parse("force-phase ABC dancing").expect_err("unknown status");
        assert!(err.to_string().contains("<STATUS>"), "{err}");
    }
}
