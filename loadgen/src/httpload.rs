//! The `http` scenario's senders: keep-alive HTTP/1.1 connections posting
//! `POST /v1/messages` at a fixed rate (or as fast as a window of pipelined
//! requests allows), each response timed.

use std::collections::VecDeque;
use std::os::fd::FromRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::{AcqRel, Relaxed, Release};

use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::exec::{sleep_until, Local};
use crate::http::{encode_request, parse_response};
use crate::plan::{phase, Expect};
use crate::stats::{bump, record};
use crate::track;

/// Bytes read per `read` from an HTTP connection.
const READ_CHUNK: usize = 16 * 1024;

/// One request waiting for its response.
struct Pending {
    sent_us: u64,
    /// Receiver index it was addressed to (`Expect::PerReceiver`).
    receiver: usize,
}

enum Wake {
    Read(std::io::Result<usize>),
    Timer,
    Phase,
}

/// HTTP sender `k` (`slot` is its task index in the executor).
pub async fn http_sender(local: Rc<Local>, k: usize, slot: usize) {
    let ctl = local.ctl.clone();
    let end = run(&local, k, slot).await;
    if let Err(why) = end {
        bump(&mut local.stats.borrow_mut().drops, why);
        local.live().errors.fetch_add(1, Relaxed);
    }
    ctl.senders_done.fetch_add(1, AcqRel);
}

async fn run(local: &Local, k: usize, slot: usize) -> Result<(), &'static str> {
    let plan = &local.plan;
    let ctl = &local.ctl;
    let Some(hp) = plan.http_senders.as_ref() else {
        return Ok(());
    };
    // Wait for the receivers to be connected.
    let mut p = local.phase.get();
    while p < phase::RUN {
        p = local.phase.changed(slot, p).await;
    }
    if p > phase::RUN {
        return Ok(());
    }
    let source = match plan.sources.len() {
        0 => None,
        n => Some(plan.sources[k % n]),
    };
    let fd = crate::net::start_connect(source, plan.http).map_err(|_| "http_connect")?;
    // SAFETY: a fresh socket fd owned by nobody else; the stream closes it.
    let mut stream = unsafe { TcpStream::from_raw_fd(fd) };
    let host = plan.http.to_string();
    let n_receivers = plan.conns.len().max(1);
    let interval_us = if plan.rate_per_sender > 0.0 {
        (1e6 / plan.rate_per_sender).max(1.0) as u64
    } else {
        0
    };
    let start = ctl.run_start_us.load(std::sync::atomic::Ordering::Acquire);
    let mut next_at = start
        + if interval_us > 0 {
            (k as u64 * 7919) % interval_us
        } else {
            0
        };
    let mut counter: u64 = 1;
    let mut next_receiver = k % n_receivers;
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut out: Vec<u8> = Vec::new();
    let mut inbuf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut out_of_budget = false;
    loop {
        let p = local.phase.get();
        let now = ctl.now_us();
        if p >= phase::CLOSE || (p >= phase::STOP && pending.is_empty()) {
            return Ok(());
        }
        if p == phase::RUN {
            let mut st = local.stats.borrow_mut();
            while !out_of_budget && pending.len() < plan.window {
                if interval_us > 0 {
                    if now < next_at {
                        break;
                    }
                    st.send_lag_us_max = st.send_lag_us_max.max(now - next_at);
                }
                if !ctl.take_budget() {
                    out_of_budget = true;
                    break;
                }
                let receiver = next_receiver;
                next_receiver = (next_receiver + 1) % n_receivers;
                let to = if hp.targets.len() == 1 {
                    &hp.targets[0]
                } else {
                    &hp.targets[receiver % hp.targets.len()]
                };
                let body = format!(
                    "{{\"to\":\"{to}\",\"kind\":\"text\",\"body\":{},\"cmid\":\"{}\"}}",
                    track::marker_body(plan.run_id, k as u32, counter, now),
                    track::cmid(plan.run_id, k as u32, counter),
                );
                counter += 1;
                encode_request(
                    "POST",
                    "/v1/messages",
                    &host,
                    &plan.api_key,
                    Some(body.as_bytes()),
                    &mut out,
                );
                pending.push_back(Pending {
                    sent_us: now,
                    receiver,
                });
                st.sent += 1;
                local.live().sent.fetch_add(1, Relaxed);
                if interval_us > 0 {
                    next_at += interval_us;
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(|_| "http_io")?;
            out.clear();
        }
        let deadline =
            (p == phase::RUN && interval_us > 0 && !out_of_budget && pending.len() < plan.window)
                .then_some(next_at);
        let read = async {
            Wake::Read(
                std::future::poll_fn(|cx| Pin::new(&mut stream).poll_read(cx, &mut chunk[..]))
                    .await,
            )
        };
        let timer = async {
            match deadline {
                Some(t) => sleep_until(ctl, t).await,
                None => std::future::pending::<()>().await,
            }
            Wake::Timer
        };
        let phase_change = async {
            local.phase.changed(slot, p).await;
            Wake::Phase
        };
        match futures_lite::future::or(read, futures_lite::future::or(timer, phase_change)).await {
            Wake::Read(Ok(0)) => return Err("http_eof"),
            Wake::Read(Ok(n)) => {
                inbuf.extend_from_slice(&chunk[..n]);
                let now = ctl.now_us();
                let mut st = local.stats.borrow_mut();
                loop {
                    let (resp, used) = match parse_response(&inbuf) {
                        Ok(Some(r)) => r,
                        Ok(None) => break,
                        Err(_) => return Err("http_malformed"),
                    };
                    inbuf.drain(..used);
                    let Some(req) = pending.pop_front() else {
                        return Err("http_unsolicited");
                    };
                    record(&mut st.http_us, now.saturating_sub(req.sent_us));
                    if resp.status == 200 {
                        st.acked += 1;
                        local.live().acked.fetch_add(1, Relaxed);
                        if plan.expect == Expect::PerReceiver {
                            if let Some(a) = ctl.acked_for.get(req.receiver) {
                                a.fetch_add(1, Release);
                            }
                        }
                        if let Some(a) = ctl.acked.get(k) {
                            a.fetch_add(1, Release);
                        }
                    } else {
                        bump(&mut st.send_errors, &format!("http_{}", resp.status));
                        local.live().errors.fetch_add(1, Relaxed);
                    }
                }
            }
            Wake::Read(Err(_)) => return Err("http_io"),
            Wake::Timer | Wake::Phase => {}
        }
    }
}
