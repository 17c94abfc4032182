//! The simulated network and fault model, shared by the seeded
//! [`world`](crate::world) (core machines driven directly) and the simulated
//! platform (`platform`, the public clients on a virtual-time executor).
//!
//! [`Network`] decides the fate of every message from a seeded [`Rng`] and
//! the run's [`Swarm`] parameters: a request may be lost before its server
//! sees it, or arrives after `min + uniform(jitter)` plus, by chance, a slow
//! tail; an answer may be lost after the server applied the request, and
//! may be delivered twice. Partitions cut one client from a store or a PD
//! member. A slow store ([`Fault::StoreLatency`]) handles a request when it
//! arrives and its answer leaves late (so a write is applied before its
//! late answer, and a client whose deadline passes meanwhile cannot tell). [`Network::apply_fault`] carries out a planned [`Fault`] on the
//! [`Cluster`] and says when (and how) it heals; [`Network::heal`] ends
//! every fault at once and turns the network reliable (latency stays).
//!
//! The caller owns the clock, the event queue and the generator: every
//! draw happens in the order of the calls, so a caller that calls in a
//! deterministic order replays byte for byte.

use std::collections::BTreeSet;

use tikv_core::rng::Rng;
use tikv_core::rpc::{RpcError, Target};
use tikv_core::time::Duration;
use tikv_proto::errorpb;

use crate::world::{Fault, Swarm};
use crate::{Cluster, Filter};

/// A network endpoint a client may be cut off from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    /// A TiKV store, by id.
    Store(u64),
    /// A PD member, by index.
    Pd(usize),
}

/// What ends a fault some time after it struck.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// A stopped store comes back.
    StoreUp(u64),
    /// A partition between a client and an endpoint heals.
    Reconnect(usize, Endpoint),
    /// PD's frozen region view catches up.
    PdFresh,
    /// A store's answers stop being late, unless a later fault changed its
    /// latency from this one.
    StoreOnTime(u64, Duration),
}

/// Where a request that reached its endpoint is served
/// ([`Network::serving`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// The server that handles it.
    pub at: Option<Endpoint>,
    /// The store that forwarded it there, if one did.
    pub forwarded_by: Option<u64>,
}

/// When an answer reaches its client, relative to the server's reply.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AnswerDelay {
    /// The answer's latency.
    pub first: Duration,
    /// A duplicate's latency (after `first`), when the network repeats it.
    pub duplicate: Option<Duration>,
}

/// The message fate and partition model of one run (see the module docs).
#[derive(Clone, Debug)]
pub struct Network {
    swarm: Swarm,
    pd_urls: Vec<String>,
    partitions: BTreeSet<(usize, Endpoint)>,
    calm: bool,
}

impl Network {
    /// A network with `swarm`'s latency and loss parameters, whose PD
    /// members are at `pd_urls` (member `i` at `pd_urls[i]`).
    pub fn new(swarm: Swarm, pd_urls: Vec<String>) -> Network {
        Network { swarm, pd_urls, partitions: BTreeSet::new(), calm: false }
    }

    /// Whether the plan's clients forward through a proxy store
    /// ([`Swarm::forwarding`]).
    pub fn forwarding(&self) -> bool {
        self.swarm.forwarding
    }

    /// The PD members' URLs.
    pub fn pd_urls(&self) -> &[String] {
        &self.pd_urls
    }

    /// Moves the PD members to `pd_urls` (member `i` at `pd_urls[i]`), for
    /// a cluster of another size served on the same network.
    pub fn set_pd_urls(&mut self, pd_urls: Vec<String>) {
        self.pd_urls = pd_urls;
    }

    /// True once [`Network::heal`] turned the network reliable.
    pub fn is_calm(&self) -> bool {
        self.calm
    }

    /// One message's one-way latency.
    pub fn latency(&self, rng: &mut Rng) -> Duration {
        let s = &self.swarm;
        let (min, jitter, tail_p, tail) =
            (s.latency_min, s.latency_jitter, s.tail_permille, s.tail);
        let mut d = min + rng.gen_duration(jitter);
        // A healed network has no slow tail either: quiescence operations
        // must not miss deadlines because of it.
        if self.chance(rng, tail_p) {
            d += rng.gen_duration(tail);
        }
        d
    }

    /// A trouble with `permille` chance, never on a healed network.
    pub fn chance(&self, rng: &mut Rng, permille: u64) -> bool {
        !self.calm && rng.gen_ratio(permille, 1000)
    }

    /// A request leaves its client: `None` when it is lost on the way,
    /// else how long it travels.
    pub fn request_delay(&self, rng: &mut Rng) -> Option<Duration> {
        if self.chance(rng, self.swarm.drop_request_permille) {
            return None;
        }
        Some(self.latency(rng))
    }

    /// The server answered client `client`'s request to `endpoint`, `late`
    /// after it handled it (a slow store's latency, [`Cluster::store_latency`]):
    /// `None` when the answer is lost (a partition, or by chance after the
    /// server applied the request), else its delays.
    pub fn answer_delay(
        &self,
        rng: &mut Rng,
        client: usize,
        endpoint: Option<Endpoint>,
        late: Duration,
    ) -> Option<AnswerDelay> {
        if self.is_cut(client, endpoint) || self.chance(rng, self.swarm.drop_response_permille) {
            return None;
        }
        let first = late + self.latency(rng);
        let duplicate = self.chance(rng, self.swarm.duplicate_permille).then(|| self.latency(rng));
        Some(AnswerDelay { first, duplicate })
    }

    /// The PD member at `addr` (with or without a scheme).
    pub fn pd_member(&self, addr: &str) -> Option<usize> {
        let bare =
            |s: &str| s.trim_start_matches("http://").trim_start_matches("https://").to_owned();
        self.pd_urls.iter().position(|u| bare(u) == bare(addr))
    }

    /// The endpoint a request to `target` goes to (`None`: nowhere on the
    /// network, e.g. an unknown PD address).
    pub fn endpoint(&self, target: &Target) -> Option<Endpoint> {
        match target {
            Target::Store { store_id, .. } => Some(Endpoint::Store(*store_id)),
            Target::Pd { addr } => self.pd_member(addr).map(Endpoint::Pd),
            Target::Oracle => None,
        }
    }

    /// Where a request to `target` that reached `endpoint` is served: there,
    /// or, when it asks a store to forward it (`tikv-forwarded-host`), at
    /// the store TiKV hands it to ([`Cluster::forward`]); the error is the
    /// proxy's answer when it cannot. The answer goes back the way the
    /// request came.
    pub fn serving(
        cluster: &Cluster,
        target: &Target,
        endpoint: Option<Endpoint>,
    ) -> Result<Served, RpcError> {
        match (target, endpoint) {
            (Target::Store { forwarded_host: Some(host), .. }, Some(Endpoint::Store(proxy))) => {
                let to = cluster.forward(proxy, host)?;
                Ok(Served { at: Some(Endpoint::Store(to)), forwarded_by: Some(proxy) })
            }
            _ => Ok(Served { at: endpoint, forwarded_by: None }),
        }
    }

    /// True when `client` is cut off from `endpoint`.
    pub fn is_cut(&self, client: usize, endpoint: Option<Endpoint>) -> bool {
        endpoint.is_some_and(|e| self.partitions.contains(&(client, e)))
    }

    /// Carries out `fault` on `cluster`. `split_key` names the key a
    /// [`Fault::Split`] splits at (`None`: nowhere to split). Returns a
    /// description for the trace and, for a fault that heals by itself,
    /// when and how. Nothing happens on a healed network.
    pub fn apply_fault(
        &mut self,
        cluster: &Cluster,
        fault: &Fault,
        split_key: impl FnOnce(u32) -> Option<Vec<u8>>,
    ) -> (String, Option<(Duration, Recovery)>) {
        let outcome = match fault {
            Fault::Split(k) => match split_key(*k) {
                Some(key) => {
                    let at = String::from_utf8_lossy(&key).into_owned();
                    format!("at {at}: {:?}", cluster.split(&key))
                }
                None => "no key to split at".into(),
            },
            Fault::Merge(i) => {
                let regions = cluster.regions();
                let i = i % regions.len();
                match regions.get(i + 1) {
                    Some(right) => format!("{:?}", cluster.merge(regions[i].id, right.id)),
                    None => "only one region".into(),
                }
            }
            Fault::TransferLeader(i, p) => {
                let regions = cluster.regions();
                let region = &regions[i % regions.len()];
                let peer = &region.peers[p % region.peers.len().max(1)];
                format!("{:?}", cluster.transfer_leader(region.id, peer.store_id))
            }
            Fault::StoreDown(s, d) => {
                let r = cluster.stop_store(*s);
                return (format!("{r:?}"), Some((*d, Recovery::StoreUp(*s))));
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
                cluster.inject_region_error(Filter::any().store(*s), busy, *n);
                "injected".into()
            }
            Fault::StoreLatency(s, extra, d) => {
                cluster.set_store_latency(*s, *extra);
                return ("late".into(), Some((*d, Recovery::StoreOnTime(*s, *extra))));
            }
            Fault::PdLeader(m) => format!("{:?}", cluster.set_pd_leader(*m)),
            Fault::PdStale(d) => {
                cluster.set_pd_stale(true);
                return ("frozen".into(), Some((*d, Recovery::PdFresh)));
            }
            Fault::PartitionStore(c, s, d) => {
                let e = Endpoint::Store(*s);
                self.partitions.insert((*c, e));
                return ("cut".into(), Some((*d, Recovery::Reconnect(*c, e))));
            }
            Fault::PartitionPd(c, m, d) => {
                let e = Endpoint::Pd(*m);
                self.partitions.insert((*c, e));
                return ("cut".into(), Some((*d, Recovery::Reconnect(*c, e))));
            }
            Fault::CrashProcess(_) => {
                "ignored: no processes here (the simulated platform's)".into()
            }
        };
        (outcome, None)
    }

    /// Ends a fault; returns a line for the trace, if anything happened (a
    /// store stays as the heal left it once the network is calm).
    pub fn recover(&mut self, cluster: &Cluster, recovery: Recovery) -> Option<String> {
        match recovery {
            Recovery::StoreUp(s) => {
                if self.calm {
                    return None;
                }
                let r = cluster.start_store(s);
                Some(format!("heal: store {s} up: {r:?}"))
            }
            Recovery::Reconnect(c, e) => {
                self.partitions.remove(&(c, e));
                Some(format!("heal: client {c} reconnects to {e:?}"))
            }
            Recovery::PdFresh => {
                cluster.set_pd_stale(false);
                Some("heal: PD region view refreshed".into())
            }
            Recovery::StoreOnTime(s, extra) => {
                if cluster.store_latency(s) != extra {
                    return None;
                }
                cluster.set_store_latency(s, Duration::ZERO);
                Some(format!("heal: store {s} answers on time"))
            }
        }
    }

    /// Heals everything: stopped stores start, partitions close, PD's
    /// region view is fresh, injected errors and store latencies are gone,
    /// and from now on no message is lost, duplicated or slowed by the
    /// tail.
    pub fn heal(&mut self, cluster: &Cluster) {
        self.calm = true;
        for s in cluster.store_ids() {
            if !cluster.is_store_running(s) {
                let _ = cluster.start_store(s);
            }
        }
        self.partitions.clear();
        cluster.set_pd_stale(false);
        cluster.clear_injections();
        cluster.clear_store_latencies();
    }
}
