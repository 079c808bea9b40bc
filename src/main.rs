//! `karaoke-realtime`: reads the command line and configuration, starts the server,
//! stops it on a signal. `--help` lists every flag.

use clap::Parser;
use karaoke_realtime::cli::{self, Cli, Command};
use karaoke_realtime::config::Config;
use karaoke_realtime::{server, telemetry};

fn main() -> std::process::ExitCode {
    match runtime() {
        Ok(runtime) => runtime.block_on(serve()),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// On one core, a current-thread runtime: tokio's work-stealing runtime with one
/// worker moves tasks past its 256-task local queue to a global queue it visits
/// only every ~200 µs, so with hundreds of sockets woken at once some writers waited
/// 75+ ms while others were served in 2 (docs/benchmarks.md, "The closed loop's
/// tail"). With more cores, one worker per core as usual.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

async fn serve() -> std::process::ExitCode {
    // Usage errors exit 2 naming the argument; --help and --version exit 0.
    let cli = Cli::parse();
    let command = cli.requested();
    match command {
        Command::Completions { shell } => {
            cli::completions(shell);
            return std::process::ExitCode::SUCCESS;
        }
        Command::Health { timeout_ms } => {
            return std::process::ExitCode::from(cli::health(&cli.settings, timeout_ms).await);
        }
        _ => {}
    }
    let config = match cli.settings.config() {
        Ok(config) => config,
        Err(errors) => {
            for line in errors {
                eprintln!("config error: {line}");
            }
            return std::process::ExitCode::from(2);
        }
    };
    if command == Command::Migrate {
        return migrate(&config).await;
    }
    if command != Command::Serve {
        return std::process::ExitCode::from(cli::run(command, &config));
    }
    // Export first: the logger's subscriber carries its layer. A collector that
    // cannot be set up stops start-up like any bad setting: one line, exit 2.
    let (otel, tracer) = match config.otel.as_ref().map(telemetry::otel::init) {
        None => (None, None),
        Some(Ok((otel, tracer))) => (Some(otel), tracer),
        Some(Err(line)) => {
            eprintln!("config error: {line}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::log::init_with(config.log_level, tracer);
    if config.secret_is_random {
        tracing::warn!(
            "REALTIME_SHARED_SECRET is not set: using a random secret for this process only; \
             tokens minted elsewhere will not verify and a cluster will not work"
        );
    }
    // Install the signal handlers before the port opens: a SIGTERM that arrives
    // right after `realtime_server_listening` must still shut down gracefully
    // instead of killing the process with the default action.
    let signals = Signals::install();
    let grace = config.shutdown_grace;
    let handle = match server::start(config).await {
        Ok(handle) => handle,
        Err(e) => {
            tracing::error!(error = %e, "start_failed");
            if let Some(otel) = otel {
                otel.shutdown(OTEL_FLUSH.min(grace)).await;
            }
            telemetry::log::flush(LOG_FLUSH);
            return std::process::ExitCode::from(1);
        }
    };
    signals.wait().await;
    handle.shutdown().await;
    // The shutdown span has ended by now: this sends it, with everything queued.
    if let Some(otel) = otel {
        otel.shutdown(OTEL_FLUSH.min(grace.max(std::time::Duration::from_millis(500))))
            .await;
    }
    telemetry::log::flush(LOG_FLUSH);
    std::process::ExitCode::SUCCESS
}

/// How long the last spans and metrics may take to reach the collector at exit.
const OTEL_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the last log lines may take to reach stdout at exit.
const LOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// `karaoke-realtime migrate`: applies the migrations and exits.
async fn migrate(config: &Config) -> std::process::ExitCode {
    use karaoke_realtime::store::Store;
    let result = async {
        match Store::connect(&config.database, config.persist_statement_timeout).await? {
            Some(store) => store.migrate().await.map(|()| true),
            None => Ok(false),
        }
    }
    .await;
    match result {
        Ok(true) => {
            println!("migrations applied ({:?})", config.database);
            std::process::ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("DATABASE_URL is memory: nothing to migrate");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("migrate failed: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// SIGTERM and SIGINT, registered up front and awaited later.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn wait(self) {
        match (self.term, self.int) {
            (Some(mut term), Some(mut int)) => {
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
}
