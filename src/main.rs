//! `tern`: the binary. Parses flags and the TOML file, opens storage, starts
//! the engine and the HTTP gateway, and stops them on SIGTERM/SIGINT.

mod config;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Self-hosted instant-messaging push engine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (WebSocket engine + business HTTP API).
    Serve(Box<config::ServeArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(args) => match serve(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tern: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Block SIGTERM and SIGINT in every thread (threads inherit the mask), so
/// the main thread alone receives them with `sigwait`.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-mask calls on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_stop_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is a valid, initialised signal set.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
    sig
}

fn serve(args: config::ServeArgs) -> anyhow::Result<()> {
    let cfg = config::Settings::load(args)?;
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log)),
        )
        .init();
    let signals = block_stop_signals();

    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let api_key = config::api_key(&cfg)?;
    let token_key = config::token_key(&cfg.data_dir)?;

    let storage = tern_storage::Storage::open(tern_storage::StorageOptions {
        path: cfg.data_dir.join("db"),
        durability: cfg.durability,
        dedup_window_ms: cfg.dedup_window_s * 1000,
        retention_ms: cfg.retention_days * 24 * 3600 * 1000,
    })
    .with_context(|| {
        format!(
            "cannot open the database in {}",
            cfg.data_dir.join("db").display()
        )
    })?;

    // The gateway's runtime comes first: the before-send hook lives on it and
    // the engine needs the hook at start.
    let runtime = tern_gateway_http::Runtime::new().context("cannot start the HTTP runtime")?;
    let mut ecfg = tern_engine::EngineConfig::new(cfg.ws_addr, token_key);
    if let Some(bs) = cfg.before_send.clone() {
        ecfg.before_send = Some(
            runtime
                .before_send_hook(bs)
                .context("bad [before_send] config")?,
        );
    }
    let events_rx = if cfg.webhook.is_some() {
        let (tx, rx) = crossbeam_channel::bounded(tern_engine::hooks::EVENT_QUEUE_MAX);
        ecfg.events = Some(tx);
        Some(rx)
    } else {
        None
    };
    ecfg.large_group_threshold = cfg.large_group_threshold;
    ecfg.send_rate_per_s = cfg.send_rate_per_s;
    ecfg.send_burst = cfg.send_burst;
    ecfg.shards = cfg.shards;
    ecfg.frame_bytes_max = cfg.max_frame_bytes;
    ecfg.heartbeat_ms = cfg.heartbeat_ms;
    ecfg.ack_timeout_ms = cfg.ack_timeout_ms;
    ecfg.dedup_window_ms = cfg.dedup_window_s * 1000;
    ecfg.pin_cores = cfg.pin_cores;
    let engine = tern_engine::Engine::start(ecfg, storage).context("cannot start the engine")?;

    let gateway = tern_gateway_http::start(
        tern_gateway_http::GatewayConfig {
            addr: cfg.http_addr,
            api_key,
            body_bytes_max: cfg.http_body_bytes_max,
            webhook: cfg.webhook.clone(),
            events: events_rx,
            demo: cfg.demo,
            ws_port: engine.ws_addr().port(),
        },
        engine.handle(),
        runtime,
    )
    .context("cannot start the HTTP gateway")?;

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        shards = engine.n_shards(),
        driver = engine.driver(),
        ws = %engine.ws_addr(),
        http = %gateway.local_addr(),
        data_dir = %cfg.data_dir.display(),
        durability = ?cfg.durability,
        "tern started"
    );

    let sig = wait_for_stop_signal(&signals);
    tracing::info!(
        signal = sig,
        "stopping: no new connections, finishing in-flight writes"
    );
    gateway.shutdown();
    engine.shutdown();
    tracing::info!("stopped");
    Ok(())
}
