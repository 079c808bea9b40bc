//! The command lines of `karaoke-realtime` and `karaoke-admin`, run as processes:
//! help and version on every subcommand, flags mirroring the environment (a flag
//! wins), errors that name the bad argument, completions, and `health`.

mod binproc;

use binproc::Proc;
use std::process::Output;
use std::time::Duration;
use tokio::process::Command;

const SERVER: &str = binproc::BIN;
const ADMIN: &str = env!("CARGO_BIN_EXE_karaoke-admin");
const WAIT: Duration = Duration::from_secs(20);

/// Runs `program args` with exactly `vars` as its environment.
async fn run(program: &str, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(vars.iter().copied())
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true);
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} exits within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "exit: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

const SERVER_SUBCOMMANDS: &[&[&str]] = &[
    &[],
    &["serve"],
    &["token"],
    &["token", "mint"],
    &["token", "check"],
    &["config"],
    &["config", "check"],
    &["migrate"],
    &["health"],
    &["completions"],
];

const ADMIN_SUBCOMMANDS: &[&str] = &[
    "create-room",
    "list-rooms",
    "get-room",
    "add-player",
    "remove-player",
    "mint-token",
    "check-token",
    "force-phase",
    "update-settings",
    "publish-brief",
    "publish-content",
    "close-room",
    "watch",
    "completions",
];

#[tokio::test]
async fn server_help_lists_every_setting_flag_with_its_variable() {
    let out = run(SERVER, &["--help"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let help = text(&out.stdout);
    for s in karaoke_realtime::config::SETTINGS {
        assert!(
            help.contains(&format!("--{} <VALUE>", s.flag)),
            "{}\n{help}",
            s.flag
        );
        assert!(
            help.contains(&format!("[env: {}", s.env)),
            "{}\n{help}",
            s.env
        );
    }
    for command in [
        "serve",
        "token",
        "config",
        "migrate",
        "health",
        "completions",
    ] {
        assert!(help.contains(command), "{command}\n{help}");
    }
}

#[tokio::test]
async fn help_never_shows_a_secret_from_the_environment() {
    let vars = [
        ("REALTIME_SHARED_SECRET", "secret-value-sixteen-plus"),
        ("ADMIN_TOKEN", "admin-token-sixteen-plus"),
        ("DATABASE_URL", "postgres://u:hunter2@db/x"),
        ("REALTIME_BROADCAST_SECRET", "broadcast-hook-secret"),
    ];
    let out = run(SERVER, &["--help"], &vars).await;
    let admin = run(ADMIN, &["--help"], &vars).await;
    for out in [out, admin] {
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        let all = show(&out);
        for (_, value) in vars {
            assert!(!all.contains(value), "{value} printed:\n{all}");
        }
    }
}

#[tokio::test]
async fn every_subcommand_has_help_and_version() {
    let version = env!("CARGO_PKG_VERSION");
    for words in SERVER_SUBCOMMANDS {
        for flag in ["--help", "--version"] {
            let args: Vec<&str> = words.iter().copied().chain([flag]).collect();
            let out = run(SERVER, &args, &[]).await;
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", show(&out));
            let stdout = text(&out.stdout);
            if flag == "--help" {
                assert!(
                    stdout.contains("Usage: karaoke-realtime"),
                    "{args:?}: {stdout}"
                );
            } else {
                assert!(stdout.contains(version), "{args:?}: {stdout}");
            }
        }
    }
    let out = run(ADMIN, &["--help"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    for command in ADMIN_SUBCOMMANDS {
        assert!(
            text(&out.stdout).contains(command),
            "{command}: {}",
            show(&out)
        );
        for flag in ["--help", "--version"] {
            let out = run(ADMIN, &[command, flag], &[]).await;
            assert_eq!(
                out.status.code(),
                Some(0),
                "{command} {flag}: {}",
                show(&out)
            );
            let stdout = text(&out.stdout);
            if flag == "--help" {
                assert!(
                    stdout.contains(&format!("Usage: karaoke-admin {command}")),
                    "{command}: {stdout}"
                );
                assert!(stdout.contains("--addr <URL>"), "{command}: {stdout}");
            } else {
                assert!(stdout.contains(version), "{command}: {stdout}");
            }
        }
    }
}

#[tokio::test]
async fn a_flag_wins_over_its_variable_and_both_feed_the_same_validation() {
    let secret = [("REALTIME_SHARED_SECRET", "a-secret-of-sixteen-bytes")];
    let from_env = run(
        SERVER,
        &["config", "check"],
        &[secret[0], ("PORT", "7001"), ("LOG_LEVEL", "warn")],
    )
    .await;
    assert_eq!(from_env.status.code(), Some(0), "{}", show(&from_env));
    assert!(
        text(&from_env.stdout).contains("    port: 7001,"),
        "{}",
        show(&from_env)
    );
    // The flag may stand before or after the subcommand.
    for args in [
        &["config", "check", "--port", "7002"][..],
        &["--port", "7002", "config", "check"][..],
    ] {
        let out = run(
            SERVER,
            args,
            &[secret[0], ("PORT", "7001"), ("LOG_LEVEL", "warn")],
        )
        .await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", show(&out));
        let stdout = text(&out.stdout);
        assert!(stdout.contains("    port: 7002,"), "{args:?}: {stdout}");
        // The other setting still comes from the environment.
        assert!(stdout.contains("log_level: Warn"), "{args:?}: {stdout}");
    }
    // A bad value from the environment is named by its variable, as before.
    let out = run(SERVER, &["config", "check"], &[("PORT", "eighty")]).await;
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert_eq!(
        text(&out.stderr),
        "config error: PORT: expected a whole number from 0 to 65535, got \"eighty\"\n"
    );
}

#[tokio::test]
async fn bad_arguments_exit_2_naming_the_argument() {
    // A setting's flag: the same validation, named by flag and variable.
    let out = run(SERVER, &["--port", "eighty"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        text(&out.stderr)
            .contains("config error: --port (PORT): expected a whole number from 0 to 65535"),
        "{}",
        show(&out)
    );
    assert!(out.stdout.is_empty(), "nothing served: {}", show(&out));
    let cases: &[(&str, &[&str], &str)] = &[
        (SERVER, &["--no-such-flag"], "--no-such-flag"),
        (
            SERVER,
            &[
                "token", "mint", "--room", "AB", "--player", "p", "--ttl", "soon",
            ],
            "--ttl <SECONDS>",
        ),
        (SERVER, &["token", "mint", "--room", "AB"], "--player <ID>"),
        (SERVER, &["completions", "cmd"], "<SHELL>"),
        (SERVER, &["dance"], "'dance'"),
        (
            ADMIN,
            &["add-player", "ABC", "p", "Pia", "--seat", "x"],
            "--seat <N>",
        ),
        (ADMIN, &["force-phase", "ABC", "dancing"], "<STATUS>"),
        (
            ADMIN,
            &["update-settings", "ABC", "--auto-advance", "maybe"],
            "--auto-advance",
        ),
        (ADMIN, &["--cert", "c.pem", "list-rooms"], "--key"),
    ];
    for (program, args, named) in cases {
        let out = run(program, args, &[]).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        assert!(
            text(&out.stderr).contains(named),
            "{args:?} names {named}: {}",
            show(&out)
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", show(&out));
    }
}

#[tokio::test]
async fn admin_flags_win_over_their_variables() {
    // Two dead addresses: the error names the one given as a flag.
    let dead = dead_port().await;
    let flag_addr = format!("http://127.0.0.1:{dead}");
    let out = run(
        ADMIN,
        &["--addr", &flag_addr, "list-rooms"],
        &[("KARAOKE_ADMIN_ADDR", "http://127.0.0.1:9")],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(text(&out.stderr).contains(&flag_addr), "{}", show(&out));
    let out = run(
        ADMIN,
        &["list-rooms"],
        &[("KARAOKE_ADMIN_ADDR", &flag_addr)],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(text(&out.stderr).contains(&flag_addr), "{}", show(&out));
    // check-token: the secret from the flag wins over the variable's.
    let secret = "a-secret-of-sixteen-bytes";
    let minted = run(
        SERVER,
        &[
            "token", "mint", "--room", "ABC123", "--player", "p1", "--ttl", "600",
        ],
        &[("REALTIME_SHARED_SECRET", secret)],
    )
    .await;
    assert_eq!(minted.status.code(), Some(0), "{}", show(&minted));
    let token = text(&minted.stdout).trim().to_string();
    let out = run(
        ADMIN,
        &["check-token", &token, "--secret", secret],
        &[("REALTIME_SHARED_SECRET", "another-secret-of-16-bytes")],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        text(&out.stdout).contains("\"valid\":true"),
        "{}",
        show(&out)
    );
    let out = run(
        ADMIN,
        &["check-token", &token],
        &[("REALTIME_SHARED_SECRET", "another-secret-of-16-bytes")],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        for program in [SERVER, ADMIN] {
            let out = run(program, &["completions", shell], &[]).await;
            assert_eq!(
                out.status.code(),
                Some(0),
                "{program} {shell}: {}",
                show(&out)
            );
            let script = text(&out.stdout);
            let name = if program == SERVER {
                "karaoke-realtime"
            } else {
                "karaoke-admin"
            };
            assert!(script.contains(name), "{program} {shell}: {script}");
            assert!(script.len() > 500, "{program} {shell}: {script}");
        }
    }
    let out = run(SERVER, &["completions", "bash"], &[]).await;
    assert!(text(&out.stdout).contains("--shutdown-grace-ms"));
}

/// A port nothing listens on (bound, then released).
async fn dead_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a port");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    port
}

#[tokio::test]
async fn health_is_0_against_a_running_server_and_1_against_a_dead_port() {
    let mut server = Proc::spawn(&[
        ("PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("BIND_ADDR", "127.0.0.1"),
        ("DATABASE_URL", "memory:"),
        ("REALTIME_SHARED_SECRET", "a-secret-of-sixteen-bytes"),
    ]);
    let port = server.listening_port().await.to_string();
    // PORT from the environment, as the container's HEALTHCHECK runs it.
    let out = run(SERVER, &["health"], &[("PORT", &port)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(text(&out.stdout), "ok\n");
    // The flag works too, and wins over the variable.
    let dead = dead_port().await.to_string();
    let out = run(SERVER, &["health", "--port", &port], &[("PORT", &dead)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    server.kill().await;

    let out = run(
        SERVER,
        &["health", "--timeout-ms", "2000"],
        &[("PORT", &dead)],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains(&format!("127.0.0.1:{dead}")),
        "{}",
        show(&out)
    );
    // The server's port, now closed.
    let out = run(SERVER, &["health"], &[("PORT", &port)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    // A bad setting is unhealthy (1), never Docker's reserved 2.
    let out = run(SERVER, &["health"], &[("PORT", "eighty")]).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
}

#[tokio::test]
async fn health_gives_up_on_a_port_that_never_answers() {
    // Accepts the connection but never answers: the timeout ends it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a port");
    let port = listener
        .local_addr()
        .expect("local addr")
        .port()
        .to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let started = std::time::Instant::now();
    let out = run(
        SERVER,
        &["health", "--timeout-ms", "300"],
        &[("PORT", &port)],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("did not answer"),
        "{}",
        show(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    hold.abort();
}

#[test]
fn the_configuration_page_lists_every_flag_with_its_variable() {
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .expect("read docs/configuration.md");
    for s in karaoke_realtime::config::SETTINGS {
        let row = format!("| `{}` | `--{}` |", s.env, s.flag);
        assert!(
            page.contains(&row),
            "docs/configuration.md lacks the row {row}"
        );
    }
}

#[tokio::test]
async fn the_admin_cli_gives_up_on_an_admin_plane_that_never_answers() {
    // Accepts TCP, never speaks HTTP/2: the call's timeout ends the command (`run`
    // fails the test if it has not exited within WAIT).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a port");
    let addr = format!(
        "http://127.0.0.1:{}",
        listener.local_addr().expect("local addr").port()
    );
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let out = run(
        ADMIN,
        &["--addr", &addr, "--timeout", "1", "list-rooms"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("Timeout expired"),
        "{}",
        show(&out)
    );
    hold.abort();
}
