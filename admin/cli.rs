//! `karaoke-admin`: the operator CLI for the admin plane, for people without grpcurl.
//!
//! Every call of the RoomAdmin service, plus a local token check. Output is one JSON
//! object per line on stdout; errors go to stderr with the gRPC status code.

use karaoke_realtime::admin::convert;
use karaoke_realtime::admin::pb::{self, room_admin_client::RoomAdminClient};
use karaoke_realtime::auth::{TokenKeys, now_secs};
use karaoke_realtime::protocol::{CreationPhase, GameStatus};
use serde_json::{Value, json};
use std::process::ExitCode;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const USAGE: &str = "usage: karaoke-admin [--addr URL] [--token TOKEN] [--ca FILE] COMMAND
  --addr   admin plane address (env KARAOKE_ADMIN_ADDR; default http://127.0.0.1:50051)
  --token  admin bearer token (env ADMIN_TOKEN)
  --ca     CA certificate (PEM) when the admin plane uses TLS (https:// address)
  --cert, --key  client certificate and key (PEM) when the admin plane requires one
commands:
  create-room [--code CODE] [--host ID:NAME] [--phase-duration SECONDS] [--auto-advance]
  list-rooms [--page-size N] [--page-token CODE]
  get-room CODE
  add-player CODE ID NAME [--emoji E] [--seat N] [--host] [--ready]
  remove-player CODE ID
  mint-token CODE PLAYER [--ttl SECONDS]
  check-token TOKEN                 (verifies locally with REALTIME_SHARED_SECRET)
  force-phase CODE STATUS [PHASE] [--start RFC3339]
  update-settings CODE [--product-category X] [--phase-duration S] [--brief-style X]
                       [--wacky-brief-style X] [--auto-advance true|false]
  publish-brief CODE BRIEF_ID
  publish-content CODE ADLOB_ID PHASE PLAYER_ID
  close-room CODE [--reason TEXT]
  watch CODE                        (prints events until the room closes)
statuses: lobby briefing creating presenting voting results
phases:   big_idea visual headline pitch";

/// Positional words and `--flag [value]` options of one command line.
struct Args {
    words: Vec<String>,
    flags: Vec<(String, Option<String>)>,
}

/// Flags that take no value.
const SWITCHES: &[&str] = &["--host", "--ready", "--auto-advance"];

/// Whether `flag` takes no value in `command` (the first word, if already seen):
/// `add-player`'s `--host` is a switch, `create-room`'s takes `ID:NAME`.
fn is_switch(command: Option<&str>, flag: &str) -> bool {
    match flag {
        "--host" => command != Some("create-room"),
        _ => SWITCHES.contains(&flag),
    }
}

impl Args {
    fn parse(raw: Vec<String>) -> Result<Args, String> {
        let mut words: Vec<String> = Vec::new();
        let mut flags = Vec::new();
        let mut it = raw.into_iter().peekable();
        while let Some(word) = it.next() {
            if !word.starts_with("--") {
                words.push(word);
                continue;
            }
            let takes_value = !is_switch(words.first().map(String::as_str), &word)
                || (word == "--auto-advance"
                    && it.peek().is_some_and(|v| v == "true" || v == "false"));
            let value = if takes_value {
                Some(it.next().ok_or_else(|| format!("{word} needs a value"))?)
            } else {
                None
            };
            flags.push((word, value));
        }
        Ok(Args { words, flags })
    }

    fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .find(|(f, _)| f == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn switch(&self, name: &str) -> bool {
        self.flags.iter().any(|(f, _)| f == name)
    }

    fn word(&self, i: usize, what: &str) -> Result<String, String> {
        self.words
            .get(i)
            .cloned()
            .ok_or_else(|| format!("missing {what}"))
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        self.flag(name)
            .map(|v| v.parse().map_err(|_| format!("{name}: not a number: {v}")))
            .transpose()
    }
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
    let raw: Vec<String> = std::env::args().skip(1).collect();
    match run(raw).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("{message}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Call(status)) => {
            eprintln!("error: {:?}: {}", status.code(), status.message());
            ExitCode::from(1)
        }
    }
}

async fn connect(args: &Args) -> Result<RoomAdminClient<Channel>, Failure> {
    let addr = args
        .flag("--addr")
        .map(str::to_string)
        .or_else(|| std::env::var("KARAOKE_ADMIN_ADDR").ok())
        .unwrap_or_else(|| "http://127.0.0.1:50051".to_string());
    let mut endpoint =
        Channel::from_shared(addr.clone()).map_err(|e| Failure::Usage(format!("--addr: {e}")))?;
    if let Some(ca) = args.flag("--ca") {
        let read = |flag: &str, path: &str| {
            std::fs::read(path).map_err(|e| Failure::Usage(format!("{flag} {path}: {e}")))
        };
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--ca", ca)?));
        // A client certificate, for an admin plane that requires one (mTLS).
        match (args.flag("--cert"), args.flag("--key")) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read("--cert", cert)?,
                    read("--key", key)?,
                ));
            }
            (None, None) => {}
            _ => return Err(Failure::Usage("--cert and --key go together".into())),
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Failure::Usage(format!("--ca: {e}")))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Failure::Call(tonic::Status::unavailable(format!("{addr}: {e}"))))?;
    Ok(RoomAdminClient::new(channel))
}

async fn run(raw: Vec<String>) -> Result<(), Failure> {
    let args = Args::parse(raw)?;
    let command = args.word(0, "command")?;
    if command == "help" || args.switch("--help") {
        println!("{USAGE}");
        return Ok(());
    }
    if command == "check-token" {
        let token = args.word(1, "TOKEN")?;
        let secret = std::env::var("REALTIME_SHARED_SECRET")
            .map_err(|_| "check-token needs REALTIME_SHARED_SECRET".to_string())?;
        // The server's lifetime cap, as the server reads it (default 24 h).
        let max_lifetime = match std::env::var("ADMIN_TOKEN_MAX_TTL_SECONDS") {
            Err(_) => karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS,
            Ok(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("ADMIN_TOKEN_MAX_TTL_SECONDS: expected seconds, got {v:?}"))?,
        };
        let keys = TokenKeys::new(secret.as_bytes(), max_lifetime);
        let out = match keys.verify(&token, now_secs()) {
            Ok(c) => {
                json!({"valid": true, "roomCode": c.room_code, "playerId": c.player_id, "exp": c.exp})
            }
            Err(e) => json!({"valid": false, "error": e.to_string()}),
        };
        println!("{out}");
        return if out["valid"] == true {
            Ok(())
        } else {
            Err(Failure::Call(tonic::Status::unauthenticated(
                "token is not valid",
            )))
        };
    }
    let token = args
        .flag("--token")
        .map(str::to_string)
        .or_else(|| std::env::var("ADMIN_TOKEN").ok());
    let mut client = connect(&args).await?;
    let out = match command.as_str() {
        "create-room" => {
            let host = match args.flag("--host") {
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
                phase_duration_seconds: args.number("--phase-duration")?,
                auto_advance: args.switch("--auto-advance").then_some(true),
                ..Default::default()
            };
            let req = pb::CreateRoomRequest {
                code: args.flag("--code").unwrap_or_default().to_string(),
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
        "list-rooms" => {
            let req = pb::ListRoomsRequest {
                page_size: args.number("--page-size")?.unwrap_or(0),
                page_token: args.flag("--page-token").unwrap_or_default().to_string(),
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
        "get-room" => {
            let req = pb::GetRoomRequest {
                room_code: args.word(1, "CODE")?,
            };
            let room = client
                .get_room(request(req, &token)?)
                .await?
                .into_inner()
                .room;
            room.as_ref().map(room_json).unwrap_or(Value::Null)
        }
        "add-player" => {
            let req = pb::UpsertPlayerRequest {
                room_code: args.word(1, "CODE")?,
                player: Some(pb::Player {
                    id: args.word(2, "ID")?,
                    name: args.word(3, "NAME")?,
                    emoji: args.flag("--emoji").unwrap_or_default().to_string(),
                    seat_index: args.number("--seat")?.unwrap_or(0),
                    is_host: args.switch("--host"),
                    is_ready: args.switch("--ready"),
                    connected: false,
                }),
            };
            let res = client
                .upsert_player(request(req, &token)?)
                .await?
                .into_inner();
            json!({"version": res.version})
        }
        "remove-player" => {
            let req = pb::RemovePlayerRequest {
                room_code: args.word(1, "CODE")?,
                player_id: args.word(2, "ID")?,
            };
            let res = client
                .remove_player(request(req, &token)?)
                .await?
                .into_inner();
            json!({"version": res.version})
        }
        "mint-token" => {
            let req = pb::MintPlayerTokenRequest {
                room_code: args.word(1, "CODE")?,
                player_id: args.word(2, "PLAYER")?,
                ttl_seconds: args.number("--ttl")?.unwrap_or(0),
            };
            let res = client
                .mint_player_token(request(req, &token)?)
                .await?
                .into_inner();
            json!({"token": res.token, "expiresAt": res.expires_at})
        }
        "force-phase" => {
            let req = pb::ForcePhaseRequest {
                room_code: args.word(1, "CODE")?,
                status: status_of(&args.word(2, "STATUS")?)?,
                current_phase: match args.words.get(3) {
                    Some(p) => phase_of(p)?,
                    None => 0,
                },
                phase_start_time: args.flag("--start").unwrap_or_default().to_string(),
            };
            let res = client
                .force_phase(request(req, &token)?)
                .await?
                .into_inner();
            json!({"version": res.version})
        }
        "update-settings" => {
            let auto_advance = match args.flag("--auto-advance") {
                None if args.switch("--auto-advance") => Some(true),
                None => None,
                Some(v) => Some(v == "true"),
            };
            let req = pb::UpdateSettingsRequest {
                room_code: args.word(1, "CODE")?,
                settings: Some(pb::Settings {
                    product_category: args.flag("--product-category").map(str::to_string),
                    phase_duration_seconds: args.number("--phase-duration")?,
                    brief_style: args.flag("--brief-style").map(str::to_string),
                    wacky_brief_style: args.flag("--wacky-brief-style").map(str::to_string),
                    auto_advance,
                }),
            };
            let res = client
                .update_settings(request(req, &token)?)
                .await?
                .into_inner();
            json!({"version": res.version})
        }
        "publish-brief" | "publish-content" => {
            let event = if command == "publish-brief" {
                pb::publish_event_request::Event::BriefUpdated(pb::BriefUpdated {
                    brief_id: args.word(2, "BRIEF_ID")?,
                })
            } else {
                pb::publish_event_request::Event::ContentSubmitted(pb::ContentSubmitted {
                    adlob_id: args.word(2, "ADLOB_ID")?,
                    phase: phase_of(&args.word(3, "PHASE")?)?,
                    player_id: args.word(4, "PLAYER_ID")?,
                })
            };
            let req = pb::PublishEventRequest {
                room_code: args.word(1, "CODE")?,
                event: Some(event),
            };
            let res = client
                .publish_event(request(req, &token)?)
                .await?
                .into_inner();
            json!({"version": res.version})
        }
        "close-room" => {
            let req = pb::CloseRoomRequest {
                room_code: args.word(1, "CODE")?,
                reason: args.flag("--reason").unwrap_or_default().to_string(),
            };
            let res = client.close_room(request(req, &token)?).await?.into_inner();
            json!({"finalVersion": res.final_version})
        }
        "watch" => {
            let req = pb::WatchRoomRequest {
                room_code: args.word(1, "CODE")?,
            };
            let mut stream = client.watch_room(request(req, &token)?).await?.into_inner();
            while let Some(event) = stream.message().await? {
                // The event is the exact frame players received.
                println!("{}", event.json);
            }
            return Ok(());
        }
        other => return Err(Failure::Usage(format!("unknown command {other}"))),
    };
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Args;

    fn parse(line: &str) -> Args {
        Args::parse(line.split(' ').map(str::to_string).collect()).expect("parses")
    }

    #[test]
    fn host_takes_a_value_only_in_create_room() {
        let args = parse("create-room --host h1:Hana --code ABC");
        assert_eq!(args.flag("--host"), Some("h1:Hana"));
        assert_eq!(args.flag("--code"), Some("ABC"));
        assert_eq!(args.words, ["create-room"]);
        let args = parse("add-player ABC p2 Pia --host --seat 1");
        assert!(args.switch("--host"));
        assert_eq!(args.flag("--seat"), Some("1"));
        assert_eq!(args.words, ["add-player", "ABC", "p2", "Pia"]);
    }
}
