//! `tern serve` settings: flags override the TOML file (`--config`), which
//! overrides the defaults of PROTOCOL.md "Running". Every key of the TOML
//! file has the flag's name with `_` for `-`.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use tern_storage::Durability;

/// Flags of `tern serve`.
#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of the keys below.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the database, API key and token key live [default: ./data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// WebSocket listen address [default: 0.0.0.0:7700].
    #[arg(long, value_name = "ADDR")]
    pub ws_addr: Option<SocketAddr>,
    /// HTTP API listen address [default: 0.0.0.0:7701].
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// API key for /v1 routes [default: generated once, kept in the data dir].
    #[arg(long, env = "TERN_API_KEY", value_name = "KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Number of shards (threads) [default: one per core].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// fsync: WAL synced before every ack; os: written, not synced; none: no WAL [default: fsync].
    #[arg(long, value_name = "MODE")]
    pub durability: Option<String>,
    /// With fsync: least µs between the starts of two WAL syncs; under load a commit waits so more messages share one sync [default: 1000].
    #[arg(long, value_name = "US")]
    pub sync_interval_us: Option<u64>,
    /// Least µs between two polls of a shard's sockets while it is woken faster than that; under load one pass then reads many sockets [default: 1000].
    #[arg(long, value_name = "US")]
    pub read_coalesce_us: Option<u64>,
    /// Largest client frame in bytes; larger closes with 1009 [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Heartbeat announced in auth_ok; silence for twice this closes [default: 30000].
    #[arg(long, value_name = "MS")]
    pub heartbeat_ms: Option<u64>,
    /// Unacked pushes are pushed again after this [default: 10000].
    #[arg(long, value_name = "MS")]
    pub ack_timeout_ms: Option<u64>,
    /// Window for deduplicating (sender, cmid) [default: 86400].
    #[arg(long, value_name = "S")]
    pub dedup_window_s: Option<u64>,
    /// Messages older than this are deleted [default: 30].
    #[arg(long, value_name = "DAYS")]
    pub retention_days: Option<u64>,
    /// Groups above this many members get `notice` frames for inactive devices [default: 500].
    #[arg(long, value_name = "N")]
    pub large_group_threshold: Option<usize>,
    /// Sends per second per connection before `rate_limited` [default: 50].
    #[arg(long, value_name = "N")]
    pub send_rate_per_s: Option<u32>,
    /// Burst of sends per connection above the rate [default: 200].
    #[arg(long, value_name = "N")]
    pub send_burst: Option<u32>,
    /// WebSocket connections at once, handshakes included; beyond it new ones get 503 [default: 1000000].
    #[arg(long, value_name = "N")]
    pub max_conns: Option<usize>,
    /// WebSocket connections at once from one source IP address [default: 20000].
    #[arg(long, value_name = "N")]
    pub max_conns_per_ip: Option<usize>,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Log filter (tracing EnvFilter syntax; RUST_LOG wins) [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// TLS certificate chain, PEM, leaf first (TOML: `[tls] cert`).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key, PEM: PKCS#8, RSA or EC (TOML: `[tls] key`).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// WSS listen address, relayed to the WebSocket listener (TOML: `[tls] ws_addr`) [default: none].
    #[arg(long, value_name = "ADDR")]
    pub tls_ws_addr: Option<SocketAddr>,
    /// HTTPS listen address for the HTTP API (TOML: `[tls] http_addr`) [default: none].
    #[arg(long, value_name = "ADDR")]
    pub tls_http_addr: Option<SocketAddr>,
    /// Demo mode: the web client at /app/ may create users and mint tokens
    /// without the API key (POST /demo/session). Never on a public server.
    #[arg(long)]
    pub demo: bool,
}

/// Keys of the TOML file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    ws_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    api_key: Option<String>,
    shards: Option<usize>,
    durability: Option<String>,
    sync_interval_us: Option<u64>,
    read_coalesce_us: Option<u64>,
    max_frame_bytes: Option<usize>,
    heartbeat_ms: Option<u64>,
    ack_timeout_ms: Option<u64>,
    dedup_window_s: Option<u64>,
    retention_days: Option<u64>,
    pin_cores: Option<bool>,
    http_body_bytes_max: Option<usize>,
    large_group_threshold: Option<usize>,
    send_rate_per_s: Option<u32>,
    send_burst: Option<u32>,
    max_conns: Option<usize>,
    max_conns_per_ip: Option<usize>,
    log: Option<String>,
    demo: Option<bool>,
    webhook: Option<WebhookFile>,
    before_send: Option<BeforeSendFile>,
    tls: Option<TlsFile>,
}

/// `[tls]`: certificate and key, and which TLS listeners to open. Each
/// listener is in addition to its plain one (docs/DEPLOY.md "TLS").
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ws_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    connections_max: Option<usize>,
}

/// Merged `[tls]` settings: present only when at least one TLS listener is
/// configured, and then with both PEM paths.
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ws_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub connections_max: usize,
}

/// `[webhook]`: after-the-fact events (message.sent, user.online,
/// user.offline, group.changed), delivered in signed batches.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct WebhookFile {
    url: String,
    secret: String,
    events: Option<Vec<String>>,
    batch_max: Option<usize>,
    flush_ms: Option<u64>,
    queue_max: Option<usize>,
    retries: Option<u32>,
    timeout_ms: Option<u64>,
}

/// `[before_send]`: a hook that may veto a message before it is stored.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct BeforeSendFile {
    url: String,
    secret: String,
    timeout_ms: Option<u64>,
    fail_open: Option<bool>,
}

/// The merged settings.
pub struct Settings {
    pub data_dir: PathBuf,
    pub ws_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub api_key: Option<String>,
    pub shards: usize,
    pub durability: Durability,
    pub sync_interval_us: u64,
    pub read_coalesce_us: u64,
    pub max_frame_bytes: usize,
    pub heartbeat_ms: u64,
    pub ack_timeout_ms: u64,
    pub dedup_window_s: u64,
    pub retention_days: u64,
    pub pin_cores: bool,
    pub http_body_bytes_max: usize,
    pub large_group_threshold: usize,
    pub send_rate_per_s: u32,
    pub send_burst: u32,
    pub max_conns: usize,
    pub max_conns_per_ip: usize,
    pub log: String,
    pub demo: bool,
    pub webhook: Option<tern_gateway_http::WebhookConfig>,
    pub before_send: Option<tern_gateway_http::BeforeSendConfig>,
    pub tls: Option<TlsSettings>,
}

/// Bounds on tunables, so a typo cannot make the server unusable.
const FRAME_BYTES_MIN: usize = 1024;
const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
const SHARDS_MAX: usize = 1024;
/// Default `--sync-interval-us`: measured in docs/BENCHMARKS.md
/// ("Group commit interval").
const SYNC_INTERVAL_US_DEFAULT: u64 = 1000;

/// Merge the TLS flags over `[tls]`. Half a configuration (a listener
/// without cert and key, or cert and key without a listener) is an error
/// rather than a silently plain server.
fn tls_settings(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ws_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    f: TlsFile,
) -> anyhow::Result<Option<TlsSettings>> {
    let cert = cert.or(f.cert);
    let key = key.or(f.key);
    let ws_addr = ws_addr.or(f.ws_addr);
    let http_addr = http_addr.or(f.http_addr);
    let connections_max = f
        .connections_max
        .unwrap_or(tern_tls::CONNECTIONS_MAX_DEFAULT);
    if !(1..=tern_tls::CONNECTIONS_MAX_LIMIT).contains(&connections_max) {
        bail!(
            "tls connections_max must be 1..={}",
            tern_tls::CONNECTIONS_MAX_LIMIT
        );
    }
    let listeners = ws_addr.is_some() || http_addr.is_some();
    match (cert, key) {
        (None, None) if !listeners => Ok(None),
        (Some(cert), Some(key)) if listeners => Ok(Some(TlsSettings {
            cert,
            key,
            ws_addr,
            http_addr,
            connections_max,
        })),
        (Some(_), Some(_)) => bail!(
            "a TLS certificate and key are given but no TLS listener: set --tls-ws-addr and/or --tls-http-addr ([tls] ws_addr / http_addr)"
        ),
        _ => bail!(
            "TLS needs both --tls-cert and --tls-key ([tls] cert and key) together with --tls-ws-addr and/or --tls-http-addr"
        ),
    }
}

fn parse_durability(s: &str) -> anyhow::Result<Durability> {
    Ok(match s {
        "fsync" => Durability::Fsync,
        "os" => Durability::Os,
        "none" => Durability::None,
        other => bail!("durability must be fsync, os or none, not {other:?}"),
    })
}

impl Settings {
    pub fn load(a: ServeArgs) -> anyhow::Result<Settings> {
        let f: FileConfig = match &a.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("bad config file {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let s = Settings {
            data_dir: a
                .data_dir
                .or(f.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            ws_addr: a
                .ws_addr
                .or(f.ws_addr)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 7700))),
            http_addr: a
                .http_addr
                .or(f.http_addr)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 7701))),
            api_key: a.api_key.or(f.api_key),
            shards: a.shards.or(f.shards).unwrap_or(cores),
            durability: parse_durability(
                a.durability
                    .as_deref()
                    .or(f.durability.as_deref())
                    .unwrap_or("fsync"),
            )?,
            sync_interval_us: a
                .sync_interval_us
                .or(f.sync_interval_us)
                .unwrap_or(SYNC_INTERVAL_US_DEFAULT),
            read_coalesce_us: a
                .read_coalesce_us
                .or(f.read_coalesce_us)
                .unwrap_or(tern_engine::config::READ_COALESCE_DEFAULT.as_micros() as u64),
            max_frame_bytes: a.max_frame_bytes.or(f.max_frame_bytes).unwrap_or(64 * 1024),
            heartbeat_ms: a.heartbeat_ms.or(f.heartbeat_ms).unwrap_or(30_000),
            ack_timeout_ms: a.ack_timeout_ms.or(f.ack_timeout_ms).unwrap_or(10_000),
            dedup_window_s: a.dedup_window_s.or(f.dedup_window_s).unwrap_or(24 * 3600),
            retention_days: a.retention_days.or(f.retention_days).unwrap_or(30),
            pin_cores: !a.no_pin && f.pin_cores.unwrap_or(true),
            http_body_bytes_max: f.http_body_bytes_max.unwrap_or(1024 * 1024),
            large_group_threshold: a
                .large_group_threshold
                .or(f.large_group_threshold)
                .unwrap_or(500),
            send_rate_per_s: a.send_rate_per_s.or(f.send_rate_per_s).unwrap_or(50),
            send_burst: a.send_burst.or(f.send_burst).unwrap_or(200),
            max_conns: a
                .max_conns
                .or(f.max_conns)
                .unwrap_or(tern_engine::config::MAX_CONNS_DEFAULT),
            max_conns_per_ip: a
                .max_conns_per_ip
                .or(f.max_conns_per_ip)
                .unwrap_or(tern_engine::config::MAX_CONNS_PER_IP_DEFAULT),
            log: a.log.or(f.log).unwrap_or_else(|| "info".to_owned()),
            demo: a.demo || f.demo.unwrap_or(false),
            webhook: f.webhook.map(|w| {
                let mut c = tern_gateway_http::WebhookConfig::new(w.url, w.secret);
                c.events = w.events.unwrap_or_default();
                c.batch_max = w.batch_max.unwrap_or(c.batch_max);
                c.flush_ms = w.flush_ms.unwrap_or(c.flush_ms);
                c.queue_max = w.queue_max.unwrap_or(c.queue_max);
                c.retries = w.retries.unwrap_or(c.retries);
                c.timeout_ms = w.timeout_ms.unwrap_or(c.timeout_ms);
                c
            }),
            before_send: f.before_send.map(|b| {
                let mut c = tern_gateway_http::BeforeSendConfig::new(b.url, b.secret);
                c.timeout_ms = b.timeout_ms.unwrap_or(c.timeout_ms);
                c.fail_open = b.fail_open.unwrap_or(false);
                c
            }),
            tls: tls_settings(
                a.tls_cert,
                a.tls_key,
                a.tls_ws_addr,
                a.tls_http_addr,
                f.tls.unwrap_or_default(),
            )?,
        };
        if s.shards == 0 || s.shards > SHARDS_MAX {
            bail!("shards must be 1..={SHARDS_MAX}");
        }
        if !(FRAME_BYTES_MIN..=FRAME_BYTES_MAX).contains(&s.max_frame_bytes) {
            bail!("max_frame_bytes must be {FRAME_BYTES_MIN}..={FRAME_BYTES_MAX}");
        }
        let sync_max = tern_storage::SYNC_INTERVAL_MAX.as_micros();
        if u128::from(s.sync_interval_us) > sync_max {
            bail!("sync_interval_us must be 0..={sync_max}");
        }
        let coalesce_max = tern_engine::config::READ_COALESCE_MAX.as_micros();
        if u128::from(s.read_coalesce_us) > coalesce_max {
            bail!("read_coalesce_us must be 0..={coalesce_max}");
        }
        if s.send_rate_per_s == 0 || s.send_burst == 0 {
            bail!("send_rate_per_s and send_burst must be at least 1");
        }
        if s.max_conns == 0 || s.max_conns_per_ip == 0 {
            bail!("max_conns and max_conns_per_ip must be at least 1");
        }
        if s.heartbeat_ms < 100 || s.ack_timeout_ms < 100 {
            bail!("heartbeat_ms and ack_timeout_ms must be at least 100");
        }
        if let Some(k) = &s.api_key {
            if k.len() < 8 || k.len() > 256 || !k.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("the API key must be 8-256 printable ASCII characters");
            }
        }
        Ok(s)
    }
}

/// Write a new secret file readable by the owner only; never overwrite.
fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// The API key: given, or kept in `<data>/api_key`, or generated now (and
/// printed this once).
pub fn api_key(s: &Settings) -> anyhow::Result<String> {
    if let Some(k) = &s.api_key {
        return Ok(k.clone());
    }
    let path = s.data_dir.join("api_key");
    if path.exists() {
        let k = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(k.trim().to_owned());
    }
    use rand::Rng;
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill(&mut bytes);
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_secret(&path, key.as_bytes())?;
    println!("generated API key (kept in {}): {key}", path.display());
    Ok(key)
}

/// File name of the token signing key in the data dir.
pub const TOKEN_KEY_FILE: &str = "token.key";

/// The token signing key, kept in `<data>/token.key`.
pub fn token_key(data_dir: &Path) -> anyhow::Result<tern_engine::token::TokenKey> {
    let path = data_dir.join(TOKEN_KEY_FILE);
    if path.exists() {
        let b = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let arr: [u8; 32] = b
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} is not 32 bytes", path.display()))?;
        return Ok(tern_engine::token::TokenKey::from_bytes(arr));
    }
    let k = tern_engine::token::TokenKey::generate().context("cannot generate the token key")?;
    write_secret(&path, k.as_bytes())?;
    Ok(k)
}
