//! The per-run "swarm" parameters and fault schedule (TigerBeetle VOPR's
//! idea: the seed picks not only the faults but how faulty the universe is,
//! so a fleet of seeds explores calm and hostile worlds alike).

use std::fmt;

use tikv_core::rng::Rng;
use tikv_core::time::{Duration, Instant};

use super::txn_history::TxnKeys;

/// Network and workload parameters of one run. Probabilities are per mille.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Swarm {
    /// Simulated clients (each with its own `ClusterView`).
    pub clients: usize,
    /// Operations each client runs in the active phase.
    pub ops_per_client: usize,
    /// Keys `k0..k{keys}` (at most 10, so wire order is numeric order); in
    /// the transactional world, the keys of all families
    /// ([`TxnParams::keys`]).
    pub keys: u32,
    /// Stores in the cluster.
    pub stores: usize,
    /// Initial split keys (key indices).
    pub splits: Vec<u32>,
    /// Smallest one-way network latency.
    pub latency_min: Duration,
    /// Spread of the common case above the minimum; zero keeps every link
    /// FIFO (no reordering).
    pub latency_jitter: Duration,
    /// Chance (‰) that a message takes the slow tail path.
    pub tail_permille: u64,
    /// Extra latency on the tail path (up to this much).
    pub tail: Duration,
    /// Chance (‰) a request is lost before reaching the server.
    pub drop_request_permille: u64,
    /// Chance (‰) a response is lost after the server applied the request.
    pub drop_response_permille: u64,
    /// Chance (‰) a response is delivered twice.
    pub duplicate_permille: u64,
    /// Client think time between operations (up to this much).
    pub think: Duration,
    /// The clients' raw backoff budget before weighting (client-go: 20 s).
    /// Small budgets make operations give up, which is how failed and
    /// undetermined outcomes reach the history.
    pub raw_budget: Duration,
    /// The clients forward through a reachable peer's store to a leader
    /// they are cut off from (`Config::with_forwarding`, client-go's
    /// `EnableForwarding`).
    pub forwarding: bool,
}

/// One scheduled fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Split the region containing key `k{0}` at it (transactional world:
    /// the key with this index, [`TxnKeys::key`]).
    Split(u32),
    /// Merge the region at this index (in key order, modulo the count) into
    /// its right neighbour.
    Merge(usize),
    /// Move the leader of the region at this index (modulo) to its peer at
    /// this index (modulo).
    TransferLeader(usize, usize),
    /// Stop a store for a while.
    StoreDown(u64, Duration),
    /// The store answers `ServerIsBusy` to the next `n` requests.
    SlowStore(u64, u32),
    /// For a while (the second duration), every answer of the store leaves
    /// it this much later (the first), as from a TiKV whose disk or
    /// threads stall; its health feedback reports the delay as its slow
    /// score ([`crate::Cluster::health_feedback`]). Drawn from a stream of
    /// its own ([`Plan::draw_store_latency`]).
    StoreLatency(u64, Duration, Duration),
    /// PD leadership moves to this member.
    PdLeader(usize),
    /// PD serves a frozen region directory for a while.
    PdStale(Duration),
    /// Messages between a client and a store are lost for a while.
    PartitionStore(usize, u64, Duration),
    /// Messages between a client and a PD member are lost for a while.
    PartitionPd(usize, usize, Duration),
    /// A client process dies, as a machine does: the process with this
    /// number (`Some`, `tikv_sim::platform::ProcessId::number`) or a live
    /// process that built a client, drawn by the seed (`None`). Only the
    /// simulated platform has processes: it crashes the process as
    /// `Sim::crash` does, even after the heal (a crash is no network
    /// trouble). The core-level world ignores it (its clients crash through
    /// its own per-commit draws, which keep their histories honest); no
    /// drawn plan contains it.
    CrashProcess(Option<u64>),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Split(k) => write!(f, "split at k{k}"),
            Fault::Merge(i) => write!(f, "merge region #{i} into its right neighbour"),
            Fault::TransferLeader(r, p) => write!(f, "transfer leader of region #{r} to peer #{p}"),
            Fault::StoreDown(s, d) => write!(f, "store {s} down for {d:?}"),
            Fault::SlowStore(s, n) => write!(f, "store {s} busy for {n} requests"),
            Fault::StoreLatency(s, extra, d) => {
                write!(f, "store {s} answers {extra:?} late for {d:?}")
            }
            Fault::PdLeader(m) => write!(f, "PD leader -> member {m}"),
            Fault::PdStale(d) => write!(f, "PD region view frozen for {d:?}"),
            Fault::PartitionStore(c, s, d) => {
                write!(f, "partition client {c} | store {s} for {d:?}")
            }
            Fault::PartitionPd(c, m, d) => write!(f, "partition client {c} | PD {m} for {d:?}"),
            Fault::CrashProcess(Some(p)) => write!(f, "crash process p{p}"),
            Fault::CrashProcess(None) => write!(f, "crash a live client process"),
        }
    }
}

/// The transactional world's parameters. Probabilities are per mille.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnParams {
    /// The key families (accounts, lists, registers); `Swarm::keys` is
    /// their total, and `Fault::Split(i)` splits at the `i`-th key.
    pub keys: TxnKeys,
    /// Chance (‰) that a client crashes while a transaction of it commits
    /// (its machines are dropped mid-commit; its locks stay behind).
    pub crash_permille: u64,
    /// Chance (‰) a transaction asks for async commit.
    pub async_commit_permille: u64,
    /// Chance (‰) a transaction asks for 1PC.
    pub one_pc_permille: u64,
    /// The clients' transactional backoff budgets, in ‰ of client-go's
    /// (small budgets make operations give up: failed and undetermined
    /// outcomes).
    pub budget_permille: u64,
}

/// Everything the seed decides before the run starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Network and workload parameters.
    pub swarm: Swarm,
    /// Faults and when they strike (all before [`Plan::heal_at`]).
    pub faults: Vec<(Instant, Fault)>,
    /// When every fault is healed and the network turns reliable; the
    /// quiescence phase starts here (the transactional world waits for its
    /// clients and for lock TTLs first).
    pub heal_at: Instant,
    /// The transactional world's parameters (`None` for the raw world).
    pub txn: Option<TxnParams>,
}

/// Number of PD members of every world.
pub const PD_MEMBERS: usize = 3;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn permille(rng: &mut Rng, max: u64) -> u64 {
    // Half of the universes have none of this fault at all, one in eight
    // a lot of it.
    match rng.gen_range(0, 8) {
        0..4 => 0,
        4 => rng.gen_range(max, 3 * max),
        _ => rng.gen_range(1, max + 1),
    }
}

impl Plan {
    /// Draws a plan for the raw world from `rng`.
    pub fn draw(rng: &mut Rng) -> Plan {
        let keys = rng.gen_range(3, 9) as u32;
        Plan::draw_universe(rng, keys, (200, 3000), (6, 26))
    }

    /// Draws a plan for the transactional world from `rng`: the key
    /// families, then a universe and faults as for the raw world, then how
    /// often clients crash and which commit modes they ask for.
    pub fn draw_txn(rng: &mut Rng) -> Plan {
        let keys = TxnKeys {
            accounts: rng.gen_range(2, 6) as u32,
            lists: rng.gen_range(1, 5) as u32,
            registers: rng.gen_range(0, 4) as u32,
        };
        // Longer than client-go's 3 s lock TTL, so the locks of crashed
        // clients expire (and are resolved) while the others still work.
        let mut plan = Plan::draw_universe(rng, keys.total(), (500, 7000), (4, 16));
        plan.txn = Some(TxnParams {
            keys,
            crash_permille: match rng.gen_range(0, 4) {
                0 => 0,
                1 => rng.gen_range(1, 100),
                _ => rng.gen_range(100, 400),
            },
            async_commit_permille: rng.gen_range(0, 700),
            one_pc_permille: rng.gen_range(0, 600),
            budget_permille: match rng.gen_range(0, 4) {
                0 | 1 => 1000,
                2 => rng.gen_range(5, 50),
                _ => rng.gen_range(50, 500),
            },
        });
        plan
    }

    /// Draws a plan for the pessimistic world from `rng`: accounts and
    /// counters (the register family), then the universe, faults, crashes
    /// and commit modes as for the transactional world.
    pub fn draw_pess(rng: &mut Rng) -> Plan {
        let keys = TxnKeys {
            accounts: rng.gen_range(2, 5) as u32,
            lists: 0,
            registers: rng.gen_range(1, 4) as u32,
        };
        let mut plan = Plan::draw_universe(rng, keys.total(), (500, 7000), (4, 12));
        plan.txn = Some(TxnParams {
            keys,
            crash_permille: match rng.gen_range(0, 4) {
                0 => 0,
                1 => rng.gen_range(1, 100),
                _ => rng.gen_range(100, 300),
            },
            async_commit_permille: rng.gen_range(0, 700),
            one_pc_permille: rng.gen_range(0, 600),
            budget_permille: match rng.gen_range(0, 4) {
                0 | 1 => 1000,
                2 => rng.gen_range(5, 50),
                _ => rng.gen_range(50, 500),
            },
        });
        plan
    }

    /// Adds the draws of seed `seed` that have streams of their own to the
    /// plan drawn from it: whether the clients forward
    /// ([`crate::world::draws_forwarding`]) and the store latency faults
    /// ([`Plan::draw_store_latency`]).
    pub fn draw_own_streams(&mut self, seed: u64) {
        self.swarm.forwarding = super::draws_forwarding(seed);
        let latency = Plan::draw_store_latency(seed, self.swarm.stores, self.heal_at);
        if !latency.is_empty() {
            self.faults.extend(latency);
            // Stable: faults due at the same instant keep their order.
            self.faults.sort_by_key(|(at, _)| *at);
        }
    }

    /// The store latency faults ([`Fault::StoreLatency`]) of seed `seed`'s
    /// plan, among `stores` stores, before `heal_at`: none in half of the
    /// seeds, else one to three, each adding 20 to 300 ms to one store's
    /// answers for 0.2 to 5 s. Drawn from a stream of their own so that
    /// the seed's other draws do not depend on them.
    pub fn draw_store_latency(seed: u64, stores: usize, heal_at: Instant) -> Vec<(Instant, Fault)> {
        // One under which the seeds `simulation::regression_seeds_pass`
        // pins draw no latency fault, so they replay the runs they were
        // recorded from.
        const STORE_LATENCY_STREAM: u64 = 0x51c0_57a1_0000_03ed;
        let mut rng = Rng::new(seed ^ STORE_LATENCY_STREAM);
        if stores == 0 || !rng.gen_ratio(1, 2) {
            return Vec::new();
        }
        let window = heal_at.saturating_duration_since(Instant::ZERO);
        (0..rng.gen_range(1, 4))
            .map(|_| {
                let at = Instant::ZERO + rng.gen_duration(window);
                let store = rng.gen_range(1, stores as u64 + 1);
                let extra = ms(rng.gen_range(20, 301));
                let dur = ms(rng.gen_range(200, 5000));
                (at, Fault::StoreLatency(store, extra, dur))
            })
            .collect()
    }

    /// Draws a universe: the active phase lasts `active_ms`, each client
    /// runs `ops` operations (ranges, upper bound excluded).
    fn draw_universe(rng: &mut Rng, keys: u32, active_ms: (u64, u64), ops: (u64, u64)) -> Plan {
        let stores = rng.gen_range(3, 6) as usize;
        let mut splits: Vec<u32> = (1..keys).filter(|_| rng.gen_ratio(1, 3)).collect();
        splits.dedup();
        let reorder = rng.gen_ratio(2, 3);
        let active = ms(rng.gen_range(active_ms.0, active_ms.1));
        let ops_per_client = rng.gen_range(ops.0, ops.1) as usize;
        let swarm = Swarm {
            clients: rng.gen_range(2, 6) as usize,
            ops_per_client,
            keys,
            stores,
            splits,
            latency_min: Duration::from_micros(rng.gen_range(50, 1000)),
            latency_jitter: if reorder {
                Duration::from_micros(rng.gen_range(100, 5000))
            } else {
                Duration::ZERO
            },
            tail_permille: permille(rng, 50),
            tail: ms(rng.gen_range(5, 2000)),
            drop_request_permille: permille(rng, 150),
            drop_response_permille: permille(rng, 150),
            duplicate_permille: permille(rng, 60),
            // Spread each client's operations over the active phase, so
            // they meet the faults (mean think time = active / ops).
            think: active * 2 / ops_per_client as u32,
            raw_budget: match rng.gen_range(0, 4) {
                0 | 1 => ms(20_000),
                // Smaller than one RPC backoff: the first failure is final.
                2 => ms(rng.gen_range(5, 100)),
                _ => ms(rng.gen_range(100, 3000)),
            },
            // Drawn from a stream of its own ([`Plan::draw_own_streams`])
            // so that the seed's other draws do not depend on it.
            forwarding: false,
        };
        let n_faults = if rng.gen_ratio(1, 5) { 0 } else { rng.gen_range(1, 17) };
        // Swarm testing: each kind is enabled or not for the whole run, so
        // some runs concentrate on one kind of trouble.
        let enabled: Vec<bool> = (0..9).map(|_| rng.gen_ratio(1, 2)).collect();
        let mut faults = Vec::new();
        for _ in 0..n_faults {
            let kind = rng.gen_range(0, 9) as usize;
            if !enabled[kind] {
                continue;
            }
            let at = Instant::ZERO + rng.gen_duration(active);
            let dur = ms(rng.gen_range(10, 5000));
            let store = rng.gen_range(1, stores as u64 + 1);
            let client = rng.gen_range(0, swarm.clients as u64) as usize;
            let fault = match kind {
                0 => Fault::Split(rng.gen_range(1, u64::from(keys)) as u32),
                1 => Fault::Merge(rng.gen_range(0, 8) as usize),
                2 => Fault::TransferLeader(
                    rng.gen_range(0, 8) as usize,
                    rng.gen_range(0, 3) as usize,
                ),
                3 => Fault::StoreDown(store, dur),
                4 => Fault::SlowStore(store, rng.gen_range(1, 20) as u32),
                5 => Fault::PdLeader(rng.gen_range(0, PD_MEMBERS as u64) as usize),
                6 => Fault::PdStale(dur),
                7 => Fault::PartitionStore(client, store, dur),
                _ => Fault::PartitionPd(client, rng.gen_range(0, PD_MEMBERS as u64) as usize, dur),
            };
            faults.push((at, fault));
        }
        faults.sort_by_key(|(at, _)| *at);
        let heal_at = Instant::ZERO + active + ms(rng.gen_range(0, 500));
        Plan { swarm, faults, heal_at, txn: None }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.swarm;
        writeln!(
            f,
            "swarm: {} clients x {} ops, {} keys, {} stores, splits {:?}{}",
            s.clients,
            s.ops_per_client,
            s.keys,
            s.stores,
            s.splits,
            if s.forwarding { ", forwarding" } else { "" }
        )?;
        writeln!(
            f,
            "net: latency {:?} + {:?}, tail {}‰ up to {:?}, drop req {}‰ resp {}‰, dup {}‰; \
             think {:?}, raw backoff budget {:?}",
            s.latency_min,
            s.latency_jitter,
            s.tail_permille,
            s.tail,
            s.drop_request_permille,
            s.drop_response_permille,
            s.duplicate_permille,
            s.think,
            s.raw_budget
        )?;
        if let Some(t) = &self.txn {
            writeln!(
                f,
                "txn: {} accounts, {} lists, {} registers; crash {}‰, async commit {}‰, 1PC {}‰, \
                 backoff budgets {}‰",
                t.keys.accounts,
                t.keys.lists,
                t.keys.registers,
                t.crash_permille,
                t.async_commit_permille,
                t.one_pc_permille,
                t.budget_permille
            )?;
        }
        for (at, fault) in &self.faults {
            writeln!(f, "fault at {at}: {fault}")?;
        }
        write!(f, "heal at {}", self.heal_at)
    }
}
