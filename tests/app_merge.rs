//! The existing app's view of a room, merged exactly as its client merges: a
//! `room_state` is taken only when its version is newer than what the app holds, and
//! a phase or status event sets the held version. After every step of a whole game
//! (each player ready, then the host, the phase timer or a forced phase moves the
//! game on) every tab must show the server's ready flags, status and phase.

mod common;

use common::*;
use karaoke_realtime::observe::Origin;
use karaoke_realtime::owner::RoomHandle;
use karaoke_realtime::room::Action;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// What one tab of the app shows.
#[derive(Debug, Default, Clone, PartialEq)]
struct AppView {
    version: u64,
    status: String,
    phase: Value,
    ready: BTreeMap<String, bool>,
}

impl AppView {
    fn take_snapshot(&mut self, snapshot: &Value) {
        self.version = snapshot["version"].as_u64().unwrap_or(0);
        self.status = snapshot["status"].as_str().unwrap_or_default().to_string();
        self.phase = snapshot["currentPhase"].clone();
        self.ready = snapshot["players"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        let id = p["id"].as_str().unwrap_or_default().to_string();
                        (id, p["isReady"] == true)
                    })
                    .collect()
            })
            .unwrap_or_default();
    }

    /// The app's handlers, as they merge.
    fn merge(&mut self, m: &Value) {
        let version = m["version"].as_u64().unwrap_or(0);
        match m["type"].as_str().unwrap_or_default() {
            "hello_ack" => self.take_snapshot(&m["snapshot"]),
            // Only a newer snapshot is taken.
            "room_state" if m["snapshot"]["version"].as_u64().unwrap_or(0) > self.version => {
                self.take_snapshot(&m["snapshot"]);
            }
            "phase_changed" => {
                self.version = version;
                self.phase = m["currentPhase"].clone();
            }
            "status_changed" => {
                self.version = version;
                self.status = m["status"].as_str().unwrap_or_default().to_string();
                self.phase = m["currentPhase"].clone();
            }
            "ready_update" => {
                let id = m["playerId"].as_str().unwrap_or_default().to_string();
                self.ready.insert(id, m["isReady"] == true);
            }
            _ => {}
        }
    }

    /// What the server holds, in the same shape.
    async fn of_server(room: &RoomHandle) -> AppView {
        let snapshot = room.snapshot().await.expect("room");
        let mut view = AppView::default();
        view.take_snapshot(&serde_json::to_value(snapshot).expect("json"));
        view
    }
}

struct Tab {
    client: Client,
    view: AppView,
}

impl Tab {
    /// Reads and merges until it has seen a message at `version`.
    async fn catch_up(&mut self, version: u64) {
        while self.client.seen < version {
            let m = self.client.recv().await;
            assert_ne!(m["type"], "error", "{m}");
            self.view.merge(&m);
        }
    }
}

const PLAYERS: [&str; 4] = ["host", "p2", "p3", "p4"];

async fn tabs(s: &TestServer, code: &str) -> Vec<Tab> {
    let mut tabs = Vec::new();
    for id in PLAYERS {
        let (client, hello) = s.join(code, id).await;
        let mut view = AppView::default();
        view.merge(&hello);
        tabs.push(Tab { client, view });
    }
    tabs
}

/// Every tab shows exactly what the server holds.
async fn all_show_the_server(room: &RoomHandle, tabs: &mut [Tab], step: &str) {
    let truth = AppView::of_server(room).await;
    for (tab, id) in tabs.iter_mut().zip(PLAYERS) {
        tab.catch_up(truth.version).await;
        let shown = AppView {
            version: truth.version,
            ..tab.view.clone()
        };
        assert_eq!(shown, truth, "{id}'s tab after {step}");
    }
}

async fn everyone_ready(room: &RoomHandle, code: &str, tabs: &mut [Tab]) {
    for (i, id) in PLAYERS.iter().enumerate() {
        tabs[i].client.set_ready(code, id, true).await;
        // This change, everywhere, before the next.
        let version = loop {
            let m = tabs[i].client.recv().await;
            tabs[i].view.merge(&m);
            if m["type"] == "ready_update" && m["playerId"] == *id {
                break m["version"].as_u64().expect("version");
            }
        };
        for tab in tabs.iter_mut() {
            tab.catch_up(version).await;
        }
    }
    all_show_the_server(room, tabs, "everyone readied up").await;
    assert!(tabs[0].view.ready.values().all(|r| *r));
}

#[tokio::test]
async fn after_every_step_of_a_whole_game_every_tab_shows_the_servers_ready_flags() {
    let s = spawn_server().await;
    let room = s.create_room("MERGE", &PLAYERS);
    let mut tabs = tabs(&s, "MERGE").await;
    all_show_the_server(&room, &mut tabs, "joining").await;
    // lobby → briefing → creating (4 phases) → presenting → voting → results → lobby
    for step in 0..9 {
        everyone_ready(&room, "MERGE", &mut tabs).await;
        tabs[0]
            .client
            .send(json!({"type":"advance_phase","roomCode":"MERGE","playerId":"host"}))
            .await;
        // The step at v, then its ready reset as a change of its own at v + 1.
        let stepped = loop {
            let m = tabs[0].client.recv().await;
            tabs[0].view.merge(&m);
            if m["type"] == "phase_changed" || m["type"] == "status_changed" {
                break m["version"].as_u64().expect("version");
            }
        };
        for tab in tabs.iter_mut() {
            tab.catch_up(stepped + 1).await;
        }
        all_show_the_server(&room, &mut tabs, &format!("advance {step}")).await;
        assert!(
            tabs[1].view.ready.values().all(|r| !*r),
            "reset shown after advance {step}"
        );
    }
}

#[tokio::test]
async fn a_phase_timer_and_a_forced_phase_also_leave_every_tab_right() {
    let s = spawn_server().await;
    let room = s.create_room("TIMED", &PLAYERS);
    let mut tabs = tabs(&s, "TIMED").await;
    room.apply(
        Origin::Server,
        serde_json::from_value::<Action>(
            json!({"kind":"force","status":"creating","phase":"big_idea","startTime":null}),
        )
        .expect("force"),
    )
    .await
    .expect("creating");
    all_show_the_server(&room, &mut tabs, "forced into creating").await;
    everyone_ready(&room, "TIMED", &mut tabs).await;
    // A one-second timer on a phase that started earlier: it fires at once.
    let before = room
        .apply(
            Origin::Server,
            Action::UpdateSettings {
                patch: karaoke_realtime::room::SettingsPatch {
                    phase_duration_seconds: Some(1),
                    auto_advance: Some(true),
                    ..Default::default()
                },
            },
        )
        .await
        .expect("timer on")
        .version;
    loop {
        let m = tabs[0].client.recv().await;
        tabs[0].view.merge(&m);
        if m["type"] == "phase_changed" {
            assert_eq!(m["version"], before + 1, "{m}");
            assert_eq!(m["currentPhase"], "visual");
            break;
        }
    }
    // The reset follows as its own change, and every tab shows it.
    tabs[0].catch_up(before + 2).await;
    assert!(
        tabs[0].view.ready.values().all(|r| !*r),
        "{:?}",
        tabs[0].view
    );
    all_show_the_server(&room, &mut tabs, "the phase timer").await;
}
