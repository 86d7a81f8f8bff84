//! What a run does ([`Plan`], immutable, shared by every executor) and the
//! few atomics the executors and the main thread share ([`Control`]).
//!
//! Everything else is per executor: statistics are kept by one thread and
//! merged at the end; live counters are per executor and summed by the
//! main thread once a second.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tern_proto::Subprotocol;

/// Phases of a run, in order. The main thread moves them forward; the
/// executors follow.
pub mod phase {
    /// Connections are being opened and authenticated.
    pub const CONNECT: u8 = 0;
    /// Senders send.
    pub const RUN: u8 = 1;
    /// Senders stop and wait for the acks of what they sent.
    pub const STOP: u8 = 2;
    /// Receivers wait for everything acked to arrive.
    pub const DRAIN: u8 = 3;
    /// Everyone acks what is pending and closes.
    pub const CLOSE: u8 = 4;
}

/// Who must have received what at the end, from the senders' ack counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing is sent (`idle`).
    Nothing,
    /// Connection `i` receives what its peer `i ^ 1` got acked (`dm`).
    Peer,
    /// Every receiver gets every sender's acked messages, except its own
    /// (senders are connections `0..n_senders`; `group`).
    AllButOwn,
    /// Every receiver gets every sender's acked messages (`http --to group`).
    All,
    /// Each receiver gets what was acked for it alone (`http --to users`).
    PerReceiver,
}

/// One WebSocket connection of the run.
#[derive(Debug, Clone)]
pub struct ConnPlan {
    /// Its access token.
    pub token: String,
    /// Where its `send`s go (`user:<id>` / `group:<id>`); `None`: it does
    /// not send.
    pub send_to: Option<String>,
    /// Whether it tracks what it receives.
    pub receiver: bool,
}

/// Which scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Connections held open.
    Idle,
    /// Pairs chatting.
    Dm,
    /// One group, several senders.
    Group,
    /// Business sends over HTTP.
    Http,
}

impl Scenario {
    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Dm => "dm",
            Scenario::Group => "group",
            Scenario::Http => "http",
        }
    }
}

/// The HTTP senders of the `http` scenario.
#[derive(Debug, Clone)]
pub struct HttpPlan {
    /// Keep-alive connections sending, each with its own counter.
    pub n_conns: usize,
    /// `to` of each message, by receiver index; one entry when every
    /// message goes to the same target (a group).
    pub targets: Vec<String>,
}

/// Everything a run needs, fixed before the executors start.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The scenario.
    pub scenario: Scenario,
    /// Encoding of every connection.
    pub sp: Subprotocol,
    /// WebSocket target.
    pub ws: SocketAddr,
    /// HTTP target.
    pub http: SocketAddr,
    /// Bearer key of the HTTP API.
    pub api_key: String,
    /// Source addresses, used round-robin.
    pub sources: Vec<IpAddr>,
    /// Device id of every connection.
    pub device: String,
    /// The connections.
    pub conns: Vec<ConnPlan>,
    /// Senders whose acks are counted: connections `0..n_senders`, or the
    /// HTTP connections.
    pub n_senders: usize,
    /// The HTTP senders (`http` scenario).
    pub http_senders: Option<HttpPlan>,
    /// Messages per second per sender; 0: closed loop.
    pub rate_per_sender: f64,
    /// Sends in flight per sender (closed loop, and the cap at a fixed rate).
    pub window: usize,
    /// Most sends in the whole run; 0: no bound but the duration.
    pub count: u64,
    /// Connections opened per second, over all executors.
    pub connect_rate: f64,
    /// Bound for connect + handshake + auth of one connection.
    pub connect_timeout: Duration,
    /// Length of the sending (or holding) phase.
    pub duration: Duration,
    /// Bound for acks and deliveries to arrive after the sending phase.
    pub drain: Duration,
    /// Who receives what.
    pub expect: Expect,
    /// A conversation every receiver `sync`s once after `auth_ok`, so a
    /// large group pushes it full messages rather than notices.
    pub activate_conv: Option<String>,
    /// This run's id, in every cmid and body: reruns are never
    /// deduplicated, and other runs' messages are told apart.
    pub run_id: u32,
    /// Executors (threads), one per core.
    pub n_executors: usize,
    /// Pin each executor to its core.
    pub pin: bool,
    /// Busy-poll before parking an idle executor.
    pub spin: std::time::Duration,
}

/// Live counters of one executor, written by it, read by the main thread.
#[derive(Debug, Default)]
pub struct Live {
    /// Connections authenticated and open.
    pub open: AtomicU64,
    /// Sends written.
    pub sent: AtomicU64,
    /// Sends acked.
    pub acked: AtomicU64,
    /// Tracked messages delivered.
    pub delivered: AtomicU64,
    /// Failures of any kind.
    pub errors: AtomicU64,
}

/// Shared by the executors and the main thread.
#[derive(Debug)]
pub struct Control {
    /// The run's clock: every µs timestamp is `base.elapsed()`.
    pub base: Instant,
    /// Current phase (see [`phase`]).
    pub phase: AtomicU8,
    /// Connections that authenticated or gave up.
    pub settled: AtomicUsize,
    /// Connections authenticated.
    pub authed: AtomicUsize,
    /// Senders that stopped and have every answer in (or gave up).
    pub senders_done: AtomicUsize,
    /// Receivers that have everything expected (or gave up).
    pub receivers_done: AtomicUsize,
    /// Sends left in the run's budget (`--count`); below 1: stop.
    pub budget: AtomicI64,
    /// Acked sends, by sender.
    pub acked: Box<[AtomicU64]>,
    /// Acked sends, by receiver (`Expect::PerReceiver`).
    pub acked_for: Box<[AtomicU64]>,
    /// Tracked messages received, by receiver (connection index).
    pub received: Box<[AtomicU64]>,
    /// µs (run clock) when the `RUN` phase began.
    pub run_start_us: AtomicU64,
    /// Live counters, one per executor.
    pub live: Box<[Live]>,
}

fn atomics(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Control {
    /// Fresh control for `plan`.
    pub fn new(plan: &Plan) -> Control {
        let budget = if plan.count == 0 {
            i64::MAX
        } else {
            i64::try_from(plan.count).unwrap_or(i64::MAX)
        };
        Control {
            base: Instant::now(),
            phase: AtomicU8::new(phase::CONNECT),
            settled: AtomicUsize::new(0),
            authed: AtomicUsize::new(0),
            senders_done: AtomicUsize::new(0),
            receivers_done: AtomicUsize::new(0),
            budget: AtomicI64::new(budget),
            acked: atomics(plan.n_senders),
            acked_for: atomics(if plan.expect == Expect::PerReceiver {
                plan.conns.len()
            } else {
                0
            }),
            received: atomics(plan.conns.len()),
            run_start_us: AtomicU64::new(0),
            live: (0..plan.n_executors).map(|_| Live::default()).collect(),
        }
    }

    /// µs on the run's clock.
    pub fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// The current phase.
    pub fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    /// Takes one send from the budget; false when it is spent.
    pub fn take_budget(&self) -> bool {
        self.budget.fetch_sub(1, Ordering::Relaxed) > 0
    }

    /// Acked sends of sender `s` so far.
    fn acked_of(&self, s: usize) -> u64 {
        self.acked.get(s).map_or(0, |a| a.load(Ordering::Acquire))
    }

    /// Messages receiver `r` must have by the end (meaningful once every
    /// sender is done).
    pub fn expected(&self, expect: Expect, r: usize) -> u64 {
        match expect {
            Expect::Nothing => 0,
            Expect::Peer => self.acked_of(r ^ 1),
            Expect::AllButOwn => {
                let all: u64 = (0..self.acked.len()).map(|s| self.acked_of(s)).sum();
                all - if r < self.acked.len() {
                    self.acked_of(r)
                } else {
                    0
                }
            }
            Expect::All => (0..self.acked.len()).map(|s| self.acked_of(s)).sum(),
            Expect::PerReceiver => self
                .acked_for
                .get(r)
                .map_or(0, |a| a.load(Ordering::Acquire)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(expect: Expect, n_conns: usize, n_senders: usize) -> Plan {
        Plan {
            scenario: Scenario::Group,
            sp: Subprotocol::Rkyv,
            ws: "127.0.0.1:1".parse().unwrap(),
            http: "127.0.0.1:2".parse().unwrap(),
            api_key: String::new(),
            sources: vec![],
            device: "d".into(),
            conns: vec![
                ConnPlan {
                    token: String::new(),
                    send_to: None,
                    receiver: true
                };
                n_conns
            ],
            n_senders,
            http_senders: None,
            rate_per_sender: 0.0,
            window: 1,
            count: 3,
            connect_rate: 1.0,
            connect_timeout: Duration::from_secs(1),
            duration: Duration::from_secs(1),
            drain: Duration::from_secs(1),
            expect,
            activate_conv: None,
            run_id: 1,
            n_executors: 1,
            pin: false,
            spin: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn expectations() {
        let c = Control::new(&plan(Expect::AllButOwn, 4, 2));
        c.acked[0].store(5, Ordering::Relaxed);
        c.acked[1].store(7, Ordering::Relaxed);
        assert_eq!(c.expected(Expect::AllButOwn, 0), 7);
        assert_eq!(c.expected(Expect::AllButOwn, 1), 5);
        assert_eq!(c.expected(Expect::AllButOwn, 3), 12);
        assert_eq!(c.expected(Expect::All, 0), 12);
        assert_eq!(c.expected(Expect::Peer, 0), 7);
        assert_eq!(c.expected(Expect::Peer, 1), 5);
        assert_eq!(c.expected(Expect::Nothing, 1), 0);
        let c = Control::new(&plan(Expect::PerReceiver, 4, 2));
        c.acked_for[2].store(9, Ordering::Relaxed);
        assert_eq!(c.expected(Expect::PerReceiver, 2), 9);
    }

    #[test]
    fn budget_runs_out() {
        let c = Control::new(&plan(Expect::Nothing, 1, 0));
        assert!(c.take_budget() && c.take_budget() && c.take_budget());
        assert!(!c.take_budget());
    }
}
