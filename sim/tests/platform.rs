//! The simulated platform (`tikv_sim::platform`): its executor's virtual
//! time and ordering, failure reports, replay, and user-style workloads on
//! the public clients under the seeded faults, each checked for its
//! invariant over many seeds.
//!
//! `TIKV_SIM_SEEDS=n` sets the seeds of every sweep (default: 200 for the
//! bank and the raw writes, 50 for the world's workloads, seconds in
//! debug; 1,000 each pass in release in about 20 s).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tikv_sim::platform::{Error, RawClient, Sim, SimConfig, TransactionClient, simulate, sweep};
use tikv_sim::world::Fault;

fn seeds(default: u64) -> u64 {
    std::env::var("TIKV_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn assert_no_failures(failures: &[tikv_sim::platform::SimFailure], seeds: u64) {
    if let Some(first) = failures.first() {
        let all: Vec<u64> = failures.iter().map(|f| f.seed).collect();
        panic!("{} of {seeds} seeds failed ({all:?}); the first:\n{first}", failures.len());
    }
}

#[test]
fn a_ten_second_sleep_takes_no_wall_time() {
    let wall = std::time::Instant::now();
    let report = simulate(1, SimConfig::default(), |sim| async move {
        let start = sim.now();
        sim.sleep(Duration::from_secs(10)).await;
        Ok::<_, Error>(sim.now().saturating_duration_since(start))
    })
    .unwrap();
    assert_eq!(report.output, Duration::from_secs(10));
    assert!(wall.elapsed() < Duration::from_secs(1), "{:?}", wall.elapsed());
}

#[test]
fn timers_fire_in_deadline_order_ties_in_arming_order() {
    let report = simulate(2, SimConfig::default(), |sim| async move {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        // Spawned in this order; ids 1 and 3 share a deadline.
        for (id, ms) in [(0, 30), (1, 10), (2, 20), (3, 10), (4, 0)] {
            let (sim2, order) = (sim.clone(), order.clone());
            handles.push(sim.spawn(async move {
                sim2.sleep(Duration::from_millis(ms)).await;
                order.lock().unwrap().push((id, sim2.now().as_nanos() / 1_000_000));
            }));
        }
        for h in handles {
            h.await;
        }
        let order = order.lock().unwrap().clone();
        Ok::<_, Error>(order)
    })
    .unwrap();
    assert_eq!(report.output, vec![(4, 0), (1, 10), (3, 10), (2, 20), (0, 30)]);
    assert_eq!(report.stats.timers, 4, "a zero sleep needs no timer");
}

#[test]
fn failures_name_the_seed() {
    let err = simulate(11, SimConfig::default(), |_sim| async move { Err::<(), _>("broken") })
        .unwrap_err();
    assert_eq!(err.seed, 11);
    assert!(err.to_string().contains("seed 11"), "{err}");
    assert!(err.reason.contains("broken"), "{err}");

    let err = simulate(12, SimConfig::default(), |sim| async move {
        sim.sleep(Duration::from_millis(5)).await;
        let task = sim.spawn(async { panic!("invariant broken in a task") });
        task.await;
        Ok::<(), Error>(())
    })
    .unwrap_err();
    assert_eq!(err.seed, 12);
    assert!(err.reason.contains("invariant broken in a task"), "{err}");

    // Waiting for something nobody will ever do.
    let err = simulate(13, SimConfig::default(), |_sim| async move {
        futures::future::pending::<()>().await;
        Ok::<(), Error>(())
    })
    .unwrap_err();
    assert!(err.reason.starts_with("deadlock"), "{err}");

    // With a client, its periodic tasks keep time moving: the limit ends it.
    let config =
        SimConfig { time_limit: tikv_core::time::Duration::from_secs(120), ..SimConfig::default() };
    let err = simulate(14, config, |sim| async move {
        let _raw = sim.raw_client().await?;
        futures::future::pending::<()>().await;
        Ok::<(), Error>(())
    })
    .unwrap_err();
    assert!(err.reason.contains("time limit"), "{err}");
}

#[test]
fn clients_are_built_only_inside_a_simulation() {
    let config = tikv_core::config::Config::default().with_pd_endpoints(["pd:2379"]);
    let r = futures::executor::block_on(tikv_sim::platform::RawClient::connect_with_config(config));
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{:?}", r.err());
}

/// A test's own cluster replaces the drawn one before the first client,
/// its PD members at addresses the simulated network resolves; after a
/// client exists it is refused. Outside a simulation there is no current
/// one.
#[test]
fn a_test_serves_its_own_cluster_before_its_first_client() {
    assert!(Sim::current().is_none());
    let report = simulate(3, SimConfig::default(), |sim| async move {
        assert_eq!(Sim::current().map(|s| s.seed()), Some(3));
        let config = tikv_sim::ClusterConfig {
            pd_members: 2,
            split_keys: vec![b"m".to_vec(), b"t".to_vec()],
            ..Default::default()
        };
        let cluster = sim.replace_cluster(config)?;
        assert_eq!(cluster.regions().len(), 3);
        assert_eq!(sim.pd_urls().len(), 2);
        let endpoints = sim.pd_urls();
        let raw = RawClient::connect_with_config(sim.config().with_pd_endpoints(endpoints)).await?;
        raw.put("a", "1").await?;
        raw.put("z", "2").await?;
        assert_eq!(sim.cluster().raw_snapshot("default").len(), 2);
        assert_eq!(cluster.raw_snapshot("default").len(), 2, "the clients use the new cluster");
        let again = sim.replace_cluster(tikv_sim::ClusterConfig::default());
        assert!(matches!(again, Err(Error::InvalidArgument(_))), "{:?}", again.err());
        Ok::<_, Error>(())
    });
    report.unwrap_or_else(|failure| panic!("{failure}"));
    assert!(Sim::current().is_none(), "the run leaves no simulation behind");
}

/// Raw and transactional traffic under the seed's faults, for replay.
async fn mixed(sim: Sim) -> Result<String, Error> {
    let raw = sim.raw_client().await?;
    let txns = sim.txn_client().await?;
    let mut errors = 0;
    for i in 0..8 {
        if raw.put(format!("r{i}"), format!("v{i}")).await.is_err() {
            errors += 1;
        }
        let mut txn = txns.begin().await?;
        let _ = txn.get(format!("t{}", i % 3)).await;
        txn.put(format!("t{}", i % 3), format!("{i}"))?;
        if txn.commit().await.is_err() {
            errors += 1;
        }
        sim.sleep(Duration::from_millis(50)).await;
    }
    Ok(format!("{errors} errors"))
}

#[test]
fn a_seed_replays_byte_for_byte_and_seeds_differ() {
    let config = SimConfig { trace: true, ..SimConfig::chaos() };
    let mut hashes = Vec::new();
    for seed in [3, 4] {
        let a = simulate(seed, config.clone(), mixed).unwrap_or_else(|f| panic!("{f}"));
        let b = simulate(seed, config.clone(), mixed).unwrap_or_else(|f| panic!("{f}"));
        assert!(a.stats.rpcs > 20, "{:?}", a.stats);
        assert_eq!(a.trace, b.trace, "seed {seed} did not replay");
        assert_eq!(a.trace_hash, b.trace_hash);
        assert_eq!(a.stats, b.stats);
        assert_eq!(a.output, b.output);
        hashes.push(a.trace_hash);
    }
    assert_ne!(hashes[0], hashes[1], "different seeds gave the same run");
    // The world's workloads through the public clients replay too.
    let a = tikv_sim::platform::run_txn_world(5, SimConfig::chaos()).unwrap();
    let b = tikv_sim::platform::run_txn_world(5, SimConfig::chaos()).unwrap();
    assert_eq!((a.trace_hash, &a.output, &a.stats), (b.trace_hash, &b.output, &b.stats));
    let c = tikv_sim::platform::run_raw_world(5, SimConfig::chaos()).unwrap();
    let d = tikv_sim::platform::run_raw_world(5, SimConfig::chaos()).unwrap();
    assert_eq!((c.trace_hash, &c.output, &c.stats), (d.trace_hash, &d.output, &d.stats));
    // The hash alone tells runs apart (the trace text need not be kept).
    let quiet = simulate(3, SimConfig::chaos(), mixed).unwrap();
    assert_eq!(quiet.trace_hash, hashes[0]);
    assert!(quiet.trace.is_empty());
}

/// Backoff budgets far below client-go's, as an impatient application
/// sets them: under faults, operations give up, and failed and
/// undetermined outcomes reach the application.
fn impatient(sim: &Sim) -> tikv_core::config::Config {
    let ms = Duration::from_millis;
    let mut budgets = tikv_core::config::BackoffBudgets::default();
    for budget in [
        &mut budgets.tso,
        &mut budgets.raw,
        &mut budgets.get,
        &mut budgets.batch_get,
        &mut budgets.scan,
        &mut budgets.prewrite,
        &mut budgets.commit,
        &mut budgets.locate_region,
    ] {
        *budget = ms(300);
    }
    sim.config().with_backoff_budgets(budgets)
}

/// An impatient transactional client; connecting is retried, as an
/// application retries it while PD is unreachable.
async fn impatient_txn_client(sim: &Sim) -> TransactionClient {
    loop {
        match TransactionClient::connect_with_config(impatient(sim)).await {
            Ok(client) => return client,
            Err(_) => sim.sleep(Duration::from_millis(100)).await,
        }
    }
}

/// An impatient RawKV client (see [`impatient_txn_client`]).
async fn impatient_raw_client(sim: &Sim) -> RawClient {
    loop {
        match RawClient::connect_with_config(impatient(sim)).await {
            Ok(client) => return client,
            Err(_) => sim.sleep(Duration::from_millis(100)).await,
        }
    }
}

/// How many operations the sweeps saw fail: the tests check the faults
/// reached the application.
static GAVE_UP: AtomicU64 = AtomicU64::new(0);

const ACCOUNTS: u32 = 4;
const START_BALANCE: i64 = 100;

fn account(i: u32) -> String {
    format!("acct/{i}")
}

fn parse_balance(v: Option<impl AsRef<[u8]>>) -> Result<i64, Error> {
    let v = v.ok_or_else(|| Error::Internal("an account disappeared".into()))?;
    String::from_utf8_lossy(v.as_ref())
        .parse()
        .map_err(|e| Error::Internal(format!("balance: {e}")))
}

/// One transfer: read two balances, move `amount`, commit.
async fn transfer(txns: &TransactionClient, from: u32, to: u32, amount: i64) -> Result<(), Error> {
    let mut txn = txns.begin().await?;
    let a = parse_balance(txn.get(account(from)).await?)?;
    let b = parse_balance(txn.get(account(to)).await?)?;
    txn.put(account(from), (a - amount).to_string())?;
    txn.put(account(to), (b + amount).to_string())?;
    txn.commit().await.map(drop)
}

/// Every balance, read in one snapshot after the faults healed.
async fn audit(sim: &Sim, txns: &TransactionClient) -> Result<BTreeMap<u32, i64>, Error> {
    let mut last = None;
    // Past the heal, a read may still meet the locks of transactions whose
    // commits were lost; it resolves them (after their TTL) and succeeds.
    for _ in 0..5 {
        let ts = txns.current_timestamp().await?;
        let snapshot = txns.snapshot(ts);
        let keys: Vec<String> = (0..ACCOUNTS).map(account).collect();
        match snapshot.batch_get(keys).await {
            Ok(pairs) => {
                let mut out = BTreeMap::new();
                for p in pairs {
                    let key = String::from_utf8_lossy(p.key.as_bytes()).into_owned();
                    let i: u32 = key.trim_start_matches("acct/").parse().unwrap();
                    out.insert(i, parse_balance(Some(&p.value))?);
                }
                return Ok(out);
            }
            Err(e) => last = Some(e),
        }
        sim.sleep(Duration::from_secs(1)).await;
    }
    Err(last.unwrap())
}

/// A bank: concurrent transfers between accounts over the seed's faults
/// (leader moves, splits, lost answers, partitions, store and PD outages);
/// the total never changes, whatever each transfer's outcome.
async fn bank(sim: Sim) -> Result<(), Error> {
    let setup = sim.txn_client().await?;
    let mut txn = setup.begin().await?;
    for i in 0..ACCOUNTS {
        txn.put(account(i), START_BALANCE.to_string())?;
    }
    txn.commit().await?;
    let mut tellers = Vec::new();
    for t in 0..3u32 {
        let sim2 = sim.clone();
        // One patient teller (client-go's budgets), two impatient ones.
        let txns = match t {
            0 => sim.txn_client().await?,
            _ => impatient_txn_client(&sim).await,
        };
        tellers.push(sim.spawn(async move {
            let mut committed = 0;
            // Transfers go on through the whole fault window.
            let until = sim2.heal_at().unwrap_or(tikv_core::time::Instant::ZERO);
            let mut n = 0u32;
            while n < 6 || sim2.now() < until {
                n += 1;
                let from = (t + n) % ACCOUNTS;
                let to = (from + 1 + n % (ACCOUNTS - 1)) % ACCOUNTS;
                // Failed and undetermined transfers are fine: atomicity is
                // what the audit checks.
                match transfer(&txns, from, to, i64::from(n + 1)).await {
                    Ok(()) => committed += 1,
                    Err(_) => drop(GAVE_UP.fetch_add(1, Ordering::Relaxed)),
                }
                sim2.sleep(Duration::from_millis(100 * u64::from(t + 1))).await;
            }
            committed
        }));
    }
    let mut committed = 0;
    for teller in tellers {
        committed += teller.await;
    }
    if let Some(at) = sim.heal_at() {
        sim.sleep_until(at).await;
    }
    let balances = audit(&sim, &setup).await?;
    sim.log(format!("{committed} transfers committed; balances {balances:?}"));
    let total: i64 = balances.values().sum();
    if balances.len() != ACCOUNTS as usize || total != START_BALANCE * i64::from(ACCOUNTS) {
        return Err(Error::Internal(format!("the bank lost money: {balances:?}")));
    }
    Ok(())
}

#[test]
fn bank_keeps_its_total_under_faults() {
    let n = seeds(200);
    let before = GAVE_UP.load(Ordering::Relaxed);
    let failures = sweep(0..n, &SimConfig::chaos(), bank);
    assert_no_failures(&failures, n);
    assert!(GAVE_UP.load(Ordering::Relaxed) > before, "no transfer ever failed: no faults?");
}

/// A broken bank: its tellers "transfer" in two transactions (debit, then
/// credit) and shrug off a failed credit, so money vanishes when a fault
/// strikes between the two.
async fn non_atomic_bank(sim: Sim) -> Result<(), Error> {
    let setup = sim.txn_client().await?;
    let mut txn = setup.begin().await?;
    for i in 0..ACCOUNTS {
        txn.put(account(i), START_BALANCE.to_string())?;
    }
    txn.commit().await?;
    let mut tellers = Vec::new();
    for t in 0..3u32 {
        let sim2 = sim.clone();
        let txns = impatient_txn_client(&sim).await;
        tellers.push(sim.spawn(async move {
            let until = sim2.heal_at().unwrap_or(tikv_core::time::Instant::ZERO);
            let mut n = 0;
            while sim2.now() < until {
                n += 1;
                let (from, to) = ((t + n) % ACCOUNTS, (t + n + 1) % ACCOUNTS);
                let debited: Result<_, Error> = async {
                    let mut debit = txns.begin().await?;
                    let a = parse_balance(debit.get(account(from)).await?)?;
                    debit.put(account(from), (a - 1).to_string())?;
                    debit.commit().await
                }
                .await;
                if debited.is_ok() {
                    // The bug: a failed credit is forgotten.
                    let _ = async {
                        let mut credit = txns.begin().await?;
                        let b = parse_balance(credit.get(account(to)).await?)?;
                        credit.put(account(to), (b + 1).to_string())?;
                        credit.commit().await
                    }
                    .await;
                }
                sim2.sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    for teller in tellers {
        teller.await;
    }
    let balances = audit(&sim, &setup).await?;
    let total: i64 = balances.values().sum();
    if total != START_BALANCE * i64::from(ACCOUNTS) {
        return Err(Error::Internal(format!("total {total}: {balances:?}")));
    }
    Ok(())
}

/// The sweep catches the broken bank (its failed credits are write
/// conflicts with the other tellers, or faults).
#[test]
fn the_sweep_catches_a_non_atomic_bank() {
    let failures = sweep(0..20, &SimConfig::chaos(), non_atomic_bank);
    assert!(
        failures.iter().any(|f| f.reason.contains("total")),
        "no seed caught the broken bank: {:?}",
        failures.iter().map(|f| &f.reason).collect::<Vec<_>>()
    );
}

/// Raw writes under faults: every acknowledged write is read back after
/// the heal, and nothing appears that was never written.
async fn raw_durability(sim: Sim) -> Result<(), Error> {
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut writers = Vec::new();
    for w in 0..3u32 {
        let raw = match w {
            0 => sim.raw_client().await?,
            _ => impatient_raw_client(&sim).await,
        };
        let (sim2, acked) = (sim.clone(), acked.clone());
        writers.push(sim.spawn(async move {
            let until = sim2.heal_at().unwrap_or(tikv_core::time::Instant::ZERO);
            let mut i = 0u32;
            while i < 8 || sim2.now() < until {
                i += 1;
                let (key, value) = (format!("w{w}/{i:03}"), format!("{w}:{i}"));
                match raw.put(key.clone(), value.clone()).await {
                    Ok(()) => drop(acked.lock().unwrap().insert(key, value)),
                    Err(_) => drop(GAVE_UP.fetch_add(1, Ordering::Relaxed)),
                }
                sim2.sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    for w in writers {
        w.await;
    }
    if let Some(at) = sim.heal_at() {
        sim.sleep_until(at).await;
    }
    let reader = sim.raw_client().await?;
    let pairs = reader.scan("w".to_owned().."x".to_owned(), 1000).await?;
    let found: BTreeMap<String, String> = pairs
        .iter()
        .map(|p| {
            let k = String::from_utf8_lossy(p.key.as_bytes()).into_owned();
            (k, String::from_utf8_lossy(&p.value).into_owned())
        })
        .collect();
    let acked = acked.lock().unwrap().clone();
    for (k, v) in &acked {
        if found.get(k) != Some(v) {
            return Err(Error::Internal(format!("acknowledged {k}={v} lost: {:?}", found.get(k))));
        }
    }
    for (k, v) in &found {
        // Unacknowledged writes may have happened; a value never written
        // may not.
        let (w, i) = k.trim_start_matches('w').split_once('/').unwrap();
        if *v != format!("{w}:{}", i.trim_start_matches('0').parse::<u32>().unwrap_or(0)) {
            return Err(Error::Internal(format!("phantom {k}={v}")));
        }
    }
    // Point reads agree with the scan.
    for (k, v) in acked.iter().take(3) {
        let got = reader.get(k.clone()).await?;
        if got.as_deref() != Some(v.as_bytes()) {
            return Err(Error::Internal(format!("get {k}: {got:?}, scan {v}")));
        }
    }
    Ok(())
}

#[test]
fn raw_writes_survive_faults() {
    let n = seeds(200);
    let before = GAVE_UP.load(Ordering::Relaxed);
    let failures = sweep(0..n, &SimConfig::chaos(), raw_durability);
    assert_no_failures(&failures, n);
    assert!(GAVE_UP.load(Ordering::Relaxed) > before, "no write ever failed: no faults?");
}

#[test]
fn user_faults_apply_and_heal() {
    let report = simulate(5, SimConfig::default(), |sim| async move {
        let raw = sim.raw_client().await?;
        raw.put("a", "1").await?;
        raw.put("m", "2").await?;
        let before = sim.cluster().regions().len();
        sim.fault(Fault::Split(1));
        sim.fault(Fault::TransferLeader(0, 1));
        let after = sim.cluster().regions().len();
        // Partition the only client from every store: its get cannot
        // succeed until the partitions heal.
        for s in sim.cluster().store_ids() {
            sim.fault(Fault::PartitionStore(0, s, tikv_core::time::Duration::from_secs(2)));
        }
        let start = sim.now();
        let v = raw.get("m").await?;
        let waited = sim.now().saturating_duration_since(start);
        Ok::<_, Error>((before, after, v, waited))
    })
    .unwrap_or_else(|f| panic!("{f}"));
    let (before, after, v, waited) = report.output;
    assert_eq!(after, before + 1, "the split happened");
    assert_eq!(v.as_deref(), Some(&b"2"[..]), "the client went around the faults");
    assert!(waited >= Duration::from_secs(1), "the partition held the read back: {waited:?}");
}

/// The seeded world's raw workload through the public `RawClient` on the
/// platform, checked for per-key linearizability.
#[test]
fn raw_world_through_the_public_client_is_linearizable() {
    let n = seeds(50);
    let mut ops = 0;
    let mut undetermined = 0;
    for seed in 0..n {
        match tikv_sim::platform::run_raw_world(seed, SimConfig::chaos()) {
            Ok(report) => {
                ops += report.output.ops;
                undetermined += report.output.outcomes.2;
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    assert!(ops > 10 * n as usize, "{ops} ops");
    assert!(undetermined > 0, "no operation was ever undetermined: no faults?");
}

/// The seeded world's transactional workload through the public
/// `TransactionClient` on the platform, checked for snapshot isolation,
/// honest outcomes, the bank total and list-append anomalies.
#[test]
fn txn_world_through_the_public_client_keeps_snapshot_isolation() {
    let n = seeds(50);
    let (mut txns, mut failed, mut undetermined, mut crashes) = (0, 0, 0, 0);
    for seed in 0..n {
        match tikv_sim::platform::run_txn_world(seed, SimConfig::chaos()) {
            Ok(report) => {
                txns += report.output.txns;
                failed += report.output.outcomes.1;
                undetermined += report.output.outcomes.2;
                crashes += report.output.crashes;
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    assert!(txns > 5 * n as usize, "{txns} transactions");
    assert!(failed > 0, "no transaction ever failed: no faults?");
    // Clients crashed mid-commit, their transactions undetermined.
    assert!(crashes > 0 && undetermined > 0, "{crashes} crashes, {undetermined} undetermined");
    println!(
        "{txns} transactions, {failed} failed, {undetermined} undetermined, {crashes} crashes"
    );
}

/// The seeded world's pessimistic workload through the public
/// `TransactionClient` on the platform (locked transfers and counter
/// increments, fair locking, lock waits in the stores, deadlocks), checked
/// for snapshot isolation with the pessimistic guarantee, the bank total,
/// lost counter updates and deadlock victims; a seed replays.
#[test]
fn pess_world_through_the_public_client_keeps_its_guarantees() {
    let n = seeds(50);
    let (mut txns, mut failed, mut crashes, mut lock_waits) = (0, 0, 0, 0);
    let mut holders = (0, 0);
    for seed in 0..n {
        match tikv_sim::platform::run_pess_world(seed, SimConfig::chaos()) {
            Ok(report) => {
                holders.0 += report.output.crashed_lock_holders.0;
                holders.1 += report.output.crashed_lock_holders.1;
                txns += report.output.txns;
                failed += report.output.outcomes.1;
                crashes += report.output.crashes;
                lock_waits += report.stats.lock_waits;
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    assert!(txns > 5 * n as usize, "{txns} transactions");
    assert!(failed > 0, "no transaction ever failed: no faults?");
    assert!(lock_waits > 0, "no lock request ever waited in a store");
    assert!(crashes > 0, "no client ever crashed");
    // Some clients crashed holding pessimistic locks before committing.
    assert!(holders.0 + holders.1 > 0, "no client crashed holding locks: {holders:?}");
    let a = tikv_sim::platform::run_pess_world(3, SimConfig::chaos()).unwrap();
    let b = tikv_sim::platform::run_pess_world(3, SimConfig::chaos()).unwrap();
    assert_eq!(a.trace_hash, b.trace_hash);
    println!(
        "{txns} transactions, {failed} failed, {crashes} crashes ({holders:?} holding locks), \
         {lock_waits} lock waits"
    );
}

/// The GC world through the public `TransactionClient`: GC rounds,
/// old-ts readers and `delete_range` beside transacting (and crashing)
/// clients, checked by the core-level GC world's checkers on top of the
/// transactional ones; a seed replays.
#[test]
fn gc_world_through_the_public_client_keeps_its_guarantees() {
    let n = seeds(50);
    let (mut txns, mut crashes) = (0, 0);
    let mut gc = tikv_sim::world::GcStats::default();
    for seed in 0..n {
        match tikv_sim::platform::run_gc_world(seed, SimConfig::chaos()) {
            Ok(report) => {
                txns += report.output.txns;
                crashes += report.output.crashes;
                let g = &report.output.gc;
                gc.rounds.0 += g.rounds.0;
                gc.collected_versions += g.collected_versions;
                gc.reads_served += g.reads_served;
                gc.reads_refused += g.reads_refused;
                gc.delete_ranges.0 += g.delete_ranges.0;
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    assert!(txns > 5 * n as usize, "{txns} transactions");
    assert!(crashes > 0, "no client ever crashed");
    assert!(gc.rounds.0 > 0 && gc.collected_versions > 0, "no GC round collected: {gc:?}");
    assert!(gc.reads_served > 0 && gc.reads_refused > 0, "readers: {gc:?}");
    assert!(gc.delete_ranges.0 > 0, "no delete_range completed: {gc:?}");
    let a = tikv_sim::platform::run_gc_world(4, SimConfig::chaos()).unwrap();
    let b = tikv_sim::platform::run_gc_world(4, SimConfig::chaos()).unwrap();
    assert_eq!(a.trace_hash, b.trace_hash);
    println!("{txns} transactions, {crashes} crashes, GC: {gc:?}");
}

fn pessimistic() -> tikv_driver::TransactionOptions {
    tikv_driver::TransactionOptions::default().with_pessimistic()
}

/// A pessimistic lock request that meets another transaction's lock waits
/// in the store (TiKV's lock manager, on the virtual clock) and is woken
/// when the holder commits; it then reads the holder's value.
#[test]
fn pessimistic_locks_wait_in_the_stores_in_virtual_time() {
    let report = simulate(21, SimConfig::default(), |sim| async move {
        let txns = sim.txn_client().await?;
        let mut setup = txns.begin().await?;
        setup.put("k", "0")?;
        setup.commit().await?;
        let mut holder = txns.begin_with_options(pessimistic()).await?;
        holder.lock_keys(["k"], tikv_driver::LockOptions::default()).await?;
        let (sim2, txns2) = (sim.clone(), txns.clone());
        let waiter = sim.spawn(async move {
            let mut txn = txns2.begin_with_options(pessimistic()).await?;
            let start = sim2.now();
            let seen = txn.get_for_update("k").await?;
            let waited = sim2.now().saturating_duration_since(start);
            txn.put("k", "2")?;
            txn.commit().await?;
            Ok::<_, Error>((seen, waited))
        });
        sim.sleep(Duration::from_secs(3)).await;
        holder.put("k", "1")?;
        holder.commit().await?;
        let (seen, waited) = waiter.await?;
        let last = txns.snapshot(txns.current_timestamp().await?).get("k").await?;
        Ok::<_, Error>((seen, waited, last, sim.cluster().lock_waiters()))
    })
    .unwrap_or_else(|f| panic!("{f}"));
    let (seen, waited, last, parked) = report.output;
    assert_eq!(seen.as_deref(), Some(&b"1"[..]), "the waiter read the holder's commit");
    assert!(waited >= Duration::from_millis(2900), "it waited for the holder: {waited:?}");
    assert_eq!(last.as_deref(), Some(&b"2"[..]));
    assert!(report.stats.lock_waits > 0, "{:?}", report.stats);
    assert_eq!(parked, 0, "no request left parked");
}

/// Two pessimistic transactions locking two keys in opposite orders: the
/// simulated TiKV's deadlock detector fails one, the other commits.
#[test]
fn a_pessimistic_deadlock_fails_one_side_and_the_other_commits() {
    let report = simulate(22, SimConfig::default(), |sim| async move {
        let txns = sim.txn_client().await?;
        let mut sides = Vec::new();
        for (first, second) in [("a", "b"), ("b", "a")] {
            let (sim2, txns2) = (sim.clone(), txns.clone());
            sides.push(sim.spawn(async move {
                let mut txn = txns2.begin_with_options(pessimistic()).await?;
                txn.lock_keys([first], tikv_driver::LockOptions::default()).await?;
                sim2.sleep(Duration::from_millis(100)).await;
                let locked = txn.lock_keys([second], tikv_driver::LockOptions::default()).await;
                match locked {
                    Ok(_) => {
                        txn.put(first, second)?;
                        txn.commit().await.map(|_| "committed")
                    }
                    Err(Error::Deadlock { .. }) => {
                        txn.rollback().await?;
                        Ok("deadlock")
                    }
                    Err(e) => Err(e),
                }
            }));
        }
        let mut outcomes = Vec::new();
        for side in sides {
            outcomes.push(side.await?);
        }
        Ok::<_, Error>(outcomes)
    })
    .unwrap_or_else(|f| panic!("{f}"));
    let mut outcomes = report.output;
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["committed", "deadlock"]);
    assert!(report.stats.lock_waits > 0, "{:?}", report.stats);
}

/// Lock waits seen by the pessimistic counter sweep: the test checks the
/// stores' lock manager served some.
static LOCK_WAITS: AtomicU64 = AtomicU64::new(0);

/// Pessimistic counters under faults: three clients increment one counter
/// with `get_for_update` + put; its final value lies between the committed
/// increments and those plus the undetermined ones (no update lost, none
/// invented).
async fn pessimistic_counter(sim: Sim) -> Result<(), Error> {
    let setup = sim.txn_client().await?;
    let mut txn = setup.begin().await?;
    txn.put("counter", "0")?;
    txn.commit().await?;
    let mut workers = Vec::new();
    for w in 0..3u32 {
        let txns = match w {
            0 => sim.txn_client().await?,
            _ => impatient_txn_client(&sim).await,
        };
        let sim2 = sim.clone();
        workers.push(sim.spawn(async move {
            let (mut committed, mut undetermined) = (0i64, 0i64);
            let until = sim2.heal_at().unwrap_or(tikv_core::time::Instant::ZERO);
            let mut n = 0;
            while n < 4 || sim2.now() < until {
                n += 1;
                let attempt: Result<_, Error> = async {
                    let mut txn = txns.begin_with_options(pessimistic()).await?;
                    let v = parse_balance(txn.get_for_update("counter").await?)?;
                    txn.put("counter", (v + 1).to_string())?;
                    txn.commit().await
                }
                .await;
                match attempt {
                    Ok(_) => committed += 1,
                    Err(e) if e.is_undetermined() => undetermined += 1,
                    Err(_) => drop(GAVE_UP.fetch_add(1, Ordering::Relaxed)),
                }
                sim2.sleep(Duration::from_millis(50 * u64::from(w + 1))).await;
            }
            (committed, undetermined)
        }));
    }
    let (mut committed, mut undetermined) = (0, 0);
    for w in workers {
        let (c, u) = w.await;
        committed += c;
        undetermined += u;
    }
    if let Some(at) = sim.heal_at() {
        sim.sleep_until(at).await;
    }
    let mut last = None;
    for _ in 0..5 {
        let ts = setup.current_timestamp().await?;
        match setup.snapshot(ts).get("counter").await {
            Ok(v) => {
                last = Some(parse_balance(v)?);
                break;
            }
            Err(_) => sim.sleep(Duration::from_secs(1)).await,
        }
    }
    let value = last.ok_or_else(|| Error::Internal("the counter could not be read".into()))?;
    if value < committed || value > committed + undetermined {
        return Err(Error::Internal(format!(
            "counter {value}: {committed} increments committed, {undetermined} undetermined"
        )));
    }
    Ok(())
}

#[test]
fn pessimistic_counters_lose_no_update_under_faults() {
    let n = seeds(100);
    let config = SimConfig::chaos();
    let mut failures = Vec::new();
    for seed in 0..n {
        match simulate(seed, config.clone(), pessimistic_counter) {
            Ok(report) => drop(LOCK_WAITS.fetch_add(report.stats.lock_waits, Ordering::Relaxed)),
            Err(f) => failures.push(f),
        }
    }
    assert_no_failures(&failures, n);
    assert!(LOCK_WAITS.load(Ordering::Relaxed) > 0, "no lock request ever waited in a store");
}

/// A crashed process takes its clients' background tasks with it: with
/// nothing else alive, the simulation then has nothing left to run (a
/// live client's periodic tasks would keep the clock moving to the time
/// limit instead).
#[test]
fn a_crashed_process_takes_its_clients_background_tasks_with_it() {
    let config =
        SimConfig { time_limit: tikv_core::time::Duration::from_secs(120), ..SimConfig::default() };
    let err = simulate(31, config, |sim| async move {
        let sim2 = sim.clone();
        let process = sim.spawn_process(async move {
            let txns = sim2.txn_client().await?;
            let mut txn = txns.begin().await?;
            txn.put("k", "v")?;
            // Stays in flight until the crash.
            futures::future::pending::<()>().await;
            Ok::<_, Error>(())
        });
        sim.sleep(Duration::from_secs(5)).await;
        sim.crash(process.id());
        assert!(process.join().await.is_none(), "a crashed process has no output");
        assert_eq!(sim.current_process(), None);
        futures::future::pending::<()>().await;
        Ok::<(), Error>(())
    })
    .unwrap_err();
    assert!(err.reason.starts_with("deadlock"), "{err}");
    assert!(err.end < tikv_core::time::Instant::from_millis(10_000), "{err}");
}

/// A process that crashes holding a pessimistic lock (its keep-alive
/// dying with it) never blocks the key for good: another transaction's
/// lock call waits in the store, then resolves the lock once its TTL
/// (client-go's `ManagedLockTTL`, 20 s) ran out, and commits.
#[test]
fn a_lock_abandoned_by_a_crash_is_resolved_after_its_ttl() {
    let report = simulate(23, SimConfig::default(), |sim| async move {
        // A lock request may wait in TiKV for its `wait-for-lock-timeout`
        // (1 s): the call's deadline must be longer than [`Sim::config`]'s
        // 1 s, or the call, not TiKV, ends every wait.
        let config = sim.config().with_read_timeout_short(tikv_core::time::Duration::from_secs(2));
        let txns = TransactionClient::connect_with_config(config).await?;
        let mut setup = txns.begin().await?;
        setup.put("k", "0")?;
        setup.commit().await?;
        let sim2 = sim.clone();
        let (locked_tx, locked_rx) = futures::channel::oneshot::channel();
        let holder = sim.spawn_process(async move {
            let txns = sim2.txn_client().await?;
            let mut txn = txns.begin_with_options(pessimistic()).await?;
            txn.lock_keys(["k"], tikv_driver::LockOptions::default()).await?;
            let _ = locked_tx.send(());
            // Holds the lock (its keep-alive extending the TTL) until the
            // crash.
            futures::future::pending::<()>().await;
            Ok::<_, Error>(())
        });
        locked_rx.await.map_err(|_| Error::Internal("the holder never locked".into()))?;
        // Long enough for a keep-alive to have extended the lock once.
        sim.sleep(Duration::from_secs(15)).await;
        sim.crash(holder.id());
        let crashed_at = sim.now();
        let mut txn = txns.begin_with_options(pessimistic()).await?;
        txn.lock_keys(["k"], tikv_driver::LockOptions::default()).await?;
        let waited = sim.now().saturating_duration_since(crashed_at);
        txn.put("k", "1")?;
        txn.commit().await?;
        let last = txns.snapshot(txns.current_timestamp().await?).get("k").await?;
        Ok::<_, Error>((waited, last, sim.cluster().locks().len()))
    })
    .unwrap_or_else(|f| panic!("{f}"));
    let (waited, last, locks) = report.output;
    assert!(report.stats.lock_waits > 0, "the lock call waited in the store: {:?}", report.stats);
    assert!(waited >= Duration::from_secs(1), "the abandoned lock held it back: {waited:?}");
    assert!(waited <= Duration::from_secs(30), "no longer than the lock's TTL: {waited:?}");
    assert_eq!(last.as_deref(), Some(&b"1"[..]));
    assert_eq!(locks, 0, "no lock left");
}

/// A client that writes a counter key every 100 ms of virtual time from
/// its own process, recording when each write was acknowledged.
async fn ticking_writer(sim: Sim, name: &'static str, acks: Arc<Mutex<Vec<(String, u64)>>>) {
    let Ok(raw) = sim.raw_client().await else { return };
    for i in 0.. {
        if raw.put(format!("{name}-{i}"), "x").await.is_ok() {
            let at = sim.now().saturating_duration_since(tikv_core::time::Instant::ZERO);
            acks.lock().unwrap().push((name.to_owned(), at.as_millis() as u64));
        }
        sim.sleep(Duration::from_millis(100)).await;
    }
}

/// A crash in a user's fault schedule (`Fault::CrashProcess` through
/// `Sim::fault_at`) kills the named process at that virtual instant: its
/// last write came before, the others go on; the same seed replays the
/// same trace.
#[test]
fn a_scheduled_crash_kills_the_named_process_at_its_instant() {
    let run = || {
        simulate(41, SimConfig { trace: true, ..SimConfig::default() }, |sim| async move {
            let acks = Arc::new(Mutex::new(Vec::new()));
            let a = sim.spawn_process(ticking_writer(sim.clone(), "a", acks.clone()));
            let b = sim.spawn_process(ticking_writer(sim.clone(), "b", acks.clone()));
            let at = tikv_core::time::Instant::from_millis(5_000);
            sim.fault_at(at, Fault::CrashProcess(Some(a.id().number())));
            let joined = a.join().await;
            let crashed_at = sim.now();
            sim.sleep(Duration::from_secs(2)).await;
            sim.crash(b.id());
            let acks = acks.lock().unwrap().clone();
            Ok::<_, Error>((joined.is_none(), crashed_at, acks))
        })
        .unwrap_or_else(|f| panic!("{f}"))
    };
    let report = run();
    let (crashed, crashed_at, acks) = report.output;
    assert!(crashed, "the scheduled crash ended the process without an output");
    assert_eq!(crashed_at, tikv_core::time::Instant::from_millis(5_000), "at its instant");
    let last = |name: &str| acks.iter().filter(|(n, _)| n == name).map(|(_, t)| *t).max();
    let (last_a, last_b) = (last("a").unwrap_or(0), last("b").unwrap_or(0));
    assert!(last_a > 4_000 && last_a <= 5_000, "a wrote until the crash: {last_a} ms");
    assert!(last_b > 6_000, "b went on: {last_b} ms");
    assert!(
        report.trace.contains("fault: crash process p"),
        "the fault is in the trace:\n{}",
        report.trace
    );
    assert_eq!(run().trace_hash, report.trace_hash, "the same seed, the same trace");
}

/// `Fault::CrashProcess(None)` crashes a live client process the seed
/// picks (never one that already ended), the same one for the same seed.
#[test]
fn a_scheduled_crash_of_any_client_picks_a_live_one_by_the_seed() {
    let run = |seed| {
        simulate(seed, SimConfig::default(), |sim| async move {
            let acks = Arc::new(Mutex::new(Vec::new()));
            // A process that built a client and ended: not live.
            let sim2 = sim.clone();
            let done = sim.spawn_process(async move { sim2.raw_client().await.is_ok() });
            assert_eq!(done.join().await, Some(true));
            let procs: Vec<_> = ["a", "b", "c"]
                .into_iter()
                .map(|name| sim.spawn_process(ticking_writer(sim.clone(), name, acks.clone())))
                .collect();
            sim.fault_at(tikv_core::time::Instant::from_millis(3_000), Fault::CrashProcess(None));
            sim.sleep(Duration::from_secs(4)).await;
            let mut crashed = Vec::new();
            for (i, p) in procs.iter().enumerate() {
                let name = ["a", "b", "c"][i];
                let last = acks.lock().unwrap().iter().filter(|(n, _)| n == name).count();
                sim.sleep(Duration::from_millis(300)).await;
                let now = acks.lock().unwrap().iter().filter(|(n, _)| n == name).count();
                if now == last {
                    crashed.push(p.id().number());
                }
            }
            for p in &procs {
                sim.crash(p.id());
            }
            Ok::<_, Error>(crashed)
        })
        .unwrap_or_else(|f| panic!("{f}"))
        .output
    };
    let mut picked = BTreeMap::new();
    for seed in 0..8 {
        let crashed = run(seed);
        assert_eq!(crashed.len(), 1, "seed {seed}: exactly one live process crashed");
        assert_eq!(run(seed), crashed, "seed {seed}: the same pick on replay");
        *picked.entry(crashed[0]).or_insert(0) += 1;
    }
    assert!(picked.len() > 1, "the seed decides which: {picked:?}");
}

/// A process crashed in the middle of a commit leaves locks; another
/// client resolves them and sees the transaction all or nothing.
#[test]
fn a_commit_cut_by_a_crash_is_all_or_nothing() {
    let mut outcomes = BTreeMap::new();
    for seed in 0..40 {
        let report = simulate(seed, SimConfig::default(), |sim| async move {
            let sim2 = sim.clone();
            let process = sim.spawn_process(async move {
                let txns = sim2.txn_client().await?;
                let me = sim2.current_process().expect("inside a process");
                let mut txn = txns.begin().await?;
                for k in ["a", "m", "z"] {
                    txn.put(k, "1")?;
                }
                // The crash strikes a few hundred microseconds into the
                // commit: during prewrite, at the commit point or after.
                let crasher = sim2.clone();
                let after = Duration::from_micros(200 + 150 * (sim2.seed() % 8));
                sim2.spawn(async move {
                    crasher.sleep(after).await;
                    crasher.crash(me);
                })
                .forget();
                txn.commit().await?;
                futures::future::pending::<()>().await;
                Ok::<_, Error>(())
            });
            assert!(process.join().await.is_none());
            let txns = sim.txn_client().await?;
            let mut seen = Vec::new();
            for k in ["a", "m", "z"] {
                let ts = txns.current_timestamp().await?;
                seen.push(txns.snapshot(ts).get(k).await?.is_some());
            }
            Ok::<_, Error>(seen)
        })
        .unwrap_or_else(|f| panic!("{f}"));
        let seen = report.output;
        assert!(seen.iter().all(|&s| s == seen[0]), "seed {seed}: partly committed: {seen:?}");
        *outcomes.entry(seen[0]).or_insert(0) += 1;
    }
    // Crashes landed both before and after the commit point.
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
}
