//! The main thread's side of a run: start one executor per core, move the
//! phases forward, print a progress line each second, collect and merge
//! the executors' statistics into a [`Report`].

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use serde::Serialize;

use crate::plan::{phase, Control, Expect, Plan, Scenario};
use crate::stats::{ExecStats, LatencySummary, Slot};

/// How often the main thread checks the phase conditions.
const TICK: Duration = Duration::from_millis(10);
/// How often the progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Memory each executor registers with io_uring for its own buffers. Loadgen
/// does no file I/O; glommio's 10 MiB default is more than the default
/// memlock limit of small machines allows.
const IO_MEMORY_BYTES: usize = 512 * 1024;
/// Depth of each executor's io_uring rings.
const RING_DEPTH: usize = 512;
/// Extra time for the connect phase beyond what the connect rate needs.
const CONNECT_SLACK: Duration = Duration::from_secs(5);

/// Memory figures for `idle` (kB from /proc/PID/status VmRSS).
#[derive(Debug, Clone, Serialize, Default)]
pub struct MemoryReport {
    /// The server's pid, if given.
    pub server_pid: Option<u32>,
    /// Server RSS before the first connection.
    pub server_rss_kb_before: Option<u64>,
    /// Server RSS once every connection authenticated.
    pub server_rss_kb_after: Option<u64>,
    /// (after − before) / authenticated connections.
    pub server_bytes_per_conn: Option<f64>,
    /// Loadgen's RSS before connecting.
    pub loadgen_rss_kb_before: Option<u64>,
    /// Loadgen's RSS once every connection authenticated.
    pub loadgen_rss_kb_after: Option<u64>,
    /// Loadgen's (after − before) / authenticated connections.
    pub loadgen_bytes_per_conn: Option<f64>,
}

/// Connection figures.
#[derive(Debug, Clone, Serialize)]
pub struct ConnReport {
    /// Connections asked for.
    pub target: usize,
    /// Connections that got `auth_ok`.
    pub authenticated: u64,
    /// Connections that never got `auth_ok`.
    pub failed: u64,
    /// Why they failed.
    pub failures: BTreeMap<String, u64>,
    /// Connections that ended before the run did, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Close codes sent by the server.
    pub server_closes: BTreeMap<String, u64>,
    /// Seconds from the first connect to the last `auth_ok`.
    pub connect_s: f64,
    /// Authenticated connections per second over `connect_s`.
    pub connect_rate_per_s: f64,
}

/// Message figures.
#[derive(Debug, Clone, Serialize)]
pub struct MsgReport {
    /// Sends written (WebSocket `send` or HTTP POST).
    pub sent: u64,
    /// Sends acknowledged (`send_ack` or HTTP 200).
    pub acked: u64,
    /// Refused sends, by code (`send_err` code or `http_<status>`).
    pub send_errors: BTreeMap<String, u64>,
    /// `error` frames, by code.
    pub error_frames: BTreeMap<String, u64>,
    /// Deliveries due: every acked message to every receiver that should
    /// get it.
    pub expected: u64,
    /// Deliveries that arrived (first copies of this run's messages).
    pub delivered: u64,
    /// Deliveries due that never arrived.
    pub lost: u64,
    /// Deliveries beyond those due (a message delivered whose ack never
    /// came back, e.g. cut off by the end of the run).
    pub unexpected: u64,
    /// Entries pushed twice to one connection.
    pub dups: u64,
    /// Entries out of seq order, or a sender's messages out of order.
    pub order_violations: u64,
    /// `notice` frames.
    pub notices: u64,
    /// Messages from elsewhere (not this run).
    pub foreign: u64,
    /// Server frames that did not decode.
    pub decode_errors: u64,
    /// `ack` frames sent.
    pub acks_sent: u64,
    /// Largest lag of a fixed-rate sender behind schedule, µs.
    pub send_lag_us_max: u64,
}

/// Rates.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Seconds from the start of sending to the last ack.
    pub send_s: f64,
    /// Seconds from the start of sending to the last delivery.
    pub deliver_s: f64,
    /// Sends per second over `send_s`.
    pub sent_per_s: f64,
    /// Acks per second over `send_s`.
    pub acked_per_s: f64,
    /// Deliveries per second over `deliver_s`.
    pub delivered_per_s: f64,
}

/// The machine the run was on.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// Online CPUs.
    pub cpus: usize,
    /// CPU model (from /proc/cpuinfo).
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
}

/// The final report (printed, and written with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Subprotocol.
    pub proto: String,
    /// The scenario's parameters, as given.
    pub params: serde_json::Value,
    /// This run's id (in cmids and bodies).
    pub run_id: String,
    /// When the run started, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// Loadgen's version.
    pub version: String,
    /// Executors (threads).
    pub executors: usize,
    /// Where it ran.
    pub host: Host,
    /// Connections.
    pub connections: ConnReport,
    /// Messages.
    pub messages: MsgReport,
    /// Rates.
    pub throughput: Throughput,
    /// Latency percentiles in µs: `connect` (connect to auth_ok), `ack`
    /// (send to send_ack), `deliver` (send to msg), `http` (request to
    /// response).
    pub latency_us: BTreeMap<String, LatencySummary>,
    /// `ack` and `deliver` latency by the send's time: per 250 ms slot the
    /// samples, those above 10 ms, and the largest (JSON report only).
    pub timeline: BTreeMap<String, Vec<Slot>>,
    /// Memory (`idle`).
    pub memory: MemoryReport,
    /// Whether the run met every check: no failed connection, no loss,
    /// no duplicate, nothing out of order, and something got through.
    pub ok: bool,
    /// What failed, in words.
    pub problems: Vec<String>,
}

/// VmRSS of a process in kB.
pub fn rss_kb(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn host() -> Host {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    Host {
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    }
}

/// Sums of the live counters.
#[derive(Default, Clone, Copy)]
struct LiveSum {
    open: u64,
    sent: u64,
    acked: u64,
    delivered: u64,
    errors: u64,
}

fn live_sum(ctl: &Control) -> LiveSum {
    let mut s = LiveSum::default();
    for l in ctl.live.iter() {
        s.open += l.open.load(Relaxed);
        s.sent += l.sent.load(Relaxed);
        s.acked += l.acked.load(Relaxed);
        s.delivered += l.delivered.load(Relaxed);
        s.errors += l.errors.load(Relaxed);
    }
    s
}

fn phase_name(p: u8) -> &'static str {
    match p {
        phase::CONNECT => "connect",
        phase::RUN => "run",
        phase::STOP => "stop",
        phase::DRAIN => "drain",
        _ => "close",
    }
}

/// Prints the progress line once a second.
struct Progress {
    quiet: bool,
    start: Instant,
    last_at: Instant,
    last: LiveSum,
}

impl Progress {
    fn tick(&mut self, ctl: &Control, n_conns: usize) {
        if self.quiet || self.last_at.elapsed() < PROGRESS_EVERY {
            return;
        }
        let now = live_sum(ctl);
        let dt = self.last_at.elapsed().as_secs_f64();
        let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / dt;
        eprintln!(
            "[{:6.1}s] {:<7} conns {}/{} | sent {:.0}/s acked {:.0}/s delivered {:.0}/s | errors {}",
            self.start.elapsed().as_secs_f64(),
            phase_name(ctl.phase()),
            now.open,
            n_conns,
            rate(now.sent, self.last.sent),
            rate(now.acked, self.last.acked),
            rate(now.delivered, self.last.delivered),
            now.errors,
        );
        let _ = std::io::stderr().flush();
        self.last = now;
        self.last_at = Instant::now();
    }
}

/// Options of the run that are not part of the plan.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Server pid for RSS readings.
    pub server_pid: Option<u32>,
    /// No progress line.
    pub quiet: bool,
    /// Scenario parameters for the report.
    pub params: serde_json::Value,
    /// When the run started, ms since the Unix epoch.
    pub started_unix_ms: u64,
}

/// Runs `plan` to the end and reports.
pub fn run(plan: Plan, opts: &RunOptions) -> anyhow::Result<Report> {
    let plan = Arc::new(plan);
    let ctl = Arc::new(Control::new(&plan));
    let n_conns = plan.conns.len();
    let n_receivers = plan.conns.iter().filter(|c| c.receiver).count();
    let server_pid = opts.server_pid.map(|p| p.to_string());
    let mut memory = MemoryReport {
        server_pid: opts.server_pid,
        server_rss_kb_before: server_pid.as_deref().and_then(rss_kb),
        loadgen_rss_kb_before: rss_kb("self"),
        ..MemoryReport::default()
    };

    let mut handles = Vec::with_capacity(plan.n_executors);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    for i in 0..plan.n_executors {
        let placement = if plan.pin {
            Placement::Fixed(i % cpus)
        } else {
            Placement::Unbound
        };
        let (p, c) = (plan.clone(), ctl.clone());
        let h = LocalExecutorBuilder::new(placement)
            .name(&format!("lg-{i}"))
            .io_memory(IO_MEMORY_BYTES)
            .ring_depth(RING_DEPTH)
            .spin_before_park(plan.spin)
            .spawn(move || crate::exec::executor_main(i, p, c))
            .map_err(|e| anyhow::anyhow!("starting executor {i} (glommio needs io_uring): {e}"))?;
        handles.push(h);
    }

    let mut progress = Progress {
        quiet: opts.quiet,
        start: Instant::now(),
        last_at: Instant::now(),
        last: LiveSum::default(),
    };
    // CONNECT: until every connection settled.
    let connect_start_us = ctl.now_us();
    let connect_budget = Duration::from_secs_f64(n_conns as f64 / plan.connect_rate.max(1.0))
        + plan.connect_timeout
        + CONNECT_SLACK;
    let t = Instant::now();
    while ctl.settled.load(Acquire) < n_conns && t.elapsed() < connect_budget {
        progress.tick(&ctl, n_conns);
        std::thread::sleep(TICK);
    }
    let connect_s = (ctl.now_us() - connect_start_us) as f64 / 1e6;
    let authed = ctl.authed.load(Acquire);
    memory.server_rss_kb_after = server_pid.as_deref().and_then(rss_kb);
    memory.loadgen_rss_kb_after = rss_kb("self");
    if authed > 0 {
        let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(b), Some(a)) => Some(((a as f64 - b as f64) * 1024.0 / authed as f64).round()),
            _ => None,
        };
        memory.server_bytes_per_conn = per(memory.server_rss_kb_before, memory.server_rss_kb_after);
        memory.loadgen_bytes_per_conn =
            per(memory.loadgen_rss_kb_before, memory.loadgen_rss_kb_after);
    }

    // RUN: for the duration, or until the send budget is spent.
    let run_start_us = ctl.now_us();
    ctl.run_start_us.store(run_start_us, Release);
    ctl.phase.store(phase::RUN, Release);
    let t = Instant::now();
    while t.elapsed() < plan.duration && !(plan.count > 0 && ctl.budget.load(Relaxed) <= 0) {
        progress.tick(&ctl, n_conns);
        std::thread::sleep(TICK);
    }
    // STOP: senders wait for their answers.
    ctl.phase.store(phase::STOP, Release);
    let n_senders = plan.n_senders;
    let t = Instant::now();
    while ctl.senders_done.load(Acquire) < n_senders && t.elapsed() < plan.drain {
        progress.tick(&ctl, n_conns);
        std::thread::sleep(TICK);
    }
    let send_s = (ctl.now_us() - run_start_us) as f64 / 1e6;
    // DRAIN: receivers wait for what is due.
    ctl.phase.store(phase::DRAIN, Release);
    let t = Instant::now();
    while ctl.receivers_done.load(Acquire) < n_receivers && t.elapsed() < plan.drain {
        progress.tick(&ctl, n_conns);
        std::thread::sleep(TICK);
    }
    let deliver_s = (ctl.now_us() - run_start_us) as f64 / 1e6;
    ctl.phase.store(phase::CLOSE, Release);

    let mut total = ExecStats::default();
    for (i, h) in handles.into_iter().enumerate() {
        let s = h
            .join()
            .map_err(|e| anyhow::anyhow!("executor {i} failed: {e}"))?;
        total.merge(&s);
    }

    // Loss: per receiver, what was due against what arrived.
    let (mut expected, mut lost, mut unexpected) = (0u64, 0u64, 0u64);
    if plan.expect != Expect::Nothing {
        for (r, c) in plan.conns.iter().enumerate() {
            if !c.receiver {
                continue;
            }
            let due = ctl.expected(plan.expect, r);
            let got = ctl.received[r].load(Acquire);
            expected += due;
            lost += due.saturating_sub(got);
            unexpected += got.saturating_sub(due);
        }
    }
    Ok(build_report(
        &plan,
        opts,
        total,
        ConnTimes {
            connect_s,
            send_s,
            deliver_s,
        },
        (expected, lost, unexpected),
        memory,
    ))
}

struct ConnTimes {
    connect_s: f64,
    send_s: f64,
    deliver_s: f64,
}

fn build_report(
    plan: &Plan,
    opts: &RunOptions,
    s: ExecStats,
    times: ConnTimes,
    (expected, lost, unexpected): (u64, u64, u64),
    memory: MemoryReport,
) -> Report {
    let n_conns = plan.conns.len();
    let failed: u64 = s.connect_failures.values().sum();
    let per_s = |n: u64, secs: f64| {
        if secs > 0.0 {
            (n as f64 / secs * 10.0).round() / 10.0
        } else {
            0.0
        }
    };
    let mut latency = BTreeMap::new();
    latency.insert("connect".to_owned(), LatencySummary::of(&s.connect_us));
    if plan.scenario != Scenario::Idle {
        if plan.scenario == Scenario::Http {
            latency.insert("http".to_owned(), LatencySummary::of(&s.http_us));
        } else {
            latency.insert("ack".to_owned(), LatencySummary::of(&s.ack_us));
        }
        latency.insert("deliver".to_owned(), LatencySummary::of(&s.deliver_us));
    }
    let mut timeline = BTreeMap::new();
    if matches!(plan.scenario, Scenario::Dm | Scenario::Group) {
        timeline.insert("ack".to_owned(), s.ack_timeline.slots());
        timeline.insert("deliver".to_owned(), s.deliver_timeline.slots());
    }
    let mut problems = Vec::new();
    if failed > 0 {
        problems.push(format!(
            "{failed} connection(s) failed: {:?}",
            s.connect_failures
        ));
    }
    if s.authed as usize != n_conns {
        problems.push(format!(
            "{} of {n_conns} connections authenticated",
            s.authed
        ));
    }
    let dropped: u64 = s.drops.values().sum();
    if dropped > 0 {
        problems.push(format!(
            "{dropped} connection(s) ended early: {:?}",
            s.drops
        ));
    }
    if lost > 0 {
        problems.push(format!("{lost} of {expected} deliveries lost"));
    }
    if s.dups > 0 {
        problems.push(format!("{} duplicate deliveries", s.dups));
    }
    if s.order_violations > 0 {
        problems.push(format!("{} deliveries out of order", s.order_violations));
    }
    if s.decode_errors > 0 {
        problems.push(format!("{} server frames did not decode", s.decode_errors));
    }
    if plan.scenario != Scenario::Idle {
        if s.acked == 0 {
            problems.push("no send was acknowledged".to_owned());
        }
        if s.delivered == 0 {
            problems.push("nothing was delivered".to_owned());
        }
    }
    let connect_rate = if times.connect_s > 0.0 {
        s.authed as f64 / times.connect_s
    } else {
        0.0
    };
    Report {
        scenario: plan.scenario.name().to_owned(),
        proto: plan.sp.name().to_owned(),
        params: opts.params.clone(),
        run_id: format!("{:08x}", plan.run_id),
        started_unix_ms: opts.started_unix_ms,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        executors: plan.n_executors,
        host: host(),
        connections: ConnReport {
            target: n_conns,
            authenticated: s.authed,
            failed,
            failures: s.connect_failures.clone(),
            dropped: s.drops.clone(),
            server_closes: s.server_closes.clone(),
            connect_s: (times.connect_s * 1000.0).round() / 1000.0,
            connect_rate_per_s: (connect_rate * 10.0).round() / 10.0,
        },
        messages: MsgReport {
            sent: s.sent,
            acked: s.acked,
            send_errors: s.send_errors.clone(),
            error_frames: s.error_frames.clone(),
            expected,
            delivered: s.delivered,
            lost,
            unexpected,
            dups: s.dups,
            order_violations: s.order_violations,
            notices: s.notices,
            foreign: s.foreign,
            decode_errors: s.decode_errors,
            acks_sent: s.acks_sent,
            send_lag_us_max: s.send_lag_us_max,
        },
        throughput: Throughput {
            send_s: (times.send_s * 1000.0).round() / 1000.0,
            deliver_s: (times.deliver_s * 1000.0).round() / 1000.0,
            sent_per_s: per_s(s.sent, times.send_s),
            acked_per_s: per_s(s.acked, times.send_s),
            delivered_per_s: per_s(s.delivered, times.deliver_s),
        },
        latency_us: latency,
        timeline,
        memory,
        ok: problems.is_empty(),
        problems,
    }
}

impl Report {
    /// The human-readable form.
    pub fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let c = &self.connections;
        let m = &self.messages;
        let t = &self.throughput;
        let _ = writeln!(
            o,
            "tern-loadgen {} ({}, {} executors, run {}) on {} x {} / Linux {}",
            self.scenario,
            self.proto,
            self.executors,
            self.run_id,
            self.host.cpus,
            self.host.cpu_model,
            self.host.kernel
        );
        let _ = writeln!(
            o,
            "connections  {}/{} authenticated, {} failed, {:.3} s, {:.1} conn/s",
            c.authenticated, c.target, c.failed, c.connect_s, c.connect_rate_per_s
        );
        if !c.failures.is_empty() {
            let _ = writeln!(o, "  failures   {:?}", c.failures);
        }
        if !c.dropped.is_empty() {
            let _ = writeln!(o, "  dropped    {:?}", c.dropped);
        }
        if self.scenario != "idle" {
            let _ = writeln!(
                o,
                "messages     sent {} acked {} | expected {} delivered {} lost {} unexpected {} dups {} out-of-order {}",
                m.sent, m.acked, m.expected, m.delivered, m.lost, m.unexpected, m.dups, m.order_violations
            );
            if !m.send_errors.is_empty() {
                let _ = writeln!(o, "  refused    {:?}", m.send_errors);
            }
            if m.send_errors.contains_key("rate_limited") {
                let _ = writeln!(
                    o,
                    "  note       the server's per-connection send limit refused sends; for throughput runs \
                     start tern with --send-rate-per-s and --send-burst above the offered rate"
                );
            }
            if m.notices > 0 {
                let _ = writeln!(o, "  notices    {}", m.notices);
            }
            let _ = writeln!(
                o,
                "throughput   {:.1} sent/s, {:.1} acked/s over {:.3} s; {:.1} delivered/s over {:.3} s",
                t.sent_per_s, t.acked_per_s, t.send_s, t.delivered_per_s, t.deliver_s
            );
        }
        for (name, l) in &self.latency_us {
            let _ = writeln!(
                o,
                "latency {:<8} n={:<9} p50 {:>8} µs  p99 {:>8} µs  p999 {:>8} µs  max {:>8} µs",
                name, l.count, l.p50, l.p99, l.p999, l.max
            );
        }
        let mem = &self.memory;
        if let (Some(b), Some(a)) = (mem.server_rss_kb_before, mem.server_rss_kb_after) {
            let _ = writeln!(
                o,
                "server RSS   {b} kB -> {a} kB, {:.0} bytes/connection",
                mem.server_bytes_per_conn.unwrap_or(0.0)
            );
        }
        if let (Some(b), Some(a)) = (mem.loadgen_rss_kb_before, mem.loadgen_rss_kb_after) {
            if self.scenario == "idle" {
                let _ = writeln!(
                    o,
                    "loadgen RSS  {b} kB -> {a} kB, {:.0} bytes/connection",
                    mem.loadgen_bytes_per_conn.unwrap_or(0.0)
                );
            }
        }
        let _ = writeln!(o, "result       {}", if self.ok { "OK" } else { "FAILED" });
        for p in &self.problems {
            let _ = writeln!(o, "  - {p}");
        }
        o
    }
}
