//! CI smoke test: the real `tern serve` on loopback ports, every loadgen
//! scenario run against it for about two seconds with small numbers, each
//! JSON report checked for zero loss and non-zero throughput.
//!
//! The server binary is the root package's `tern`, found next to this
//! test's own target directory (`cargo test --release --workspace` builds
//! it). Every wait is bounded; the server is killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// API key the test server runs with.
const API_KEY: &str = "smoke-test-key";
/// Bound for `tern serve` to answer `GET /healthz` (RocksDB open included,
/// on a machine busy with other tests).
const STARTUP: Duration = Duration::from_secs(60);
/// Bound for one loadgen run (2 s of load, setup, drain and close).
const RUN_MAX: Duration = Duration::from_secs(90);
/// Attempts at starting the server when its probed ports were taken.
const START_ATTEMPTS: u32 = 3;

/// Where the `tern` binary is: `$CARGO_TARGET_DIR/release/tern`, or the
/// `tern` beside this test's `deps/` directory.
fn tern_binary() -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // .../target/release/deps/smoke-<hash> → .../target/release/tern
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            candidates.push(profile_dir.join("tern"));
        }
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("release").join("tern"));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/tern"));
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "the `tern` server binary was not found (looked at {candidates:?}); build it with \
         `cargo build --release --bin tern` (or run `cargo test --release --workspace`, which builds it)"
    );
}

/// A `tern serve` process with its own data dir; killed on drop.
struct Server {
    child: Child,
    ws: SocketAddr,
    http: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: String = log
                .chars()
                .rev()
                .take(8000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!("---- tern serve log (tail) ----\n{tail}");
        }
    }
}

fn free_addrs() -> (SocketAddr, SocketAddr) {
    let a = TcpListener::bind("127.0.0.1:0").expect("probe bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("probe bind");
    (a.local_addr().expect("addr"), b.local_addr().expect("addr"))
}

fn healthy(http: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&http, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

impl Server {
    fn start() -> Server {
        let bin = tern_binary();
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("tern-lg-smoke-")
                .tempdir()
                .expect("temp dir");
            let (ws, http) = free_addrs();
            let log = dir.path().join("server.log");
            let log_file = std::fs::File::create(&log).expect("log file");
            let child = Command::new(&bin)
                .arg("serve")
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args([
                    "--ws-addr",
                    &ws.to_string(),
                    "--http-addr",
                    &http.to_string(),
                ])
                .args(["--api-key", API_KEY])
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
            let mut s = Server {
                child,
                ws,
                http,
                log,
                _dir: dir,
            };
            let t = Instant::now();
            while t.elapsed() < STARTUP {
                if let Ok(Some(status)) = s.child.try_wait() {
                    last_err = format!(
                        "tern serve exited with {status}: {}",
                        std::fs::read_to_string(&s.log).unwrap_or_default()
                    );
                    break;
                }
                if healthy(http) {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if last_err.is_empty() {
                last_err = format!("tern serve did not answer /healthz within {STARTUP:?}");
            }
        }
        panic!("{last_err}");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Runs `tern-loadgen` with `args` against `s` and returns its JSON report.
fn loadgen(s: &Server, name: &str, args: &[&str]) -> Result<Value, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let json = dir.path().join(format!("{name}.json"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern-loadgen"));
    cmd.args(["--ws", &s.ws.to_string(), "--http", &s.http.to_string()])
        .args([
            "--api-key",
            API_KEY,
            "--quiet",
            "--duration",
            "2s",
            "--drain",
            "20s",
        ])
        // Tests share the machine: do not pin next to the server's shards.
        .arg("--no-pin")
        .args(["--prefix", &format!("smoke-{name}")])
        .arg("--json")
        .arg(&json)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawning tern-loadgen: {e}"))?;
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if t.elapsed() > RUN_MAX {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{name}: tern-loadgen ran over {RUN_MAX:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    eprintln!("---- {name} ----\n{out}");
    let text = std::fs::read_to_string(&json).map_err(|e| {
        format!("{name}: no JSON report ({e}); exit {status}\nstdout:\n{out}\nstderr:\n{err}")
    })?;
    let report: Value =
        serde_json::from_str(&text).map_err(|e| format!("{name}: bad JSON report: {e}"))?;
    if !status.success() {
        return Err(format!(
            "{name}: exit {status}; problems {}\n{out}\n{err}",
            report["problems"]
        ));
    }
    Ok(report)
}

fn u(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_u64()
        .unwrap_or(u64::MAX)
}

fn f(v: &Value, path: &[&str]) -> f64 {
    path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(0.0)
}

/// Checks that hold for every report; returns what failed.
fn check_common(name: &str, r: &Value, n_conns: u64) -> Vec<String> {
    let mut bad = Vec::new();
    if r["ok"] != Value::Bool(true) {
        bad.push(format!("{name}: ok is {} ({})", r["ok"], r["problems"]));
    }
    if u(r, &["connections", "authenticated"]) != n_conns {
        bad.push(format!(
            "{name}: {} of {n_conns} authenticated",
            r["connections"]["authenticated"]
        ));
    }
    if u(r, &["connections", "failed"]) != 0 {
        bad.push(format!("{name}: failures {}", r["connections"]["failures"]));
    }
    bad
}

/// Checks of a scenario that sends.
fn check_traffic(name: &str, r: &Value, n_conns: u64) -> Vec<String> {
    let mut bad = check_common(name, r, n_conns);
    let m = &r["messages"];
    for key in ["lost", "dups", "order_violations", "decode_errors"] {
        if u(m, &[key]) != 0 {
            bad.push(format!("{name}: {key} = {}", m[key]));
        }
    }
    if u(m, &["acked"]) == 0 || u(m, &["acked"]) == u64::MAX {
        bad.push(format!("{name}: nothing acked"));
    }
    if u(m, &["delivered"]) == 0 || u(m, &["delivered"]) != u(m, &["expected"]) {
        bad.push(format!(
            "{name}: delivered {} of expected {}",
            m["delivered"], m["expected"]
        ));
    }
    if f(r, &["throughput", "acked_per_s"]) <= 0.0
        || f(r, &["throughput", "delivered_per_s"]) <= 0.0
    {
        bad.push(format!("{name}: zero throughput {}", r["throughput"]));
    }
    bad
}

#[test]
fn every_scenario_runs_clean_against_the_real_server() {
    let server = Server::start();
    let mut bad = Vec::new();
    let pid = server.pid().to_string();

    match loadgen(
        &server,
        "idle",
        &["idle", "--conns", "50", "--server-pid", &pid],
    ) {
        Ok(r) => {
            bad.extend(check_common("idle", &r, 50));
            if f(&r, &["connections", "connect_rate_per_s"]) <= 0.0 {
                bad.push(format!(
                    "idle: connect rate {}",
                    r["connections"]["connect_rate_per_s"]
                ));
            }
            if r["memory"]["server_rss_kb_after"].as_u64().is_none() {
                bad.push(format!("idle: no server RSS in {}", r["memory"]));
            }
        }
        Err(e) => bad.push(e),
    }
    // Rates stay under the server's default per-connection send limit
    // (50/s), so nothing is refused with `rate_limited`.
    match loadgen(&server, "dm", &["dm", "--pairs", "5", "--rate", "200/s"]) {
        Ok(r) => bad.extend(check_traffic("dm", &r, 10)),
        Err(e) => bad.push(e),
    }
    match loadgen(
        &server,
        "group",
        &[
            "group",
            "--members",
            "20",
            "--senders",
            "2",
            "--rate",
            "60/s",
            "--proto",
            "json",
        ],
    ) {
        Ok(r) => {
            bad.extend(check_traffic("group", &r, 20));
            // Every acked message reaches the 19 other members.
            let (acked, expected) = (
                u(&r, &["messages", "acked"]),
                u(&r, &["messages", "expected"]),
            );
            if expected != acked * 19 {
                bad.push(format!(
                    "group: expected {expected} deliveries for {acked} acked sends"
                ));
            }
        }
        Err(e) => bad.push(e),
    }
    match loadgen(
        &server,
        "http",
        &[
            "http",
            "--to",
            "users",
            "--receivers",
            "5",
            "--count",
            "50",
            "--rate",
            "100/s",
        ],
    ) {
        Ok(r) => {
            bad.extend(check_traffic("http", &r, 5));
            if u(&r, &["messages", "acked"]) != 50 {
                bad.push(format!(
                    "http: {} of 50 sends got 200",
                    r["messages"]["acked"]
                ));
            }
        }
        Err(e) => bad.push(e),
    }
    match loadgen(
        &server,
        "httpgroup",
        &[
            "http",
            "--to",
            "group",
            "--receivers",
            "5",
            "--count",
            "50",
            "--rate",
            "100/s",
            "--proto",
            "json",
        ],
    ) {
        Ok(r) => {
            bad.extend(check_traffic("httpgroup", &r, 5));
            if u(&r, &["messages", "expected"]) != 250 {
                bad.push(format!(
                    "httpgroup: expected {} deliveries, not 250",
                    r["messages"]["expected"]
                ));
            }
        }
        Err(e) => bad.push(e),
    }
    assert!(bad.is_empty(), "smoke checks failed:\n{}", bad.join("\n"));
}

#[test]
fn refuses_a_remote_target() {
    let out = Command::new(env!("CARGO_BIN_EXE_tern-loadgen"))
        .args([
            "--ws",
            "192.0.2.1:7700",
            "--api-key",
            "k",
            "idle",
            "--conns",
            "1",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run tern-loadgen");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback"), "{err}");
}
