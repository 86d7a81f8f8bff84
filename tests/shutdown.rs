//! Graceful shutdown under load (PROTOCOL.md "Running"): SIGTERM while
//! senders keep dm and group traffic flowing and thousands of clients are
//! connected. Every connection gets close code 1001, the process exits 0
//! within [`SHUTDOWN`], every acknowledged message is there after the
//! restart (sends left unanswered are retried and deduplicated), and the
//! restarted server takes every client back quickly.

mod common;
#[path = "common/traffic.rs"]
mod traffic;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tern_proto::Subprotocol;
use traffic::{next_rand, seed_from_env, Ledger, Sender};

/// The per-connection send rate limit (default 50/s, burst 200) is not
/// what these tests are about: lift it so the senders run at disk speed.
const UNLIMITED: [&str; 4] = ["--send-rate-per-s", "1000000", "--send-burst", "1000000"];
/// Idle users, each connected from [`DEVICES`] devices: the connections
/// that must all be closed with 1001, then all come back.
const IDLE_USERS: usize = 20;
/// Devices per idle user (20 × 100 = 2,000 connections).
const DEVICES: usize = 100;
/// Connection handshakes in flight at once while (re)connecting, like a
/// fleet of clients with a little jitter.
const CONNECT_CONCURRENCY: usize = 64;
/// Generous bound for 2,000 clients to reconnect and authenticate after the
/// restart, on a busy 2-core CI box (measured: see docs/RELIABILITY.md).
const RECONNECT_BOUND: Duration = Duration::from_secs(30);
/// Senders of the traffic the SIGTERM interrupts.
const SENDERS: [&str; 4] = ["t0", "t1", "t2", "t3"];
/// Traffic runs this long before the SIGTERM.
const TRAFFIC_BEFORE_TERM: Duration = Duration::from_millis(800);

/// Connects and authenticates every (user, device) of `tokens`; returns the
/// clients and how long it took.
async fn connect_all(s: &Server, tokens: &[(String, String)]) -> (Vec<Client>, Duration) {
    let t = Instant::now();
    let mut jobs = Vec::new();
    for (user, tok) in tokens {
        for d in 0..DEVICES {
            jobs.push((user.clone(), tok.clone(), format!("d{d}")));
        }
    }
    let clients: Vec<Client> = futures_util::stream::iter(jobs)
        .map(|(user, tok, device)| async move {
            let mut c = Client::connect(s, Subprotocol::Rkyv).await;
            let ok = c.auth(&tok, &device).await;
            assert_eq!(ok["type"], "auth_ok", "{user}/{device}: {ok}");
            c
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    (clients, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_keeps_every_ack_closes_1001_and_restarts_fast() {
    let seed = seed_from_env("SHUTDOWN_SEED");
    println!("shutdown test: SHUTDOWN_SEED={seed}");
    let mut rng = seed;
    let mut s = Server::start(&UNLIMITED).await;
    s.put_users(&SENDERS).await;
    s.put_group("term", None, &SENDERS).await;
    let mut tokens = Vec::new();
    for u in 0..IDLE_USERS {
        let user = format!("idle{u}");
        s.put_user(&user).await;
        // A token minted without a device is good for every device.
        tokens.push((user.clone(), s.token(&user, None).await));
    }
    let (idle, first_connect) = connect_all(&s, &tokens).await;
    let n_idle = idle.len();

    let mut ledger = Ledger {
        extra_convs: vec![group_conv("term")],
        ..Ledger::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, u) in SENDERS.iter().enumerate() {
        let targets = vec![
            format!("user:{}", SENDERS[(i + 1) % SENDERS.len()]),
            group_conv("term"),
        ];
        let sp = if i % 2 == 0 {
            Subprotocol::Json
        } else {
            Subprotocol::Rkyv
        };
        let mut snd = Sender::new(&s, u, "dev", sp, targets, next_rand(&mut rng)).await;
        let (url, stop) = (s.ws_url(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let out = snd.run(&url, Vec::new(), stop).await;
            (snd, out)
        }));
    }
    tokio::time::sleep(TRAFFIC_BEFORE_TERM).await;

    // SIGTERM while every client reads its socket.
    let closes: Vec<_> = idle
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.expect_close(SHUTDOWN).await }))
        .collect();
    let t = Instant::now();
    let status = s.sigterm(SHUTDOWN).await;
    let shutdown_took = t.elapsed();
    let status =
        status.unwrap_or_else(|| panic!("not exited {SHUTDOWN:?} after SIGTERM\n{}", s.logs()));
    assert_eq!(status.code(), Some(0), "exit status\n{}", s.logs());
    let mut codes: HashMap<Option<u16>, usize> = HashMap::new();
    for c in closes {
        *codes.entry(c.await.expect("close task")).or_default() += 1;
    }
    assert_eq!(
        codes.get(&Some(1001)).copied(),
        Some(n_idle),
        "close codes of the idle clients: {codes:?}"
    );
    let mut senders = Vec::new();
    let mut retry = Vec::new();
    let mut n_acked_before = 0;
    for t in tasks {
        let (snd, out) = t.await.expect("sender task");
        assert_eq!(
            out.close,
            Some(Some(1001)),
            "{}: connection end under SIGTERM",
            snd.user
        );
        // A send the shutdown refused stored nothing; retried below.
        for (e, _) in &out.errors {
            assert_eq!(e["code"], "unavailable", "{e}");
        }
        n_acked_before += out.acked.len();
        for a in out.acked {
            ledger.record(a);
        }
        retry.push(
            out.errors
                .into_iter()
                .map(|(_, p)| p)
                .chain(out.unanswered)
                .collect::<Vec<_>>(),
        );
        senders.push(snd);
    }
    assert!(n_acked_before > 0, "no traffic before the SIGTERM");

    // A clean restart: every ack is there.
    let t = Instant::now();
    s.restart().await;
    let restart_took = t.elapsed();
    let stored = ledger.check_http(&s, "after SIGTERM").await;
    // Unanswered sends that were stored must dedup to their seq on retry.
    let mut expect: HashMap<(String, String), (String, u64, u64)> = HashMap::new();
    for (snd, r) in senders.iter().zip(&retry) {
        for p in r {
            let key = (snd.user.clone(), p.cmid.clone());
            if let Some(at) = stored.by_cmid.get(&key) {
                expect.insert(key, at.clone());
            }
        }
    }
    let n_retried: usize = retry.iter().map(Vec::len).sum();
    let stop = Arc::new(AtomicBool::new(true));
    for (mut snd, r) in senders.into_iter().zip(retry) {
        let out = snd.run(&s.ws_url(), r, stop.clone()).await;
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert!(
            out.unanswered.is_empty(),
            "{}: retries unanswered",
            snd.user
        );
        for a in out.acked {
            let key = (a.from.clone(), a.cmid.clone());
            if let Some(at) = expect.remove(&key) {
                assert_eq!(
                    (a.conv.clone(), a.seq, a.ts),
                    at,
                    "{key:?} not deduplicated"
                );
            }
            ledger.record(a);
        }
    }
    assert!(expect.is_empty());
    let stored = ledger.check_http(&s, "after the retries").await;
    assert_eq!(
        stored.by_cmid.len(),
        ledger.len(),
        "every stored send acked once"
    );
    for u in SENDERS {
        let mut c = s.login(Subprotocol::Json, u, "checker").await;
        ledger.check_sync(&mut c, u, &stored).await;
    }

    // Everyone comes back, quickly.
    let (back, reconnect) = connect_all(&s, &tokens).await;
    assert_eq!(back.len(), n_idle);
    println!(
        "SHUTDOWN FIGURES: {n_idle} idle connections + {} senders; {n_acked_before} acked before \
         SIGTERM, {n_retried} retried after; exit 0 in {shutdown_took:?}; restart to healthy in \
         {restart_took:?}; {n_idle} clients connected in {first_connect:?} at first and \
         reconnected in {reconnect:?} ({:.0}/s)",
        SENDERS.len(),
        n_idle as f64 / reconnect.as_secs_f64()
    );
    assert!(
        reconnect < RECONNECT_BOUND,
        "{n_idle} reconnects took {reconnect:?}"
    );
}
