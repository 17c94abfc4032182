//! The deterministic world: several simulated clients run raw operations of
//! the real core against one [`Cluster`] over a faulty simulated network,
//! in virtual time, and the run is checked afterwards.
//!
//! One seeded generator ([`Rng`]) decides everything; one event queue
//! ordered by `(instant, sequence number)` holds every pending delivery,
//! deadline, timer and fault; time jumps to the next event. Nothing reads a
//! clock, spawns a thread or iterates a hash map, so a seed replays
//! byte for byte ([`run`] twice gives the same [`Report::trace`]).
//!
//! What the world does to messages (all drawn from the seed's [`Plan`]):
//! - every RPC an operation emits travels to its server with a latency of
//!   `min + uniform(jitter)` plus, with a small chance, a slow tail (so
//!   messages reorder unless the jitter is zero);
//! - requests may be lost before the server sees them, and responses lost
//!   *after* the server applied the request: the client then gets
//!   `DeadlineExceeded`, and that is how undetermined outcomes arise;
//! - responses may arrive twice (the operation must ignore the second);
//! - partitions cut a client from a store or a PD member for a while;
//! - the world enforces each RPC's deadline: an RPC not answered by then is
//!   fed `RpcError::DeadlineExceeded`, exactly once, and a later answer is
//!   discarded. A server refuses a request that reaches it after its
//!   deadline (gRPC propagates deadlines), so a write can only take effect
//!   before its deadline;
//! - faults from the plan: split, merge, leader transfer, store down and
//!   back, busy store (`ServerIsBusy`), PD leader change, stale PD, and the
//!   partitions above. At [`Plan::heal_at`] everything heals and the network
//!   turns reliable (latency stays); the clients then run a few more
//!   operations (the quiescence phase), which must succeed.
//!
//! Checks after the run ([`Report::violations`]): per-key linearizability
//! of the raw history including the final data ([`linearizability`]), and
//! liveness (every operation ends within [`LIVENESS_BOUND`], quiescence
//! operations succeed within [`QUIET_BOUND`], no operation stalls).
//!
//! A deliberately broken world ([`Bug`]) proves the checker can fail.

pub mod faults;
pub mod history;
pub mod linearizability;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use tikv_core::codec::{ApiCodec, Mode};
use tikv_core::config::Config;
use tikv_core::error::Error;
use tikv_core::pd::PdState;
use tikv_core::raw::RawOptions;
use tikv_core::rng::Rng;
use tikv_core::rpc::{KvRequest, KvResponse, Request, Response, Rpc, RpcError, RpcId, Target};
use tikv_core::time::{Duration, Instant};
use tikv_core::view::ClusterView;
use tikv_proto::errorpb;

use crate::{Cluster, ClusterConfig, Filter};
pub use faults::{Fault, PD_MEMBERS, Plan, Swarm};
use history::{
    Entry, History, KeyId, OkValue, OpKind, Outcome, Val, key_bytes, parse_key, parse_value,
};
use workload::SimOp;

/// Every operation must end (success or typed error) within this much
/// virtual time of its invocation. The raw backoff budget is 40 s of sleep
/// (client-go's 20 s at weight 2); RPC waits come on top of it.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(120);
/// Operations invoked after the heal must succeed within this much time.
pub const QUIET_BOUND: Duration = Duration::from_secs(30);
/// Operations each client runs after the heal.
pub const QUIET_OPS: usize = 2;
/// The run is cut off (a liveness failure) this long after the heal.
const HARD_STOP: Duration = Duration::from_secs(900);
/// And after this many events.
const MAX_EVENTS: u64 = 5_000_000;

/// A deliberately broken world, to show the checkers catch real bugs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Bug {
    /// A store applies some raw puts but answers them with an error, so
    /// the client reports a definite failure for a write that happened.
    PutAppliedButReportedFailed,
    /// Stores answer raw gets from a copy of the data taken early in the run.
    StaleReads,
}

/// How to run one world.
#[derive(Clone, Debug, Default)]
pub struct WorldConfig {
    /// The seed: decides the plan (unless given) and every choice in the run.
    pub seed: u64,
    /// Record a readable trace in [`Report::trace`].
    pub trace: bool,
    /// Break the world on purpose.
    pub bug: Option<Bug>,
    /// Use this plan instead of drawing one from the seed (fuzzing).
    pub plan: Option<Plan>,
}

impl WorldConfig {
    /// A config for `seed` with everything else default.
    pub fn seed(seed: u64) -> WorldConfig {
        WorldConfig { seed, ..WorldConfig::default() }
    }
}

/// Counters of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// RPCs emitted by operations.
    pub rpcs: u64,
    /// Operations run.
    pub ops: usize,
    /// Successful operations.
    pub ok: usize,
    /// Definitely failed operations.
    pub failed: usize,
    /// Undetermined operations.
    pub undetermined: usize,
    /// Faults applied.
    pub faults: usize,
    /// Virtual time at the end of the run.
    pub end: Instant,
    /// Longest operation.
    pub max_op: Duration,
    /// Keys whose linearizability search was cut off.
    pub unknown_keys: usize,
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed that reproduces it.
    pub seed: u64,
    /// The plan it ran.
    pub plan: Plan,
    /// Every operation.
    pub history: History,
    /// Checker failures (linearizability, final state, liveness).
    pub violations: Vec<String>,
    /// Counters.
    pub stats: Stats,
    /// The readable trace (empty unless [`WorldConfig::trace`]).
    pub trace: String,
}

impl Report {
    /// True when no checker failed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// A failure message naming the seed, the plan and the violations.
    pub fn failure(&self) -> String {
        format!(
            "simulation failed: rerun with TIKV_SIM_SEED={}\n{}\n{}",
            self.seed,
            self.plan,
            self.violations.join("\n")
        )
    }
}

/// Runs one world to the end and checks it.
pub fn run(cfg: WorldConfig) -> Report {
    let mut rng = Rng::new(cfg.seed);
    let plan = match cfg.plan.clone() {
        Some(p) => p,
        None => Plan::draw(&mut rng),
    };
    let mut world = World::new(cfg, plan, rng);
    world.run();
    world.finish()
}

/// A network endpoint a client may be cut off from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Endpoint {
    Store(u64),
    Pd(usize),
}

enum Event {
    /// The client starts its next operation.
    Issue(usize),
    /// A request reaches its server.
    Arrive { client: usize, op: u64, rpc: Rpc },
    /// A response reaches its client.
    Respond {
        client: usize,
        op: u64,
        id: RpcId,
        result: Result<Response, RpcError>,
        duplicate: bool,
    },
    /// An RPC's deadline.
    Deadline { client: usize, op: u64, id: RpcId },
    /// An operation's timer.
    Timer { client: usize, op: u64 },
    /// A planned fault strikes.
    Fault(Fault),
    /// A store comes back.
    StoreUp(u64),
    /// A partition heals.
    Reconnect(usize, Endpoint),
    /// PD catches up.
    PdFresh,
    /// Take the stale copy for [`Bug::StaleReads`].
    StaleCopy,
    /// Everything heals; quiescence begins.
    HealAll,
}

struct Flight {
    deadline: Instant,
    write: bool,
}

struct Running {
    /// Global operation number (events of finished operations are ignored).
    seq: u64,
    entry: usize,
    op: Box<dyn SimOp>,
    inflight: BTreeMap<RpcId, Flight>,
    timer_at: Option<Instant>,
    unacked: u32,
    effect_until: Instant,
}

struct Client {
    view: Arc<ClusterView>,
    running: Option<Running>,
    issued: usize,
}

struct World {
    seed: u64,
    rng: Rng,
    now: Instant,
    queue: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    cluster: Cluster,
    plan: Plan,
    opts: RawOptions,
    clients: Vec<Client>,
    history: History,
    partitions: BTreeSet<(usize, Endpoint)>,
    calm: bool,
    pd_urls: Vec<String>,
    trace: Option<String>,
    bug: Option<Bug>,
    stale: Option<BTreeMap<Vec<u8>, Vec<u8>>>,
    next_value: Val,
    recent: Vec<(KeyId, Val)>,
    next_op: u64,
    violations: Vec<String>,
    stats: Stats,
}

fn is_write(req: &Request) -> bool {
    matches!(
        req,
        Request::Kv(
            KvRequest::RawPut(_)
                | KvRequest::RawBatchPut(_)
                | KvRequest::RawDelete(_)
                | KvRequest::RawBatchDelete(_)
                | KvRequest::RawCompareAndSwap(_)
                | KvRequest::RawDeleteRange(_)
        )
    )
}

fn summarize(result: &Result<Response, RpcError>) -> String {
    match result {
        Err(e) => format!("error: {e}"),
        Ok(Response::Pd(r)) => match r.pd_error() {
            Some(e) => format!("{} pd error: {}", r.name(), e.message),
            None => format!("{} ok", r.name()),
        },
        Ok(Response::Kv(r)) => match r.region_error() {
            Some(e) => format!("{} region error: {}", r.name(), e.message),
            None => format!("{} ok", r.name()),
        },
    }
}

/// Definite failures: the server refused the command itself, or the client
/// refused to send it. Anything else may hide an applied write.
fn is_definite(e: &Error) -> bool {
    matches!(
        e,
        Error::Server(_)
            | Error::KeyError(_)
            | Error::InvalidArgument(_)
            | Error::ScanLimitExceeded { .. }
            | Error::Unsupported(_)
    )
}

impl World {
    fn new(cfg: WorldConfig, plan: Plan, mut rng: Rng) -> World {
        let swarm = &plan.swarm;
        let cluster = Cluster::new(ClusterConfig {
            stores: swarm.stores,
            split_keys: swarm.splits.iter().map(|&k| key_bytes(k)).collect(),
            seed: rng.next_u64(),
            pd_members: PD_MEMBERS,
            ..ClusterConfig::default()
        });
        let pd_urls: Vec<String> =
            (0..PD_MEMBERS).map(|i| format!("http://pd-{i}.sim:2379")).collect();
        let clients = (0..swarm.clients)
            .map(|_| {
                // Short deadlines keep runs small in virtual time; the
                // protocol logic does not depend on their size.
                let mut budgets = Config::default().backoff;
                budgets.raw = swarm.raw_budget;
                let config = Config::default()
                    .with_backoff_budgets(budgets)
                    .with_pd_endpoints(pd_urls.clone())
                    .with_rng_seed(rng.next_u64())
                    .with_pd_timeout(Duration::from_secs(1))
                    .with_read_timeout_short(Duration::from_secs(1))
                    .with_read_timeout_medium(Duration::from_secs(2));
                let pd = Arc::new(PdState::new(config.pd_endpoints.clone()));
                let view = Arc::new(ClusterView::new(config, ApiCodec::v1(Mode::Raw), pd));
                Client { view, running: None, issued: 0 }
            })
            .collect();
        let mut world = World {
            seed: cfg.seed,
            rng,
            now: Instant::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            cluster,
            plan,
            opts: RawOptions { atomic: true, ..RawOptions::default() },
            clients,
            history: History::default(),
            partitions: BTreeSet::new(),
            calm: false,
            pd_urls,
            trace: cfg.trace.then(String::new),
            bug: cfg.bug,
            stale: None,
            next_value: 0,
            recent: Vec::new(),
            next_op: 0,
            violations: Vec::new(),
            stats: Stats::default(),
        };
        if world.trace.is_some() {
            let header = format!("seed {}\n{}", world.seed, world.plan);
            world.log(header);
        }
        for c in 0..world.clients.len() {
            let start = Instant::ZERO + world.rng.gen_duration(world.plan.swarm.think);
            world.schedule(start, Event::Issue(c));
        }
        for (at, fault) in world.plan.faults.clone() {
            world.schedule(at, Event::Fault(fault));
        }
        world.schedule(world.plan.heal_at, Event::HealAll);
        if world.bug == Some(Bug::StaleReads) {
            let at = Instant::ZERO + (world.plan.heal_at - Instant::ZERO) / 4;
            world.schedule(at, Event::StaleCopy);
        }
        world
    }

    fn log(&mut self, line: impl AsRef<str>) {
        if let Some(t) = &mut self.trace {
            let _ = writeln!(t, "{} {}", self.now, line.as_ref());
        }
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), event);
    }

    fn latency(&mut self) -> Duration {
        let s = &self.plan.swarm;
        let (min, jitter, tail_p, tail) =
            (s.latency_min, s.latency_jitter, s.tail_permille, s.tail);
        let mut d = min + self.rng.gen_duration(jitter);
        // A healed network has no slow tail either: quiescence operations
        // must not miss deadlines because of it.
        if self.chance(tail_p) {
            d += self.rng.gen_duration(tail);
        }
        d
    }

    fn chance(&mut self, permille: u64) -> bool {
        !self.calm && self.rng.gen_ratio(permille, 1000)
    }

    fn run(&mut self) {
        let stop_at = self.plan.heal_at + HARD_STOP;
        while let Some(((at, _), event)) = self.queue.pop_first() {
            self.now = at;
            self.stats.events += 1;
            if at > stop_at || self.stats.events > MAX_EVENTS {
                self.violations.push(format!(
                    "liveness: the run did not quiesce (stopped at {at} after {} events)",
                    self.stats.events
                ));
                break;
            }
            self.handle(event);
        }
        self.stats.end = self.now;
        for (i, c) in self.clients.iter().enumerate() {
            if let Some(r) = &c.running {
                self.violations.push(format!(
                    "liveness: client {i} op{} ({}) never finished",
                    r.entry, self.history.entries[r.entry].kind
                ));
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Issue(c) => self.issue(c),
            Event::Arrive { client, op, rpc } => self.arrive(client, op, rpc),
            Event::Respond { client, op, id, result, duplicate } => {
                let Some(r) = self.running_mut(client, op) else {
                    self.log(format!("c{client} response {id} for a finished operation dropped"));
                    return;
                };
                let known = r.inflight.remove(&id).is_some();
                let entry = r.entry;
                if !known && !duplicate {
                    self.log(format!("c{client} op{entry} late response {id} dropped"));
                    return;
                }
                let what = if known { "recv" } else { "recv duplicate" };
                self.log(format!("c{client} op{entry} {what} {id} {}", summarize(&result)));
                self.feed(client, |op, now| op.on_response(id, result, now));
            }
            Event::Deadline { client, op, id } => {
                let Some(r) = self.running_mut(client, op) else { return };
                let Some(flight) = r.inflight.remove(&id) else { return };
                if flight.write {
                    r.unacked += 1;
                }
                let entry = r.entry;
                self.log(format!("c{client} op{entry} deadline exceeded {id}"));
                self.feed(client, |op, now| {
                    op.on_response(id, Err(RpcError::DeadlineExceeded), now)
                });
            }
            Event::Timer { client, op } => {
                let now = self.now;
                let Some(r) = self.running_mut(client, op) else { return };
                if r.op.poll_timeout().is_none_or(|t| t > now) {
                    return;
                }
                r.timer_at = None;
                self.feed(client, |op, now| op.on_timeout(now));
            }
            Event::Fault(f) => self.fault(f),
            Event::StoreUp(s) => {
                if !self.calm {
                    let r = self.cluster.start_store(s);
                    self.log(format!("heal: store {s} up: {r:?}"));
                }
            }
            Event::Reconnect(c, e) => {
                self.partitions.remove(&(c, e));
                self.log(format!("heal: client {c} reconnects to {e:?}"));
            }
            Event::PdFresh => {
                self.cluster.set_pd_stale(false);
                self.log("heal: PD region view refreshed");
            }
            Event::StaleCopy => {
                self.stale = Some(self.cluster.raw_snapshot("default"));
                self.log("bug: stores keep a stale copy for reads from now on");
            }
            Event::HealAll => self.heal_all(),
        }
    }

    fn running_mut(&mut self, client: usize, op: u64) -> Option<&mut Running> {
        self.clients[client].running.as_mut().filter(|r| r.seq == op)
    }

    fn issue(&mut self, c: usize) {
        let quiet = self.now >= self.plan.heal_at;
        let budget = self.plan.swarm.ops_per_client + if quiet { QUIET_OPS } else { 0 };
        // Two wake-ups may race (the heal and a completion): one operation
        // at a time per client.
        if self.clients[c].issued >= budget || self.clients[c].running.is_some() {
            return;
        }
        self.clients[c].issued += 1;
        let keys = self.plan.swarm.keys;
        let kind = workload::pick(&mut self.rng, keys, &mut self.next_value, &self.recent);
        match &kind {
            OpKind::Put(k, v) | OpKind::Cas { key: k, new: v, .. } => self.recent.push((*k, *v)),
            OpKind::BatchPut(kvs) => self.recent.extend(kvs.iter().copied()),
            _ => {}
        }
        let entry = self.history.invoke(c, kind.clone(), self.now);
        self.stats.ops += 1;
        self.log(format!("c{c} op{entry} invoke {kind}"));
        match workload::build(&self.clients[c].view, &kind, &self.opts) {
            Ok(mut op) => {
                op.start(self.now);
                self.next_op += 1;
                self.clients[c].running = Some(Running {
                    seq: self.next_op,
                    entry,
                    op,
                    inflight: BTreeMap::new(),
                    timer_at: None,
                    unacked: 0,
                    effect_until: self.now,
                });
                self.pump(c);
            }
            Err(e) => {
                self.history.entries[entry].end = Some(self.now);
                self.history.entries[entry].outcome = Outcome::Fail(e.to_string());
                self.next_issue(c);
            }
        }
    }

    fn next_issue(&mut self, c: usize) {
        let quiet = self.now >= self.plan.heal_at;
        let active_done = self.clients[c].issued >= self.plan.swarm.ops_per_client;
        let think = self.rng.gen_duration(self.plan.swarm.think);
        // After its active operations a client waits for the heal.
        let at = if active_done && !quiet { self.plan.heal_at } else { self.now + think };
        self.schedule(at, Event::Issue(c));
    }

    /// Feeds one input to client `c`'s operation, then drains its outputs.
    fn feed(&mut self, c: usize, input: impl FnOnce(&mut dyn SimOp, Instant)) {
        let now = self.now;
        if let Some(r) = self.clients[c].running.as_mut() {
            input(&mut *r.op, now);
        }
        self.pump(c);
    }

    /// Drains a running operation: sends its RPCs, completes it, or re-arms
    /// its timer.
    fn pump(&mut self, c: usize) {
        let Some(mut r) = self.clients[c].running.take() else { return };
        while let Some(rpc) = r.op.poll_rpc() {
            self.send(c, &mut r, rpc);
        }
        if let Some(result) = r.op.poll_result() {
            self.complete(c, r, result);
            return;
        }
        let t = r.op.poll_timeout();
        if t != r.timer_at {
            r.timer_at = t;
            if let Some(t) = t {
                self.schedule(t, Event::Timer { client: c, op: r.seq });
            }
        }
        if r.inflight.is_empty() && t.is_none() {
            let entry = r.entry;
            self.violations.push(format!(
                "liveness: client {c} op{entry} stalled (no RPC in flight, no timer, no result)"
            ));
            self.complete(c, r, Err(Error::Undetermined("stalled".into())));
            return;
        }
        self.clients[c].running = Some(r);
    }

    fn send(&mut self, c: usize, r: &mut Running, rpc: Rpc) {
        self.stats.rpcs += 1;
        let write = is_write(&rpc.request);
        if write {
            r.effect_until = r.effect_until.max(rpc.deadline);
        }
        r.inflight.insert(rpc.id, Flight { deadline: rpc.deadline, write });
        self.log(format!(
            "c{c} op{} send {} {} -> {:?} deadline {}",
            r.entry,
            rpc.id,
            rpc.request.name(),
            rpc.target,
            rpc.deadline
        ));
        if rpc.deadline != Instant::MAX {
            self.schedule(rpc.deadline, Event::Deadline { client: c, op: r.seq, id: rpc.id });
        }
        if self.chance(self.plan.swarm.drop_request_permille) {
            self.log(format!("net: request {} of c{c} lost", rpc.id));
            return;
        }
        let at = self.now + self.latency();
        self.schedule(at, Event::Arrive { client: c, op: r.seq, rpc });
    }

    fn pd_member(&self, addr: &str) -> Option<usize> {
        let bare =
            |s: &str| s.trim_start_matches("http://").trim_start_matches("https://").to_owned();
        self.pd_urls.iter().position(|u| bare(u) == bare(addr))
    }

    fn arrive(&mut self, c: usize, op: u64, rpc: Rpc) {
        let id = rpc.id;
        if self.now > rpc.deadline {
            self.log(format!("server: request {id} of c{c} arrived after its deadline, refused"));
            return;
        }
        let endpoint = match &rpc.target {
            Target::Store { store_id, .. } => Some(Endpoint::Store(*store_id)),
            Target::Pd { addr } => self.pd_member(addr).map(Endpoint::Pd),
        };
        if endpoint.is_some_and(|e| self.partitions.contains(&(c, e))) {
            self.log(format!("net: request {id} of c{c} lost in a partition"));
            return;
        }
        let result = match (endpoint, rpc.request) {
            (Some(Endpoint::Pd(m)), Request::Pd(req)) => {
                self.cluster.handle_pd(m, req, self.now).map(Response::Pd)
            }
            (Some(Endpoint::Store(s)), Request::Kv(req)) => self.serve_kv(s, req).map(Response::Kv),
            _ => Err(RpcError::Unavailable(format!("no server at {:?}", rpc.target))),
        };
        self.log(format!("server: c{c} {id} -> {}", summarize(&result)));
        let partitioned = endpoint.is_some_and(|e| self.partitions.contains(&(c, e)));
        if partitioned || self.chance(self.plan.swarm.drop_response_permille) {
            self.log(format!("net: response {id} to c{c} lost"));
            return;
        }
        let at = self.now + self.latency();
        if self.chance(self.plan.swarm.duplicate_permille) {
            let again = at + self.latency();
            self.schedule(
                again,
                Event::Respond { client: c, op, id, result: result.clone(), duplicate: true },
            );
        }
        self.schedule(at, Event::Respond { client: c, op, id, result, duplicate: false });
    }

    fn serve_kv(&mut self, store: u64, req: KvRequest) -> Result<KvResponse, RpcError> {
        let stale_key = match (&req, &self.stale) {
            (KvRequest::RawGet(g), Some(_)) => Some(g.key.to_vec()),
            _ => None,
        };
        let is_put = matches!(req, KvRequest::RawPut(_));
        let mut resp = self.cluster.handle_kv(store, req, self.now)?;
        if resp.region_error().is_some() {
            return Ok(resp);
        }
        match (&mut resp, self.bug) {
            (KvResponse::RawPut(r), Some(Bug::PutAppliedButReportedFailed))
                if is_put && r.error.is_empty() && self.rng.gen_ratio(1, 3) =>
            {
                r.error = "bug: applied, reported failed".into();
            }
            (KvResponse::RawGet(r), Some(Bug::StaleReads)) if r.error.is_empty() => {
                if let (Some(k), Some(copy)) = (stale_key, &self.stale) {
                    match copy.get(&k) {
                        Some(v) => {
                            r.value = v.clone().into();
                            r.not_found = false;
                        }
                        None => {
                            r.value = Default::default();
                            r.not_found = true;
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(resp)
    }

    fn complete(&mut self, c: usize, r: Running, result: Result<OkValue, Error>) {
        let now = self.now;
        let unanswered_writes = r.inflight.values().filter(|f| f.write).count() as u32;
        let effect_until = r
            .inflight
            .values()
            .filter(|f| f.write)
            .map(|f| f.deadline)
            .fold(r.effect_until.max(now), Instant::max);
        let quiet = self.history.entries[r.entry].invoke >= self.plan.heal_at;
        let e: &mut Entry = &mut self.history.entries[r.entry];
        e.end = Some(now);
        e.unacked_writes = r.unacked + unanswered_writes;
        e.effect_until = effect_until;
        e.outcome = match result {
            Ok(v) => Outcome::Ok(v),
            Err(err) if is_definite(&err) => Outcome::Fail(err.to_string()),
            Err(err) => Outcome::Undetermined(err.to_string()),
        };
        let took = now - e.invoke;
        let line = format!("c{c} op{} {} after {took:?}: {:?}", e.id, e.kind, e.outcome);
        let mut problems = Vec::new();
        if took > LIVENESS_BOUND {
            problems.push(format!("liveness: op{} ({}) took {took:?}", e.id, e.kind));
        }
        if quiet && (took > QUIET_BOUND || !matches!(e.outcome, Outcome::Ok(_))) {
            problems.push(format!(
                "liveness: op{} ({}) after the heal ended {:?} after {took:?}",
                e.id, e.kind, e.outcome
            ));
        }
        match e.outcome {
            Outcome::Ok(_) => self.stats.ok += 1,
            Outcome::Fail(_) => self.stats.failed += 1,
            _ => self.stats.undetermined += 1,
        }
        self.stats.max_op = self.stats.max_op.max(took);
        self.violations.extend(problems);
        self.log(line);
        self.next_issue(c);
    }

    fn fault(&mut self, fault: Fault) {
        if self.calm {
            return;
        }
        self.stats.faults += 1;
        let outcome = match &fault {
            Fault::Split(k) => format!("{:?}", self.cluster.split(&key_bytes(*k))),
            Fault::Merge(i) => {
                let regions = self.cluster.regions();
                let i = i % regions.len();
                match regions.get(i + 1) {
                    Some(right) => format!("{:?}", self.cluster.merge(regions[i].id, right.id)),
                    None => "only one region".into(),
                }
            }
            Fault::TransferLeader(i, p) => {
                let regions = self.cluster.regions();
                let region = &regions[i % regions.len()];
                let peer = &region.peers[p % region.peers.len().max(1)];
                format!("{:?}", self.cluster.transfer_leader(region.id, peer.store_id))
            }
            Fault::StoreDown(s, d) => {
                let r = self.cluster.stop_store(*s);
                let at = self.now + *d;
                self.schedule(at, Event::StoreUp(*s));
                format!("{r:?}")
            }
            Fault::SlowStore(s, n) => {
                let busy = errorpb::Error {
                    message: "server is busy".into(),
                    server_is_busy: Some(errorpb::ServerIsBusy {
                        reason: "sim: slow store".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                self.cluster.inject_region_error(Filter::any().store(*s), busy, *n);
                "injected".into()
            }
            Fault::PdLeader(m) => format!("{:?}", self.cluster.set_pd_leader(*m)),
            Fault::PdStale(d) => {
                self.cluster.set_pd_stale(true);
                let at = self.now + *d;
                self.schedule(at, Event::PdFresh);
                "frozen".into()
            }
            Fault::PartitionStore(c, s, d) => {
                self.partition(*c, Endpoint::Store(*s), *d);
                "cut".into()
            }
            Fault::PartitionPd(c, m, d) => {
                self.partition(*c, Endpoint::Pd(*m), *d);
                "cut".into()
            }
        };
        self.log(format!("fault: {fault}: {outcome}"));
    }

    fn partition(&mut self, c: usize, e: Endpoint, d: Duration) {
        self.partitions.insert((c, e));
        let at = self.now + d;
        self.schedule(at, Event::Reconnect(c, e));
    }

    fn heal_all(&mut self) {
        self.calm = true;
        for s in self.cluster.store_ids() {
            if !self.cluster.is_store_running(s) {
                let _ = self.cluster.start_store(s);
            }
        }
        self.partitions.clear();
        self.cluster.set_pd_stale(false);
        self.cluster.clear_injections();
        self.log("heal: all faults healed, network reliable; quiescence begins");
        for c in 0..self.clients.len() {
            if self.clients[c].running.is_none() {
                self.schedule(self.now, Event::Issue(c));
            }
        }
    }

    fn finish(mut self) -> Report {
        // Idle clients were woken at the heal; one whose active operations
        // were still running then has scheduled itself since.
        let snapshot = self.cluster.raw_snapshot("default");
        let mut finals: BTreeMap<KeyId, Val> = BTreeMap::new();
        for (k, v) in &snapshot {
            match parse_key(k) {
                Some(k) if k < self.plan.swarm.keys => {
                    finals.insert(k, parse_value(v));
                }
                _ => self.violations.push(format!("final state: unexpected key {k:?}")),
            }
        }
        let at = self.now + Duration::from_nanos(1);
        let per_key =
            linearizability::project(&self.history, Some((&finals, at, self.plan.swarm.keys)));
        let verdict = linearizability::check(&per_key);
        for (_, why) in verdict.violations {
            self.violations.push(format!("linearizability: {why}"));
        }
        self.stats.unknown_keys = verdict.unknown.len();
        let (_, _, _, pending) = self.history.counts();
        debug_assert!(pending == 0 || !self.violations.is_empty());
        if self.trace.is_some() {
            let summary = format!(
                "end: {:?}; final data {:?}; {} violations",
                self.stats,
                finals.iter().map(|(k, v)| format!("k{k}=v{v}")).collect::<Vec<_>>(),
                self.violations.len()
            );
            self.log(summary);
        }
        Report {
            seed: self.seed,
            plan: self.plan,
            history: self.history,
            violations: self.violations,
            stats: self.stats,
            trace: self.trace.unwrap_or_default(),
        }
    }
}
