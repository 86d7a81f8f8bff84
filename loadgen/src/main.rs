//! `tern-loadgen`: the command line. Parses flags, refuses non-loopback
//! targets, does the HTTP setup, builds the plan, runs it, prints the
//! report (and writes it as JSON with `--json`).
//!
//! Exit status: 0 when every check passed, 1 when the run finished but a
//! check failed (the report says which), 2 when it could not run.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use tern_loadgen::plan::{ConnPlan, Expect, HttpPlan, Plan, Scenario};
use tern_loadgen::run::{self, RunOptions};
use tern_loadgen::{net, setup};
use tern_proto::Subprotocol;

/// Open files kept free beyond the connections (rings, eventfds, stdio,
/// setup sockets, the JSON file).
const FD_HEADROOM: u64 = 128;
/// Device id of every loadgen connection.
const DEVICE: &str = "lg";

/// Load generator for Tern.
/// Longest busy-poll before parking: spinning is for a dedicated core, and a
/// bound keeps a mistaken value from burning a shared one for long.
const SPIN_US_MAX: u64 = 100_000;

#[derive(Parser, Debug)]
#[command(name = "tern-loadgen", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Proto {
    /// `tern.v1.rkyv` (binary frames).
    Rkyv,
    /// `tern.v1.json` (text frames).
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum HttpTo {
    /// Every message to one group whose members are the receivers.
    Group,
    /// Each message to one receiver (`user:<id>`), round-robin.
    Users,
}

/// Flags of every scenario (accepted before or after the scenario name).
#[derive(Args, Debug)]
struct Common {
    /// WebSocket target.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:7700",
        value_name = "HOST:PORT"
    )]
    ws: String,
    /// HTTP API target.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:7701",
        value_name = "HOST:PORT"
    )]
    http: String,
    /// API key of the HTTP API.
    #[arg(long, global = true, env = "TERN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Subprotocol of every connection.
    #[arg(long, global = true, value_enum, default_value = "rkyv")]
    proto: Proto,
    /// Source addresses, round-robin: a range `127.0.0.1-127.0.0.50` or a
    /// comma-separated list (of addresses and ranges).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1-127.0.0.20",
        value_name = "SPEC"
    )]
    source_addrs: String,
    /// Connections opened per second, e.g. `2000/s`.
    #[arg(long, global = true, default_value = "2000/s", value_name = "N/s")]
    connect_rate: String,
    /// Bound for connect + handshake + auth of one connection.
    #[arg(long, global = true, default_value = "10s", value_name = "TIME")]
    connect_timeout: String,
    /// Length of the sending (or, for idle, holding) phase: `10s`, `500ms`, `2m`.
    #[arg(long, global = true, default_value = "10s", value_name = "TIME")]
    duration: String,
    /// Bound for acks and deliveries to arrive after the sending phase.
    #[arg(long, global = true, default_value = "10s", value_name = "TIME")]
    drain: String,
    /// Also write the report as JSON to FILE.
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Allow targets and sources that are not loopback addresses.
    #[arg(long, global = true)]
    allow_remote: bool,
    /// Executors (threads), one per core [default: every core].
    #[arg(long, global = true, value_name = "N")]
    cores: Option<usize>,
    /// Do not pin executors to cores.
    #[arg(long, global = true)]
    no_pin: bool,
    /// Busy-poll this long (µs) before an idle executor sleeps. On a core
    /// of its own this takes the kernel's wakeup (an IPI and a reschedule)
    /// out of every measured delivery; 0 sleeps at once.
    #[arg(long, global = true, default_value_t = 0, value_name = "US")]
    spin_us: u64,
    /// Prefix of the user and group ids loadgen creates (use distinct
    /// prefixes for runs that overlap in time).
    #[arg(long, global = true, default_value = "lg", value_name = "ID")]
    prefix: String,
    /// Connections used for setup through the HTTP API.
    #[arg(long, global = true, default_value_t = 4, value_name = "N")]
    setup_conns: usize,
    /// The server's pid: report its RSS growth per connection.
    #[arg(long, global = true, value_name = "PID")]
    server_pid: Option<u32>,
    /// No progress line on stderr.
    #[arg(long, global = true)]
    quiet: bool,
}

/// Flags of scenarios that send.
#[derive(Args, Debug)]
struct SendArgs {
    /// Total messages per second over all senders, e.g. `1000/s`; 0: as
    /// fast as the window allows (closed loop).
    #[arg(long, default_value = "0", value_name = "N/s")]
    rate: String,
    /// Sends in flight per sender (closed loop; cap at a fixed rate).
    #[arg(long, default_value_t = 16, value_name = "N")]
    window: usize,
    /// Most messages in the whole run; 0: bounded by --duration only.
    #[arg(long, default_value_t = 0, value_name = "N")]
    count: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Hold N authenticated connections for --duration: connect rate,
    /// failures, server memory per connection (with --server-pid).
    Idle {
        /// Connections.
        #[arg(long, default_value_t = 1000, value_name = "N")]
        conns: usize,
    },
    /// P pairs of users messaging each other: send→send_ack and send→msg
    /// latency, zero-loss and order check.
    Dm {
        /// Pairs (2 connections each).
        #[arg(long, default_value_t = 100, value_name = "P")]
        pairs: usize,
        #[command(flatten)]
        send: SendArgs,
    },
    /// One group of M online members, S of them sending: deliveries/s,
    /// send→deliver latency, loss/dup/order per member.
    Group {
        /// Members, all connected.
        #[arg(long, default_value_t = 100, value_name = "M")]
        members: usize,
        /// Members that send (the first S).
        #[arg(long, default_value_t = 1, value_name = "S")]
        senders: usize,
        #[command(flatten)]
        send: SendArgs,
    },
    /// Business sends through POST /v1/messages: HTTP latency, delivery to
    /// connected receivers.
    Http {
        /// Where messages go.
        #[arg(long, value_enum, default_value = "users")]
        to: HttpTo,
        /// Connected receivers.
        #[arg(long, default_value_t = 10, value_name = "N")]
        receivers: usize,
        /// Keep-alive HTTP connections sending.
        #[arg(long, default_value_t = 2, value_name = "N")]
        http_conns: usize,
        #[command(flatten)]
        send: SendArgs,
    },
}

/// `10s`, `500ms`, `2m`, `1h` or a bare number of seconds.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("bad duration unit in {s:?} (ms, s, m, h)"),
    };
    if !secs.is_finite() || secs < 0.0 {
        bail!("bad duration {s:?}");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `1000`, `1000/s` (per second) or `60/m`.
fn parse_rate(s: &str) -> anyhow::Result<f64> {
    let (num, per) = s.split_once('/').unwrap_or((s, "s"));
    let n: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("bad rate {s:?}"))?;
    let r = match per.trim() {
        "s" => n,
        "m" => n / 60.0,
        _ => bail!("bad rate unit in {s:?} (N/s or N/m)"),
    };
    if !r.is_finite() || r < 0.0 {
        bail!("bad rate {s:?}");
    }
    Ok(r)
}

fn resolve(what: &str, s: &str, allow_remote: bool) -> anyhow::Result<SocketAddr> {
    let addr = s
        .to_socket_addrs()
        .with_context(|| format!("{what} {s:?} does not resolve"))?
        .next()
        .with_context(|| format!("{what} {s:?} does not resolve"))?;
    if !allow_remote && !addr.ip().is_loopback() {
        bail!("{what} {addr} is not a loopback address; load runs here only target this machine (pass --allow-remote to override)");
    }
    Ok(addr)
}

/// Raises the soft open-files limit to the hard one; returns it.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

fn user_ids(prefix: &str, tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{tag}{i}")).collect()
}

/// What a scenario needs set up and how its connections behave.
struct Built {
    plan: Plan,
    params: serde_json::Value,
}

fn build(cli: &Cli) -> anyhow::Result<Built> {
    let c = &cli.common;
    let ws = resolve("--ws", &c.ws, c.allow_remote)?;
    let http = resolve("--http", &c.http, c.allow_remote)?;
    let sources =
        net::parse_sources(&c.source_addrs).map_err(|e| anyhow::anyhow!("--source-addrs: {e}"))?;
    if !c.allow_remote {
        if let Some(bad) = sources.iter().find(|ip: &&IpAddr| !ip.is_loopback()) {
            bail!("source address {bad} is not loopback (pass --allow-remote to override)");
        }
    }
    let api_key = c
        .api_key
        .clone()
        .context("no API key: pass --api-key or set TERN_API_KEY")?;
    if !c
        .prefix
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || "_.@-".contains(ch))
        || c.prefix.is_empty()
    {
        bail!("--prefix must be 1+ characters of [A-Za-z0-9_.@-]");
    }
    let sp = match c.proto {
        Proto::Rkyv => Subprotocol::Rkyv,
        Proto::Json => Subprotocol::Json,
    };
    let duration = parse_duration(&c.duration)?;
    let drain = parse_duration(&c.drain)?;
    let connect_timeout = parse_duration(&c.connect_timeout)?;
    if connect_timeout.is_zero() {
        bail!("--connect-timeout must be above 0");
    }
    let connect_rate = parse_rate(&c.connect_rate)?;
    if connect_rate <= 0.0 {
        bail!("--connect-rate must be above 0");
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let n_executors = c.cores.unwrap_or(cpus).max(1);

    setup::wait_healthy(http, &api_key)?;
    let setup_users = |users: &[String]| -> anyhow::Result<Vec<String>> {
        let t = std::time::Instant::now();
        let tokens = setup::users_with_tokens(http, &api_key, users, DEVICE, c.setup_conns)?;
        if !c.quiet {
            eprintln!(
                "setup: {} users with tokens in {:.2} s",
                users.len(),
                t.elapsed().as_secs_f64()
            );
        }
        Ok(tokens)
    };
    let conn = |token: String, send_to: Option<String>, receiver: bool| ConnPlan {
        token,
        send_to,
        receiver,
    };

    let mut plan = Plan {
        scenario: Scenario::Idle,
        sp,
        ws,
        http,
        api_key: api_key.clone(),
        sources,
        device: DEVICE.to_owned(),
        conns: Vec::new(),
        n_senders: 0,
        http_senders: None,
        rate_per_sender: 0.0,
        window: 1,
        count: 0,
        connect_rate,
        connect_timeout,
        duration,
        drain,
        expect: Expect::Nothing,
        activate_conv: None,
        run_id: rand::random(),
        n_executors,
        pin: !c.no_pin,
        spin: Duration::from_micros(c.spin_us.min(SPIN_US_MAX)),
    };
    let send_params =
        |plan: &mut Plan, s: &SendArgs, n_senders: usize| -> anyhow::Result<serde_json::Value> {
            let rate = parse_rate(&s.rate)?;
            if s.window == 0 {
                bail!("--window must be at least 1");
            }
            plan.n_senders = n_senders;
            plan.rate_per_sender = if n_senders > 0 {
                rate / n_senders as f64
            } else {
                0.0
            };
            plan.window = s.window;
            plan.count = s.count;
            Ok(json!({ "rate_per_s": rate, "window": s.window, "count": s.count }))
        };
    let params = match &cli.scenario {
        Cmd::Idle { conns } => {
            let users = user_ids(&c.prefix, "i", *conns);
            plan.conns = setup_users(&users)?
                .into_iter()
                .map(|t| conn(t, None, false))
                .collect();
            json!({ "conns": conns })
        }
        Cmd::Dm { pairs, send } => {
            if *pairs == 0 {
                bail!("--pairs must be at least 1");
            }
            plan.scenario = Scenario::Dm;
            plan.expect = Expect::Peer;
            let users = user_ids(&c.prefix, "d", 2 * pairs);
            let tokens = setup_users(&users)?;
            plan.conns = tokens
                .into_iter()
                .enumerate()
                .map(|(i, t)| conn(t, Some(format!("user:{}", users[i ^ 1])), true))
                .collect();
            let mut p = send_params(&mut plan, send, 2 * pairs)?;
            p["pairs"] = json!(pairs);
            p
        }
        Cmd::Group {
            members,
            senders,
            send,
        } => {
            if *members < 2 || *senders == 0 || senders > members {
                bail!("need --members >= 2 and 1 <= --senders <= --members");
            }
            plan.scenario = Scenario::Group;
            plan.expect = Expect::AllButOwn;
            let users = user_ids(&c.prefix, "g", *members);
            let gid = format!("{}-grp{members}", c.prefix);
            let tokens = setup_users(&users)?;
            setup::group_with_members(http, &api_key, &gid, &users)?;
            let to = format!("group:{gid}");
            plan.conns = tokens
                .into_iter()
                .enumerate()
                .map(|(i, t)| conn(t, (i < *senders).then(|| to.clone()), true))
                .collect();
            plan.activate_conv = Some(to);
            let mut p = send_params(&mut plan, send, *senders)?;
            p["members"] = json!(members);
            p["senders"] = json!(senders);
            p["group"] = json!(gid);
            p
        }
        Cmd::Http {
            to,
            receivers,
            http_conns,
            send,
        } => {
            if *receivers == 0 || *http_conns == 0 {
                bail!("need --receivers >= 1 and --http-conns >= 1");
            }
            plan.scenario = Scenario::Http;
            let users = user_ids(&c.prefix, "h", *receivers);
            let tokens = setup_users(&users)?;
            let targets = match to {
                HttpTo::Group => {
                    let gid = format!("{}-hgrp{receivers}", c.prefix);
                    setup::group_with_members(http, &api_key, &gid, &users)?;
                    plan.expect = Expect::All;
                    plan.activate_conv = Some(format!("group:{gid}"));
                    vec![format!("group:{gid}")]
                }
                HttpTo::Users => {
                    plan.expect = Expect::PerReceiver;
                    users.iter().map(|u| format!("user:{u}")).collect()
                }
            };
            plan.conns = tokens.into_iter().map(|t| conn(t, None, true)).collect();
            plan.http_senders = Some(HttpPlan {
                n_conns: *http_conns,
                targets,
            });
            let mut p = send_params(&mut plan, send, *http_conns)?;
            p["to"] = json!(format!("{to:?}").to_lowercase());
            p["receivers"] = json!(receivers);
            p["http_conns"] = json!(http_conns);
            p
        }
    };
    let mut params = params;
    params["duration_s"] = json!(duration.as_secs_f64());
    params["connect_rate_per_s"] = json!(connect_rate);
    params["sources"] = json!(plan.sources.len());
    Ok(Built { plan, params })
}

fn real_main() -> anyhow::Result<bool> {
    let cli = Cli::parse();
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let nofile = raise_nofile();
    let Built { plan, params } = build(&cli)?;
    let needed =
        plan.conns.len() as u64 + plan.http_senders.as_ref().map_or(0, |h| h.n_conns as u64);
    if needed + FD_HEADROOM > nofile {
        bail!(
            "{needed} connections need about {} open files, the limit is {nofile} (raise `ulimit -n`)",
            needed + FD_HEADROOM
        );
    }
    let opts = RunOptions {
        server_pid: cli.common.server_pid,
        quiet: cli.common.quiet,
        params,
        started_unix_ms,
    };
    let report = run::run(plan, &opts)?;
    print!("{}", report.human());
    if let Some(path) = &cli.common.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.ok)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tern-loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_rate("1000/s").unwrap(), 1000.0);
        assert_eq!(parse_rate("60/m").unwrap(), 1.0);
        assert_eq!(parse_rate("0").unwrap(), 0.0);
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("5/h").is_err());
    }

    #[test]
    fn remote_targets_refused() {
        assert!(resolve("--ws", "127.0.0.1:7700", false).is_ok());
        assert!(resolve("--ws", "127.0.0.9:7700", false).is_ok());
        let err = resolve("--ws", "10.0.0.1:7700", false).unwrap_err();
        assert!(err.to_string().contains("not a loopback"), "{err}");
        assert!(resolve("--ws", "10.0.0.1:7700", true).is_ok());
    }

    #[test]
    fn cli_parses() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "tern-loadgen",
            "dm",
            "--pairs",
            "5",
            "--rate",
            "100/s",
            "--duration",
            "2s",
            "--api-key",
            "k",
        ])
        .unwrap();
        assert_eq!(cli.common.duration, "2s");
        assert!(matches!(cli.scenario, Cmd::Dm { pairs: 5, .. }));
    }

    use clap::CommandFactory;
}
