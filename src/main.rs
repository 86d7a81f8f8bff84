//! `tern`: the binary. Parses flags and the TOML file, opens storage, starts
//! the engine and the HTTP gateway, and stops them on SIGTERM/SIGINT.

mod config;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Shard housekeeping: mimalloc keeps pages freed on a thread until that
/// thread collects; a connect storm's handshake buffers would otherwise stay
/// resident.
fn return_freed_pages() {
    // SAFETY: mi_collect only works on the calling thread's heap and the
    // allocator's own free lists.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

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

/// No transparent huge pages for this process. Tern's memory is mostly
/// small per-connection records spread over the heap; backed by 2 MiB pages
/// it costs far more RSS than it holds: idle RSS growth measured 569-772 B
/// per connection with huge pages, 400-412 B without, and no throughput
/// difference (docs/BENCHMARKS.md, session 18). RocksDB's guidance is the
/// same. mimalloc is built not to ask for them (`no_thp`); this also covers
/// hosts whose THP mode is `always`. Best effort: an old kernel without
/// the prctl only costs memory.
fn opt_out_of_huge_pages() {
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes integer arguments only and
    // changes nothing but this process's huge-page policy.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

fn main() -> ExitCode {
    opt_out_of_huge_pages();
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
    // Before anything is opened: a bad PEM file stops the start at once.
    let tls = tls_configs(cfg.tls.as_ref())?;

    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    // The token key is written after the database is first created (below),
    // so a data dir holding one served before: its database missing is lost
    // data, never a reason to start with an empty one.
    let db_path = cfg.data_dir.join("db");
    if cfg.data_dir.join(config::TOKEN_KEY_FILE).exists()
        && tern_storage::Storage::is_absent(&db_path)
    {
        anyhow::bail!(
            "the database is missing: {} holds {} (it served before) but {} holds no database; \
             restore the database, or remove {} to start with an empty one",
            cfg.data_dir.display(),
            config::TOKEN_KEY_FILE,
            db_path.display(),
            config::TOKEN_KEY_FILE
        );
    }
    let storage = tern_storage::Storage::open(tern_storage::StorageOptions {
        path: db_path,
        durability: cfg.durability,
        dedup_window_ms: cfg.dedup_window_s * 1000,
        retention_ms: cfg.retention_days * 24 * 3600 * 1000,
        sync_interval: std::time::Duration::from_micros(cfg.sync_interval_us),
    })
    .with_context(|| {
        format!(
            "cannot open the database in {}",
            cfg.data_dir.join("db").display()
        )
    })?;
    let api_key = config::api_key(&cfg)?;
    let token_key = config::token_key(&cfg.data_dir)?;

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
    ecfg.housekeeping = Some(return_freed_pages);
    let events_rx = if cfg.webhook.is_some() {
        let (tx, rx) = crossbeam_channel::bounded(tern_engine::hooks::EVENT_QUEUE_MAX);
        ecfg.events = Some(tx);
        Some(rx)
    } else {
        None
    };
    ecfg.large_group_threshold = cfg.large_group_threshold;
    ecfg.read_coalesce = std::time::Duration::from_micros(cfg.read_coalesce_us);
    ecfg.send_rate_per_s = cfg.send_rate_per_s;
    ecfg.send_burst = cfg.send_burst;
    ecfg.shards = cfg.shards;
    ecfg.frame_bytes_max = cfg.max_frame_bytes;
    ecfg.heartbeat_ms = cfg.heartbeat_ms;
    ecfg.ack_timeout_ms = cfg.ack_timeout_ms;
    ecfg.dedup_window_ms = cfg.dedup_window_s * 1000;
    ecfg.pin_cores = cfg.pin_cores;
    ecfg.max_conns = cfg.max_conns;
    ecfg.max_conns_per_ip = cfg.max_conns_per_ip;
    // The WSS relay's connections reach the engine from one local address;
    // the relay limits each client by its real one instead.
    if tls.wss.is_some() {
        ecfg.per_ip_exempt = Some(tern_tls::loopback_if_unspecified(cfg.ws_addr).ip());
    }
    let engine = tern_engine::Engine::start(ecfg, storage).context("cannot start the engine")?;

    let gateway = tern_gateway_http::start(
        tern_gateway_http::GatewayConfig {
            addr: cfg.http_addr,
            api_key,
            body_bytes_max: cfg.http_body_bytes_max,
            webhook: cfg.webhook.clone(),
            events: events_rx,
            tls: tls.https.clone(),
            demo: cfg.demo,
            ws_port: engine.ws_addr().port(),
        },
        engine.handle(),
        runtime,
    )
    .context("cannot start the HTTP gateway")?;
    let relay = match &tls.wss {
        Some((addr, server, connections_max)) => Some(
            tern_tls::WsRelay::start(
                *addr,
                engine.ws_addr(),
                server.clone(),
                *connections_max,
                Some(per_ip_admission(cfg.max_conns_per_ip)),
            )
            .context("cannot start the WSS relay")?,
        ),
        None => None,
    };

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        shards = engine.n_shards(),
        driver = engine.driver(),
        ws = %engine.ws_addr(),
        http = %gateway.local_addr(),
        wss = ?relay.as_ref().map(|r| r.local_addr()),
        https = ?gateway.tls_local_addr(),
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
    // After the engine: its 1001 close frames still flow through the relay.
    if let Some(r) = relay {
        r.shutdown();
    }
    tracing::info!("stopped");
    Ok(())
}

/// The TLS listeners' configs, built from the PEM files once per listener
/// (each has its own ALPN list).
#[derive(Default)]
struct TlsConfigs {
    https: Option<tern_gateway_http::HttpsConfig>,
    wss: Option<(
        std::net::SocketAddr,
        std::sync::Arc<tern_tls::rustls::ServerConfig>,
        usize,
    )>,
}

fn tls_configs(t: Option<&config::TlsSettings>) -> anyhow::Result<TlsConfigs> {
    let Some(t) = t else {
        return Ok(TlsConfigs::default());
    };
    let mut out = TlsConfigs::default();
    if let Some(addr) = t.http_addr {
        out.https = Some(tern_gateway_http::HttpsConfig {
            addr,
            server: tern_tls::server_config(&t.cert, &t.key, tern_tls::Alpn::Http2AndHttp1)?,
            connections_max: t.connections_max,
        });
    }
    if let Some(addr) = t.ws_addr {
        let server = tern_tls::server_config(&t.cert, &t.key, tern_tls::Alpn::Http1)?;
        out.wss = Some((addr, server, t.connections_max));
    }
    Ok(out)
}

/// The WSS relay's admission: at most `max_per_ip` live connections from
/// one client address (the engine's own count, by source address, would
/// see every relayed client as the relay). The relay's `connections_max`
/// bounds the total.
fn per_ip_admission(max_per_ip: usize) -> tern_tls::Admit {
    let limiter = tern_engine::conn_limit::ConnLimiter::new(usize::MAX, max_per_ip, None);
    std::sync::Arc::new(move |ip| {
        limiter
            .try_acquire(ip)
            .ok()
            .map(|permit| Box::new(permit) as Box<dyn Send + Sync>)
    })
}
