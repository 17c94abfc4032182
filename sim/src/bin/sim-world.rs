//! Runs deterministic worlds ([`tikv_sim::world`]) and reports throughput.
//!
//! ```text
//! cargo run --release -p tikv-sim --no-default-features --bin sim-world -- [--raw|--txn|--pess|--gc|--pipelined] [SEEDS] [FIRST]
//! TIKV_SIM_SEED=42 cargo run --release -p tikv-sim --no-default-features --bin sim-world -- [--raw|--txn|--pess|--gc|--pipelined]
//! ```
//!
//! `--raw` (the default) runs the raw workload, `--txn` the transactional one,
//! `--pess` the pessimistic one (then also lock waits, deadlock victims and
//! lock calls that gave up waiting are counted), `--gc` the transactional
//! one with GC rounds, old readers and `delete_range` beside it (then the
//! GC client's work is counted), `--pipelined` the transactional one with
//! pipelined DML transactions beside it (then their generations,
//! `BufferBatchGet` reads, heartbeats and where their clients crashed are
//! counted). With
//! `TIKV_SIM_SEED` it prints that seed's trace and verdict; otherwise it
//! runs `SEEDS` seeds (default 1000) from `FIRST` (default 0), prints every
//! failing seed, and ends with simulated operations (transactions) per
//! second and seeds per minute of wall-clock time. Exits non-zero if any
//! seed failed.
//!
//! `--platform` (in a build with the `platform` feature) runs the raw,
//! transactional, pessimistic, GC or pipelined workload through the public
//! clients on the simulated platform instead of the core machines
//! ([`tikv_sim::platform::run_raw_world`],
//! [`tikv_sim::platform::run_txn_world`],
//! [`tikv_sim::platform::run_pess_world`],
//! [`tikv_sim::platform::run_gc_world`],
//! [`tikv_sim::platform::run_pipelined_world`]), with the same checkers (the
//! pessimistic one also counts clients that crashed holding locks).
//! `--platform --stale` runs the stale-read world there
//! ([`tikv_sim::platform::run_stale_world`]: writers transacting while
//! readers read stale and replica-read snapshots off lagging followers),
//! and counts the stale reads followers served, the `DataIsNotReady`
//! refusals and the replica-read requests:
//!
//! ```text
//! cargo run --release -p tikv-sim --no-default-features --features platform --bin sim-world -- --platform --txn 1000
//! cargo run --release -p tikv-sim --no-default-features --features platform --bin sim-world -- --platform --stale 1000
//! ```

use std::process::ExitCode;
use std::time::Instant as WallClock;

use tikv_sim::world::txn_history::TxnOutcome;
use tikv_sim::world::{self, Workload, WorldConfig};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut workload = Workload::Raw;
    let mut platform = false;
    let mut stale = false;
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        workload = match flag.as_str() {
            "--platform" => {
                platform = true;
                continue;
            }
            "--stale" => {
                stale = true;
                continue;
            }
            "--raw" => Workload::Raw,
            "--txn" => Workload::Txn,
            "--pess" => Workload::Pessimistic,
            "--gc" => Workload::Gc,
            "--pipelined" => Workload::Pipelined,
            other => {
                eprintln!(
                    "unknown world {other:?}: expected --raw, --txn, --pess, --gc, --pipelined \
                     or (with --platform) --stale"
                );
                return ExitCode::FAILURE;
            }
        };
    }
    let trace_seed = std::env::var("TIKV_SIM_SEED").ok().and_then(|s| s.parse().ok());
    let mut numbers = args.iter().filter(|a| !a.starts_with("--")).map(|a| a.parse::<u64>());
    let seeds = numbers.next().and_then(Result::ok).unwrap_or(1000);
    let first = numbers.next().and_then(Result::ok).unwrap_or(0);
    if stale {
        if !platform {
            eprintln!("--stale runs on the simulated platform only: add --platform");
            return ExitCode::FAILURE;
        }
        return platform::stale_main(trace_seed, first..first + seeds);
    }
    if platform {
        return platform::main(workload, trace_seed, first..first + seeds);
    }
    let config = |seed| WorldConfig { seed, workload, ..WorldConfig::default() };
    if let Some(seed) = trace_seed {
        let report = world::run(WorldConfig { trace: true, ..config(seed) });
        print!("{}", report.trace);
        if report.passed() {
            println!("seed {seed}: passed");
            return ExitCode::SUCCESS;
        }
        println!("{}", report.failure());
        return ExitCode::FAILURE;
    }
    // Wall-clock time is read only here, to measure; the worlds never see it.
    let started = WallClock::now();
    let (mut ops, mut rpcs, mut events, mut failed, mut unknown) =
        (0usize, 0u64, 0u64, 0u64, 0usize);
    let (mut forwarded, mut late, mut slow_marks) = (0u64, 0u64, 0u64);
    let (mut committed, mut undetermined, mut crashes) = (0usize, 0usize, 0usize);
    let (mut lock_waits, mut deadlocks, mut gave_up) = (0u64, 0usize, 0usize);
    let mut with_conflict = 0usize;
    // Seeds where several transactions shared one key's lock at once, and
    // committed transactions that read under shared locks.
    let (mut shared_at_once, mut shared_readers) = (0usize, 0usize);
    let mut crashed_holders = (0usize, 0usize);
    let mut gc = world::GcStats::default();
    let mut pipe = world::PipeStats::default();
    let mut max_op = std::time::Duration::ZERO;
    for seed in first..first + seeds {
        let report = world::run(config(seed));
        ops += report.stats.ops;
        rpcs += report.stats.rpcs;
        events += report.stats.events;
        forwarded += report.stats.forwarded;
        late += report.stats.late_answers;
        slow_marks += report.stats.slow_marks;
        unknown += report.stats.unknown_keys;
        committed += report.stats.ok;
        undetermined += report.stats.undetermined;
        crashes += report.stats.crashes;
        lock_waits += report.stats.lock_waits;
        deadlocks += report.stats.deadlocks;
        gave_up += report.stats.lock_wait_failures;
        with_conflict += report.stats.locked_with_conflict;
        shared_at_once += usize::from(report.stats.shared_lock_peak >= 2);
        shared_readers += report
            .txn_history
            .entries
            .iter()
            .filter(|e| {
                !e.run.shared.is_empty() && matches!(e.outcome, TxnOutcome::Committed { .. })
            })
            .count();
        crashed_holders.0 += report.stats.crashed_lock_holders.0;
        crashed_holders.1 += report.stats.crashed_lock_holders.1;
        max_op = max_op.max(report.stats.max_op);
        let g = &report.stats.gc;
        gc.rounds.0 += g.rounds.0;
        gc.rounds.1 += g.rounds.1;
        gc.locks_below_safe_point += g.locks_below_safe_point;
        gc.collected_versions += g.collected_versions;
        gc.reads_served += g.reads_served;
        gc.reads_refused += g.reads_refused;
        gc.reads_failed += g.reads_failed;
        gc.delete_ranges.0 += g.delete_ranges.0;
        gc.delete_ranges.1 += g.delete_ranges.1;
        let p = &report.stats.pipelined;
        pipe.txns.0 += p.txns.0;
        pipe.txns.1 += p.txns.1;
        pipe.generations += p.generations;
        pipe.multi_generation += p.multi_generation;
        pipe.buffer_gets += p.buffer_gets;
        pipe.beats += p.beats;
        pipe.crashed.0 += p.crashed.0;
        pipe.crashed.1 += p.crashed.1;
        pipe.crashed.2 += p.crashed.2;
        if !report.passed() {
            failed += 1;
            println!("{}", report.failure());
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let what = match workload {
        Workload::Raw => "ops",
        Workload::Txn | Workload::Pessimistic | Workload::Gc | Workload::Pipelined => "txns",
    };
    println!(
        "{workload:?} {seeds} seeds ({first}..{}): {failed} failed, {unknown} keys unknown; \
         {ops} {what} ({committed} ok, {undetermined} undetermined, {crashes} client crashes), \
         {rpcs} RPCs ({forwarded} forwarded by a store, {late} answered late by a slow store; \
         {slow_marks} times a client marked a store slow), {events} events; longest {max_op:?} \
         (virtual)",
        first + seeds
    );
    if workload == Workload::Pessimistic {
        println!(
            "{lock_waits} lock requests waited in TiKV, {deadlocks} deadlock victims, \
             {gave_up} lock calls gave up waiting (timeout or no-wait), {with_conflict} locks \
             taken over a newer write (fair locking)"
        );
        println!(
            "clients crashed holding pessimistic locks: {} times other clients resolved them, \
             {} times the audit swept them",
            crashed_holders.0, crashed_holders.1
        );
        println!(
            "shared locks: {shared_readers} committed transactions read under them; several \
             holders of one key at once in {shared_at_once} seeds"
        );
    }
    if workload == Workload::Gc {
        println!(
            "GC rounds: {} completed ({} locks at or below their safe points when they began, \
             {} versions collected), {} failed; old readers: {} served, {} refused below the \
             txn safe point, {} failed; delete_range: {} completed, {} failed",
            gc.rounds.0,
            gc.locks_below_safe_point,
            gc.collected_versions,
            gc.rounds.1,
            gc.reads_served,
            gc.reads_refused,
            gc.reads_failed,
            gc.delete_ranges.0,
            gc.delete_ranges.1
        );
    }
    if workload == Workload::Pipelined {
        println!(
            "pipelined txns: {} ({} committed), {} generations flushed ({} txns flushed more \
             than one), {} BufferBatchGet reads, {} heartbeats; clients crashed {} times while \
             writing and flushing, {} in the commit, {} after the primary's commit",
            pipe.txns.0,
            pipe.txns.1,
            pipe.generations,
            pipe.multi_generation,
            pipe.buffer_gets,
            pipe.beats,
            pipe.crashed.0,
            pipe.crashed.1,
            pipe.crashed.2
        );
    }
    println!(
        "{:.1} s wall: {:.0} simulated {what}/s, {:.0} RPCs/s, {:.0} seeds/minute",
        secs,
        ops as f64 / secs,
        rpcs as f64 / secs,
        seeds as f64 * 60.0 / secs
    );
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The workloads through the public clients on the simulated platform.
#[cfg(feature = "platform")]
mod platform {
    use std::process::ExitCode;
    use std::time::Instant as WallClock;

    use tikv_sim::platform::{
        SimConfig, SimFailure, SimReport, StaleWorldStats, TxnWorldStats, run_gc_world,
        run_pess_world, run_pipelined_world, run_raw_world, run_stale_world, run_txn_world,
    };
    use tikv_sim::world::{GcStats, PipeStats, Workload};

    /// What the passing seeds add up to.
    #[derive(Default)]
    struct Totals {
        ops: usize,
        /// ok, failed, undetermined
        outcomes: (usize, usize, usize),
        crashes: usize,
        victims: usize,
        /// Clients crashed holding pessimistic locks: resolved by the
        /// others, swept by the audit.
        crashed_holders: (usize, usize),
        lock_waits: u64,
        rpcs: u64,
        forwarded: u64,
        late_answers: u64,
        slow_feedback: u64,
        events: u64,
        gc: GcStats,
        pipe: PipeStats,
    }

    impl Totals {
        fn add_txn(&mut self, r: &SimReport<TxnWorldStats>) {
            let o = &r.output;
            self.ops += o.txns;
            self.add_outcomes(o.outcomes);
            self.crashes += o.crashes;
            self.victims += o.deadlock_victims;
            self.crashed_holders.0 += o.crashed_lock_holders.0;
            self.crashed_holders.1 += o.crashed_lock_holders.1;
            let (g, mine) = (&o.gc, &mut self.gc);
            mine.rounds.0 += g.rounds.0;
            mine.rounds.1 += g.rounds.1;
            mine.locks_below_safe_point += g.locks_below_safe_point;
            mine.collected_versions += g.collected_versions;
            mine.reads_served += g.reads_served;
            mine.reads_refused += g.reads_refused;
            mine.reads_failed += g.reads_failed;
            mine.delete_ranges.0 += g.delete_ranges.0;
            mine.delete_ranges.1 += g.delete_ranges.1;
            let (p, mine) = (&o.pipelined, &mut self.pipe);
            mine.txns.0 += p.txns.0;
            mine.txns.1 += p.txns.1;
            mine.generations += p.generations;
            mine.multi_generation += p.multi_generation;
            mine.buffer_gets += p.buffer_gets;
            mine.beats += p.beats;
            mine.crashed.0 += p.crashed.0;
            mine.crashed.1 += p.crashed.1;
            mine.crashed.2 += p.crashed.2;
            self.add_stats(&r.stats);
        }

        fn add_outcomes(&mut self, (ok, failed, undetermined): (usize, usize, usize)) {
            self.outcomes.0 += ok;
            self.outcomes.1 += failed;
            self.outcomes.2 += undetermined;
        }

        fn add_stats(&mut self, stats: &tikv_sim::platform::SimStats) {
            self.lock_waits += stats.lock_waits;
            self.rpcs += stats.rpcs;
            self.forwarded += stats.forwarded;
            self.late_answers += stats.late_answers;
            self.slow_feedback += stats.slow_feedback;
            self.events += stats.events;
        }
    }

    /// Runs one seed and adds what it did to `totals` if it passed.
    fn run(
        workload: Workload,
        seed: u64,
        config: SimConfig,
        totals: &mut Totals,
    ) -> Result<(), SimFailure> {
        match workload {
            Workload::Raw => {
                let r = run_raw_world(seed, config)?;
                totals.ops += r.output.ops;
                totals.add_outcomes(r.output.outcomes);
                totals.add_stats(&r.stats);
            }
            Workload::Pessimistic => totals.add_txn(&run_pess_world(seed, config)?),
            Workload::Gc => totals.add_txn(&run_gc_world(seed, config)?),
            Workload::Pipelined => totals.add_txn(&run_pipelined_world(seed, config)?),
            _ => totals.add_txn(&run_txn_world(seed, config)?),
        }
        Ok(())
    }

    pub(super) fn main(
        workload: Workload,
        trace_seed: Option<u64>,
        seeds: std::ops::Range<u64>,
    ) -> ExitCode {
        if let Some(seed) = trace_seed {
            let mut t = Totals::default();
            let config = SimConfig { trace: true, ..SimConfig::chaos() };
            return match run(workload, seed, config, &mut t) {
                Ok(()) => {
                    println!(
                        "seed {seed}: passed ({} operations, outcomes {:?})",
                        t.ops, t.outcomes
                    );
                    ExitCode::SUCCESS
                }
                Err(failure) => {
                    print!("{}", failure.trace);
                    println!("{failure}");
                    ExitCode::FAILURE
                }
            };
        }
        let (n, first) = (seeds.end - seeds.start, seeds.start);
        // Wall-clock time is read only here, to measure.
        let started = WallClock::now();
        let mut t = Totals::default();
        let mut failed = 0u64;
        for seed in seeds {
            if let Err(failure) = run(workload, seed, SimConfig::chaos(), &mut t) {
                failed += 1;
                println!("{failure}");
            }
        }
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let what = if workload == Workload::Raw { "ops" } else { "txns" };
        println!(
            "{workload:?} through the public client, {n} seeds ({first}..{}): {failed} failed; \
             {} {what} ({} ok, {} failed, {} undetermined, {} client crashes), \
             {} RPCs ({} forwarded by a store, {} answered late by a slow store, {} carrying \
             slow health feedback), {} events, {} lock waits, {} deadlock victims",
            first + n,
            t.ops,
            t.outcomes.0,
            t.outcomes.1,
            t.outcomes.2,
            t.crashes,
            t.rpcs,
            t.forwarded,
            t.late_answers,
            t.slow_feedback,
            t.events,
            t.lock_waits,
            t.victims
        );
        if workload == Workload::Pessimistic {
            println!(
                "clients crashed holding pessimistic locks before committing: {} times the \
                 others resolved them, {} times the audit swept them",
                t.crashed_holders.0, t.crashed_holders.1
            );
        }
        if workload == Workload::Gc {
            let g = &t.gc;
            println!(
                "GC rounds: {} completed ({} locks at or below their safe points when they \
                 began, {} versions collected), {} failed; old readers: {} served, {} refused \
                 below the txn safe point, {} failed; delete_range: {} completed, {} failed",
                g.rounds.0,
                g.locks_below_safe_point,
                g.collected_versions,
                g.rounds.1,
                g.reads_served,
                g.reads_refused,
                g.reads_failed,
                g.delete_ranges.0,
                g.delete_ranges.1
            );
        }
        if workload == Workload::Pipelined {
            let p = &t.pipe;
            println!(
                "pipelined txns: {} ({} committed), {} generations flushed ({} txns flushed \
                 more than one), {} BufferBatchGet reads, {} heartbeats; crashes struck them {} \
                 times while writing and flushing, {} in the commit, {} after it (resolving)",
                p.txns.0,
                p.txns.1,
                p.generations,
                p.multi_generation,
                p.buffer_gets,
                p.beats,
                p.crashed.0,
                p.crashed.1,
                p.crashed.2
            );
        }
        println!(
            "{secs:.1} s wall: {:.0} simulated {what}/s, {:.0} RPCs/s, {:.0} seeds/minute",
            t.ops as f64 / secs,
            t.rpcs as f64 / secs,
            n as f64 * 60.0 / secs
        );
        if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    }

    /// `--platform --stale`: the stale-read world.
    pub(super) fn stale_main(trace_seed: Option<u64>, seeds: std::ops::Range<u64>) -> ExitCode {
        if let Some(seed) = trace_seed {
            let config = SimConfig { trace: true, ..SimConfig::chaos() };
            return match run_stale_world(seed, config) {
                Ok(r) => {
                    println!("seed {seed}: passed ({:?})", r.output);
                    ExitCode::SUCCESS
                }
                Err(failure) => {
                    print!("{}", failure.trace);
                    println!("{failure}");
                    ExitCode::FAILURE
                }
            };
        }
        let (n, first) = (seeds.end - seeds.start, seeds.start);
        // Wall-clock time is read only here, to measure.
        let started = WallClock::now();
        let mut t = StaleWorldStats::default();
        let (mut failed, mut rpcs, mut late, mut slow_feedback) = (0u64, 0u64, 0u64, 0u64);
        for seed in seeds {
            match run_stale_world(seed, SimConfig::chaos()) {
                Ok(r) => {
                    let o = &r.output;
                    t.txns += o.txns;
                    t.outcomes.0 += o.outcomes.0;
                    t.outcomes.1 += o.outcomes.1;
                    t.outcomes.2 += o.outcomes.2;
                    t.crashes += o.crashes;
                    for (total, n) in t.stale_reads.iter_mut().zip(o.stale_reads) {
                        *total += n;
                    }
                    t.unpinned_stale_reads += o.unpinned_stale_reads;
                    for (total, n) in t.replica_reads.iter_mut().zip(o.replica_reads) {
                        *total += n;
                    }
                    t.failed_reads += o.failed_reads;
                    t.follower_stale_reads += o.follower_stale_reads;
                    t.data_not_ready += o.data_not_ready;
                    t.replica_read_requests += o.replica_read_requests;
                    rpcs += r.stats.rpcs;
                    late += r.stats.late_answers;
                    slow_feedback += r.stats.slow_feedback;
                }
                Err(failure) => {
                    failed += 1;
                    println!("{failure}");
                }
            }
        }
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        println!(
            "stale reads through the public client, {n} seeds ({first}..{}): {failed} failed; \
             {} txns ({} ok, {} failed, {} undetermined, {} client crashes); snapshots read: \
             stale {:?} (ago, at min safe ts, older; {} above max_ts when issued), replica \
             reads {:?} (follower, mixed, learner, prefer-leader), {} failed; requests: \
             {} stale reads served by followers, {} DataIsNotReady, {} with replica_read; {rpcs} RPCs \
             ({late} answered late by a slow store, {slow_feedback} carrying slow health feedback)",
            first + n,
            t.txns,
            t.outcomes.0,
            t.outcomes.1,
            t.outcomes.2,
            t.crashes,
            t.stale_reads,
            t.unpinned_stale_reads,
            t.replica_reads,
            t.failed_reads,
            t.follower_stale_reads,
            t.data_not_ready,
            t.replica_read_requests
        );
        println!(
            "{secs:.1} s wall: {:.0} seeds/s, {:.0} RPCs/s",
            n as f64 / secs,
            rpcs as f64 / secs
        );
        if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    }
}

/// Built without the `platform` feature: `--platform` is refused.
#[cfg(not(feature = "platform"))]
mod platform {
    use std::process::ExitCode;

    use tikv_sim::world::Workload;

    pub(super) fn main(_: Workload, _: Option<u64>, _: std::ops::Range<u64>) -> ExitCode {
        eprintln!("--platform needs sim-world built with the `platform` feature");
        ExitCode::FAILURE
    }

    pub(super) fn stale_main(trace_seed: Option<u64>, seeds: std::ops::Range<u64>) -> ExitCode {
        main(Workload::Txn, trace_seed, seeds)
    }
}
