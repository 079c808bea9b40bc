//! `karaoke-realtime`: reads configuration, starts the server, stops it on a signal.

use karaoke_realtime::cli::{self, Command};
use karaoke_realtime::config::Config;
use karaoke_realtime::{server, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("{e}\n{}", cli::USAGE);
            return std::process::ExitCode::from(2);
        }
    };
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(errors) => {
            for line in errors {
                eprintln!("config error: {line}");
            }
            return std::process::ExitCode::from(2);
        }
    };
    if command != Command::Serve {
        return std::process::ExitCode::from(cli::run(command, &config));
    }
    telemetry::log::init(config.log_level);
    if config.secret_is_random {
        tracing::warn!(
            "REALTIME_SHARED_SECRET is not set: using a random secret for this process only; \
             tokens minted elsewhere will not verify and a cluster will not work"
        );
    }
    let handle = match server::start(config).await {
        Ok(handle) => handle,
        Err(e) => {
            tracing::error!(error = %e, "bind_failed");
            return std::process::ExitCode::from(1);
        }
    };
    wait_for_signal().await;
    handle.shutdown().await;
    std::process::ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
