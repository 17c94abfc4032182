//! `interop-client-go`: our client and Go's `tikv/client-go` v2 on one
//! simulated cluster.
//!
//! ```text
//! interop-client-go --go-bin PATH [--go-log FILE] [--real-pd]
//! ```
//!
//! Serves a transactional API V1 cluster (three stores, four regions split
//! at `0x40`, `0x80`, `0xc0`) in this process, with its own PD or, with
//! `--real-pd`, as simulated stores joined to a real PD started for the run
//! (`tikv_tests::harness::Bed::RealPd`), connects our tokio client to it,
//! and starts `PATH interop --pd ADDR [--real-pd]` (the `tests/peer-client-go`
//! program) as a step server that answers one command per line (see its
//! `interop.go`). This process owns the cluster, so it makes writers "crash"
//! by failing `Commit` RPCs with [`Cluster::inject_rpc_error`], and checks
//! outcomes in the model itself ([`Cluster::commit_record`],
//! [`Cluster::locks`]). client-go's writers crash through its exported test
//! probes instead (`TxnProbe`, `CommitterProbe`): they prewrite, optionally
//! commit the primary, and stop.
//!
//! Checks, one `PASS`/`FAIL` line each, exit code non-zero on any failure:
//! data written by each client (2PC, async commit, 1PC) is read by the
//! other; a crashed writer of each is resolved by a reader of the other with
//! the right outcome (rolled back when the primary never committed, rolled
//! forward at the primary's commit ts when it did, committed at the
//! transaction's commit ts when an async commit's commit phase is lost);
//! pessimistic transactions of the two block each other until the holder
//! commits, a deadlock across them fails the side that closes the cycle,
//! and a crashed pessimistic writer of each is cleaned up by the other; a
//! shared lock of each admits the other's share but not its exclusive lock,
//! and both holders' commits release their shares; a
//! GC round by each (client-go's `KVStore.GC`, our `TransactionClient::gc`)
//! rolls back the other's crashed writer whatever its TTL, keeps the newest
//! version at or below the safe point (older ones are collected: in-process
//! PD only, where the stores collect at the GC safe point), and the other
//! client then reads the same data at and after the safe point and refuses
//! a read below it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tikv_core::rpc::RpcError;
use tikv_sim::{Cluster, ClusterConfig, Filter, WriteKind};
use tikv_tests::harness::{Bed, SimHandle};
use tikv_tokio::{
    BackoffBudgets, Config, Error, LockOptions, Timestamp, TransactionClient, TransactionOptions,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

type Check = Result<(), String>;
type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// How long one step of the Go side may take (client-go waits out a live
/// lock's TTL before resolving it; ours are 3 s).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Longer than our locks' TTL (3 s, client-go's default for small
/// transactions), counted from the writer's start.
const LOCK_TTL_PASSED: Duration = Duration::from_millis(3_200);

/// How long a reader's background lock resolution may take to land.
const RESOLVE_WAIT: Duration = Duration::from_secs(5);

/// Longer than client-go's crashed writers' lock TTL (`GO_LOCK_TTL_MS`).
const GO_LOCK_TTL_PASSED: Duration = Duration::from_millis(300);

/// The lock TTL of client-go's crashed writers, short so that our readers
/// need not wait long.
const GO_LOCK_TTL_MS: u64 = 100;

/// Counts results and prints one line per check.
#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn record(&mut self, check: &str, result: Check) {
        match result {
            Ok(()) => {
                self.passed += 1;
                println!("PASS {check}");
            }
            Err(why) => {
                self.failed += 1;
                println!("FAIL {check}: {why}");
            }
        }
    }
}

fn expect_eq<T: PartialEq + Debug>(what: &str, got: T, want: T) -> Check {
    if got == want { Ok(()) } else { Err(format!("{what}: got {got:?}, want {want:?}")) }
}

fn ours<T>(what: &str, r: Result<T, Error>) -> Result<T, String> {
    r.map_err(|e| format!("ours, {what}: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd-length hex {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("bad hex {s:?}"))
        })
        .collect()
}

/// `n` keys whose first bytes spread over the whole byte range, so they
/// land in every region.
fn spread(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut k = vec![(i * 256 / n) as u8];
            k.extend_from_slice(format!("{prefix}-{i:03}").as_bytes());
            k
        })
        .collect()
}

/// The client-go step server (`peer-client-go interop`).
struct GoPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl GoPeer {
    async fn start(
        bin: &PathBuf,
        pd: &str,
        bed: Bed,
        log: Option<&PathBuf>,
    ) -> Result<GoPeer, String> {
        let mut cmd = Command::new(bin);
        cmd.arg("interop").arg("--pd").arg(pd);
        if bed == Bed::RealPd {
            // client-go as it ships: router client, etcd safe-point KV.
            cmd.arg("--real-pd");
        }
        if let Some(log) = log {
            cmd.arg("--log").arg(log);
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut peer = GoPeer { child, stdin, stdout };
        match peer.read_line().await?.as_str() {
            "ready" => Ok(peer),
            other => Err(format!("client-go did not start: {other}")),
        }
    }

    async fn read_line(&mut self) -> Result<String, String> {
        match tokio::time::timeout(STEP_TIMEOUT, self.stdout.next_line()).await {
            Err(_) => Err(format!("client-go gave no answer within {STEP_TIMEOUT:?}")),
            Ok(Err(e)) => Err(format!("reading client-go: {e}")),
            Ok(Ok(None)) => Err("client-go exited".into()),
            Ok(Ok(Some(line))) => Ok(line),
        }
    }

    /// Sends one command; returns the fields of its `ok` answer.
    async fn call(&mut self, command: String) -> Result<Vec<String>, String> {
        let line = format!("{command}\n");
        self.stdin.write_all(line.as_bytes()).await.map_err(|e| format!("writing: {e}"))?;
        self.stdin.flush().await.map_err(|e| format!("writing: {e}"))?;
        let answer = self.read_line().await?;
        match answer.strip_prefix("ok") {
            Some(rest) => Ok(rest.split_whitespace().map(str::to_owned).collect()),
            None => Err(format!("client-go: {answer}")),
        }
    }

    fn pairs(pairs: &[(Vec<u8>, Vec<u8>)]) -> String {
        pairs.iter().map(|(k, v)| format!(" {}={}", hex(k), hex(v))).collect()
    }

    fn two_ts(fields: &[String]) -> Result<(u64, u64), String> {
        match fields {
            [a, b] => match (a.parse(), b.parse()) {
                (Ok(a), Ok(b)) => Ok((a, b)),
                _ => Err(format!("bad timestamps {fields:?}")),
            },
            _ => Err(format!("want two timestamps, got {fields:?}")),
        }
    }

    /// One client-go transaction writing `pairs` (`mode`: 2pc, async, 1pc);
    /// returns its (start ts, commit ts).
    async fn commit(
        &mut self,
        mode: &str,
        pairs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(u64, u64), String> {
        let fields = self.call(format!("commit {mode}{}", Self::pairs(pairs))).await?;
        Self::two_ts(&fields)
    }

    /// A fresh client-go transaction reads `keys`.
    async fn get(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, String> {
        let fields = self.call(format!("get{}", Self::keys(keys))).await?;
        Self::values(keys, &fields)
    }

    /// The values of a `get` or `get-at` answer (`xHEX`, or `-` for none).
    fn values(keys: &[Vec<u8>], fields: &[String]) -> Result<Vec<Option<Vec<u8>>>, String> {
        if fields.len() != keys.len() {
            return Err(format!("{} values for {} keys", fields.len(), keys.len()));
        }
        fields
            .iter()
            .map(|f| match f.strip_prefix('x') {
                Some(h) => unhex(h).map(Some),
                None if f == "-" => Ok(None),
                None => Err(format!("bad value {f:?}")),
            })
            .collect()
    }

    /// A client-go writer that prewrites `pairs` (the first key is the
    /// primary) with lock TTL `ttl_ms`, commits the primary if asked, and
    /// stops; returns (start ts, commit ts or 0).
    async fn prewrite_and_crash(
        &mut self,
        mode: &str,
        ttl_ms: u64,
        commit_primary: bool,
        pairs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(u64, u64), String> {
        let primary = u8::from(commit_primary);
        let fields =
            self.call(format!("prewrite {mode} {ttl_ms} {primary}{}", Self::pairs(pairs))).await?;
        Self::two_ts(&fields)
    }

    /// client-go's pessimistic transaction `id` (begun on first use) locks
    /// `keys`, waiting `wait_ms` (-1: no wait, 0: as long as TiKV lets it);
    /// returns (start ts, for_update_ts).
    async fn plock(
        &mut self,
        id: &str,
        wait_ms: i64,
        keys: &[Vec<u8>],
    ) -> Result<(u64, u64), String> {
        let fields = self.call(format!("plock {id} {wait_ms}{}", Self::keys(keys))).await?;
        Self::two_ts(&fields)
    }

    /// [`GoPeer::plock`] in share mode (`LockCtx.InShareMode`).
    async fn plock_shared(
        &mut self,
        id: &str,
        wait_ms: i64,
        keys: &[Vec<u8>],
    ) -> Result<(u64, u64), String> {
        let fields = self.call(format!("plock-shared {id} {wait_ms}{}", Self::keys(keys))).await?;
        Self::two_ts(&fields)
    }

    /// [`GoPeer::plock`] in the background: answered by [`GoPeer::await_lock`].
    async fn plock_bg(&mut self, id: &str, wait_ms: i64, keys: &[Vec<u8>]) -> Check {
        self.call(format!("plock-bg {id} {wait_ms}{}", Self::keys(keys))).await.map(drop)
    }

    /// The answer of transaction `id`'s background lock call.
    async fn await_lock(&mut self, id: &str) -> Result<(u64, u64), String> {
        let fields = self.call(format!("await {id}")).await?;
        Self::two_ts(&fields)
    }

    /// Sets `pairs` in client-go's pessimistic transaction `id` and commits
    /// it; returns (start ts, commit ts).
    async fn pcommit(
        &mut self,
        id: &str,
        pairs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(u64, u64), String> {
        let fields = self.call(format!("pcommit {id}{}", Self::pairs(pairs))).await?;
        Self::two_ts(&fields)
    }

    async fn prollback(&mut self, id: &str) -> Check {
        self.call(format!("prollback {id}")).await.map(drop)
    }

    /// client-go's pessimistic transaction `id` crashes with its locks held
    /// (its TTL manager stops); returns its start ts.
    async fn pcrash(&mut self, id: &str) -> Result<u64, String> {
        match self.call(format!("pcrash {id}")).await?.as_slice() {
            [ts] => ts.parse().map_err(|_| format!("bad start ts {ts:?}")),
            other => Err(format!("want a start ts, got {other:?}")),
        }
    }

    /// One round of client-go's own GC (`KVStore.GC`) at `safe_point`;
    /// returns the GC safe point it reached.
    async fn gc(&mut self, safe_point: u64) -> Result<u64, String> {
        match self.call(format!("gc {safe_point}")).await?.as_slice() {
            [ts] => ts.parse().map_err(|_| format!("bad safe point {ts:?}")),
            other => Err(format!("want a safe point, got {other:?}")),
        }
    }

    /// client-go reads `keys` from one snapshot at `ts`; an `Err` carries
    /// its refusal (`aborted-by-gc ...` below the txn safe point).
    async fn get_at(&mut self, ts: u64, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, String> {
        let fields = self.call(format!("get-at {ts}{}", Self::keys(keys))).await?;
        Self::values(keys, &fields)
    }

    /// client-go's `ManagedLockTTL` for its later pessimistic transactions.
    async fn set_lock_ttl(&mut self, ms: u64) -> Check {
        self.call(format!("lock-ttl {ms}")).await.map(drop)
    }

    fn keys(keys: &[Vec<u8>]) -> String {
        keys.iter().map(|k| format!(" {}", hex(k))).collect()
    }

    async fn quit(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = self.stdin.flush().await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// Everything one run needs.
struct Run {
    cluster: Cluster,
    /// The PD endpoints, for extra clients of ours.
    pd: Vec<String>,
    mine: TransactionClient,
    go: GoPeer,
    model: Model,
    bed: Bed,
}

fn with_value(keys: &[Vec<u8>], value: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    keys.iter().map(|k| (k.clone(), value.to_vec())).collect()
}

impl Run {
    /// client-go reads `keys` and must see the model's values.
    async fn go_reads_model(&mut self, keys: &[Vec<u8>]) -> Check {
        let got = self.go.get(keys).await?;
        let want: Vec<_> = keys.iter().map(|k| self.model.get(k).cloned()).collect();
        expect_eq("client-go reads", got, want)
    }

    /// Our snapshot at a fresh timestamp reads `keys` and must see the
    /// model's values.
    async fn ours_reads_model(&mut self, keys: &[Vec<u8>]) -> Check {
        let ts = ours("timestamp", self.mine.current_timestamp().await)?;
        let snap = self.mine.snapshot(ts);
        for k in keys {
            let got = ours("snapshot get", snap.get(k.clone()).await)?;
            expect_eq(
                &format!("ours reads {k:x?}"),
                got.map(|v| v.to_vec()),
                self.model.get(k).cloned(),
            )?;
        }
        Ok(())
    }

    async fn ours_commit(
        &mut self,
        opts: TransactionOptions,
        pairs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<u64, Error> {
        let mut t = self.mine.begin_with_options(opts).await?;
        for (k, v) in pairs {
            t.put(k.clone(), v.clone())?;
        }
        t.commit().await.map(|ts| ts.version())
    }

    /// Every key of transaction `start_ts` has the outcome `want`
    /// (`None`: rolled back; `Some(ts)`: committed at `ts`), and none is
    /// locked any more.
    fn expect_outcome(&self, keys: &[Vec<u8>], start_ts: u64, want: Option<u64>) -> Check {
        for k in keys {
            let record = self.cluster.commit_record(k, start_ts);
            let got = record.as_ref().map(|r| (r.kind, r.commit_ts));
            let ok = match want {
                None => matches!(got, Some((WriteKind::Rollback, _))),
                Some(ts) => got == Some((WriteKind::Put, ts)),
            };
            if !ok {
                return Err(format!(
                    "key {k:x?} of txn {start_ts}: record {record:?}, want {}",
                    want.map_or("a rollback".to_owned(), |ts| format!("a put committed at {ts}"))
                ));
            }
        }
        let left: Vec<_> =
            self.cluster.locks().into_iter().filter(|l| l.lock_version == start_ts).collect();
        expect_eq("locks of the transaction left", left.len(), 0)
    }

    /// [`Run::expect_outcome`], polled until `RESOLVE_WAIT` has passed:
    /// readers resolve the locks they read past in the background
    /// (client-go's `resolveLocks` for reads does), so the records may land
    /// after the read returns.
    async fn wait_outcome(&self, keys: &[Vec<u8>], start_ts: u64, want: Option<u64>) -> Check {
        let deadline = tokio::time::Instant::now() + RESOLVE_WAIT;
        loop {
            let outcome = self.expect_outcome(keys, start_ts, want);
            if outcome.is_ok() || tokio::time::Instant::now() >= deadline {
                return outcome;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The start ts of the one transaction locking `n` of `keys` (a crashed
    /// writer's).
    fn crashed_txn(&self, keys: &[Vec<u8>], n: usize) -> Result<u64, String> {
        let locks: Vec<_> = self
            .cluster
            .locks()
            .into_iter()
            .filter(|l| keys.iter().any(|k| k[..] == l.key[..]))
            .collect();
        let first =
            locks.first().map(|l| l.lock_version).ok_or("the crashed writer left no locks")?;
        if locks.len() != n || locks.iter().any(|l| l.lock_version != first) {
            return Err(format!("want {n} locks of one transaction, found {locks:?}"));
        }
        Ok(first)
    }

    fn block_commits(&self, filter: Filter) {
        self.cluster.inject_rpc_error(
            filter.command("kv_commit"),
            RpcError::Unavailable("commit blocked by the interop driver".into()),
            1_000_000,
        );
    }

    fn region_of(&self, key: &[u8]) -> Result<u64, String> {
        let region_key = self.cluster.txn_region_key(key);
        self.cluster
            .region_for_region_key(&region_key)
            .map(|r| r.id)
            .ok_or_else(|| format!("no region for {key:x?}"))
    }

    fn remember(&mut self, pairs: &[(Vec<u8>, Vec<u8>)]) {
        for (k, v) in pairs {
            self.model.insert(k.clone(), v.clone());
        }
    }
}

async fn checks(run: &mut Run, report: &mut Report) {
    let a = spread("io-a", 4);
    let b = spread("io-b", 4);
    let c = spread("io-c", 4);
    let d = spread("io-d", 4);
    let one_pc_ours = vec![b"\x05io-1pc-ours".to_vec()];
    let one_pc_go = vec![b"\x06io-1pc-go".to_vec()];

    let r: Check = async {
        let pairs = with_value(&a, b"ours 2pc");
        ours("2PC commit", run.ours_commit(TransactionOptions::default(), &pairs).await)?;
        run.remember(&pairs);
        let pairs = with_value(&b, b"ours async");
        let opts = TransactionOptions::default().with_async_commit();
        ours("async commit", run.ours_commit(opts, &pairs).await)?;
        run.remember(&pairs);
        let pairs = with_value(&one_pc_ours, b"ours 1pc");
        let opts = TransactionOptions::default().with_async_commit().with_one_pc();
        ours("1PC commit", run.ours_commit(opts, &pairs).await)?;
        run.remember(&pairs);
        let keys: Vec<_> = a.iter().chain(&b).chain(&one_pc_ours).cloned().collect();
        run.go_reads_model(&keys).await
    }
    .await;
    report.record("interop: ours commits (2PC, async commit, 1PC), client-go reads", r);

    let r: Check = async {
        for (mode, keys, value) in [
            ("2pc", &c, &b"go 2pc"[..]),
            ("async", &d, b"go async"),
            ("1pc", &one_pc_go, b"go 1pc"),
        ] {
            let pairs = with_value(keys, value);
            let (start, commit) = run.go.commit(mode, &pairs).await?;
            if commit <= start {
                return Err(format!(
                    "client-go {mode}: commit ts {commit} not after start {start}"
                ));
            }
            run.remember(&pairs);
        }
        let keys: Vec<_> = c.iter().chain(&d).chain(&one_pc_go).cloned().collect();
        run.ours_reads_model(&keys).await
    }
    .await;
    report.record("interop: client-go commits (2PC, async commit, 1PC), ours reads", r);

    // Our writer "crashes" after prewrite: every Commit fails, the outcome
    // is undetermined and the locks stay. Once their TTL (3 s) has passed,
    // client-go's reader finds the primary uncommitted and rolls the
    // transaction back. (Within the TTL it would push the primary's
    // min_commit_ts past its read ts and read around the locks, leaving
    // them, as TiKV's CheckTxnStatus allows.)
    let r: Check = async {
        let pairs = with_value(&a, b"ours crashed");
        run.block_commits(Filter::any());
        let outcome = run.ours_commit(TransactionOptions::default(), &pairs).await;
        run.cluster.clear_injections();
        match outcome {
            Err(Error::Undetermined(_)) => {}
            other => return Err(format!("our commit: want undetermined, got {other:?}")),
        }
        let start = run.crashed_txn(&a, a.len())?;
        tokio::time::sleep(LOCK_TTL_PASSED).await;
        run.go_reads_model(&a).await?;
        run.wait_outcome(&a, start, None).await
    }
    .await;
    report
        .record("interop: ours crashes after prewrite (undetermined), client-go rolls it back", r);

    // Our primary commits but every secondary's Commit is lost: client-go's
    // reader finds the primary committed and commits the secondaries at
    // the same commit ts.
    let r: Check = async {
        let pairs = with_value(&c, b"ours primary only");
        // Our primary is the first key in order: the one in the first region.
        for k in &c[1..] {
            run.block_commits(Filter::any().region(run.region_of(k)?));
        }
        let commit_ts = ours(
            "commit (primary reachable)",
            run.ours_commit(TransactionOptions::default(), &pairs).await,
        )?;
        run.remember(&pairs);
        let start = run.crashed_txn(&c, c.len() - 1)?;
        // Commits stay blocked until the outcome is checked (client-go
        // commits the secondaries with ResolveLock, not Commit), so that our
        // own background commit of the secondaries cannot land instead.
        run.go_reads_model(&c).await?;
        run.wait_outcome(&c, start, Some(commit_ts)).await
    }
    .await;
    run.cluster.clear_injections();
    report.record(
        "interop: ours commits the primary only, client-go rolls the secondaries forward",
        r,
    );

    // client-go's writer crashes after prewrite (short TTL); our reader
    // rolls it back.
    let r: Check = async {
        let pairs = with_value(&d, b"go crashed");
        let (start, _) = run.go.prewrite_and_crash("2pc", GO_LOCK_TTL_MS, false, &pairs).await?;
        expect_eq("client-go's locks", run.crashed_txn(&d, d.len())?, start)?;
        // Within the TTL our reader would push the primary's min_commit_ts
        // and read around the locks.
        tokio::time::sleep(GO_LOCK_TTL_PASSED).await;
        run.ours_reads_model(&d).await?;
        run.wait_outcome(&d, start, None).await
    }
    .await;
    report.record("interop: client-go crashes after prewrite, ours rolls it back", r);

    // client-go commits its primary and crashes; our reader rolls the
    // secondaries forward at the primary's commit ts.
    let e = spread("io-e", 4);
    let r: Check = async {
        let pairs = with_value(&e, b"go primary only");
        let (start, commit) = run.go.prewrite_and_crash("2pc", 3_000, true, &pairs).await?;
        run.remember(&pairs);
        expect_eq("client-go's locks", run.crashed_txn(&e, e.len() - 1)?, start)?;
        run.ours_reads_model(&e).await?;
        run.wait_outcome(&e, start, Some(commit)).await
    }
    .await;
    report.record(
        "interop: client-go commits the primary only, ours rolls the secondaries forward",
        r,
    );

    // Our async-commit writer prewrites everything (so it is committed) but
    // its commit phase is lost: client-go's reader waits out the TTL,
    // checks the secondaries and commits all at our commit ts.
    let f = spread("io-f", 4);
    let r: Check = async {
        let pairs = with_value(&f, b"ours async, commit lost");
        run.block_commits(Filter::any());
        let opts = TransactionOptions::default().with_async_commit();
        let commit_ts = ours("async commit", run.ours_commit(opts, &pairs).await)?;
        run.remember(&pairs);
        let start = run.crashed_txn(&f, f.len())?;
        // Commits stay blocked until the outcome is checked (as above).
        run.go_reads_model(&f).await?;
        run.wait_outcome(&f, start, Some(commit_ts)).await
    }
    .await;
    run.cluster.clear_injections();
    report.record("interop: ours async-commits, commit phase lost, client-go recovers it", r);

    // client-go's async-commit writer prewrites everything and crashes: our
    // reader recovers it through the secondaries.
    let g = spread("io-g", 4);
    let r: Check = async {
        let pairs = with_value(&g, b"go async, commit lost");
        let (start, _) = run.go.prewrite_and_crash("async", GO_LOCK_TTL_MS, false, &pairs).await?;
        run.remember(&pairs);
        expect_eq("client-go's locks", run.crashed_txn(&g, g.len())?, start)?;
        tokio::time::sleep(GO_LOCK_TTL_PASSED).await;
        run.ours_reads_model(&g).await?;
        // All keys committed at one commit ts, after the start.
        let commit_ts = run
            .cluster
            .commit_record(&g[0], start)
            .map(|r| r.commit_ts)
            .ok_or("the primary has no commit record")?;
        if commit_ts <= start {
            return Err(format!("commit ts {commit_ts} not after start {start}"));
        }
        run.wait_outcome(&g, start, Some(commit_ts)).await
    }
    .await;
    report.record("interop: client-go async-commits, commit phase lost, ours recovers it", r);

    pessimistic_checks(run, report).await;
    shared_lock_checks(run, report).await;

    let r: Check = async {
        expect_eq("locks left", run.cluster.locks().len(), 0)?;
        expect_eq("committed data", run.cluster.mvcc_snapshot(u64::MAX), run.model.clone())
    }
    .await;
    report.record("interop: the cluster holds exactly the model's data, no locks", r);

    gc_checks(run, report).await;
}

/// A writer of ours prewrites `pairs` and crashes before its commit (every
/// `Commit` fails); returns its start ts.
async fn crash_ours_after_prewrite(
    run: &mut Run,
    pairs: &[(Vec<u8>, Vec<u8>)],
) -> Result<u64, String> {
    run.block_commits(Filter::any());
    let outcome = run.ours_commit(TransactionOptions::default(), pairs).await;
    run.cluster.clear_injections();
    match outcome {
        Err(Error::Undetermined(_)) => {}
        other => return Err(format!("our commit: want undetermined, got {other:?}")),
    }
    let keys: Vec<Vec<u8>> = pairs.iter().map(|(k, _)| k.clone()).collect();
    run.crashed_txn(&keys, keys.len())
}

impl Run {
    /// Transaction `start_ts`, below a GC round's safe point, was rolled
    /// back by the round: no lock and no commit record is left. Its
    /// rollback records are below the GC safe point, so the in-process
    /// stores collect them at once.
    fn expect_rolled_back_by_gc(&self, keys: &[Vec<u8>], start_ts: u64) -> Check {
        for k in keys {
            let record = self.cluster.commit_record(k, start_ts);
            if record.is_some_and(|r| r.kind != WriteKind::Rollback) {
                return Err(format!("key {k:x?} of txn {start_ts}: record {record:?} after GC"));
            }
        }
        let left = self.cluster.locks().into_iter().filter(|l| l.lock_version == start_ts);
        expect_eq("locks of the transaction left after GC", left.count(), 0)
    }

    /// GC kept, of each of `keys`, the versions after `safe_point` and the
    /// newest at or below it (committed at `kept`), nothing older. Only the
    /// in-process PD's stores collect: stores joined to a real PD run no
    /// GC worker, so there every version stays.
    fn expect_collected(&self, keys: &[Vec<u8>], safe_point: u64, kept: u64) -> Check {
        if self.bed != Bed::InProcess {
            return Ok(());
        }
        for k in keys {
            let records = self.cluster.write_records(k);
            let at_or_below: Vec<_> = records.iter().filter(|(ts, _)| *ts <= safe_point).collect();
            expect_eq(
                &format!("records of {k:x?} at or below the safe point"),
                at_or_below,
                vec![&(kept, WriteKind::Put)],
            )?;
        }
        Ok(())
    }
}

/// How long client-go may take to see a new txn safe point (its poller's
/// 10 s interval, and some).
const GO_SAFE_POINT_POLL: Duration = Duration::from_secs(15);

/// GC by one client, reads by the other (module docs).
async fn gc_checks(run: &mut Run, report: &mut Report) {
    let r: Check = async {
        let keys = spread("io-gc-go", 4);
        let crashed_keys = spread("io-gc-go-crashed", 4);
        let pairs = with_value(&keys, b"ours v1");
        let v1 = ours("commit v1", run.ours_commit(TransactionOptions::default(), &pairs).await)?;
        let pairs = with_value(&keys, b"ours v2");
        let v2 = ours("commit v2", run.ours_commit(TransactionOptions::default(), &pairs).await)?;
        // Its lock's TTL still runs when GC comes: GC resolves it anyway.
        let crashed = crash_ours_after_prewrite(run, &with_value(&crashed_keys, b"lost")).await?;
        let safe_point = ours("timestamp", run.mine.current_timestamp().await)?.version();
        let pairs = with_value(&keys, b"ours v3");
        ours("commit v3", run.ours_commit(TransactionOptions::default(), &pairs).await)?;
        run.remember(&pairs);
        expect_eq("client-go's GC safe point", run.go.gc(safe_point).await?, safe_point)?;
        run.expect_rolled_back_by_gc(&crashed_keys, crashed)?;
        run.expect_collected(&keys, safe_point, v2)?;
        run.ours_reads_model(&[keys.clone(), crashed_keys].concat()).await?;
        let at_safe_point = run.mine.snapshot(Timestamp::from_version(safe_point));
        for k in &keys {
            let got = ours("read at the safe point", at_safe_point.get(k.clone()).await)?;
            expect_eq(
                "ours at the safe point",
                got.map(|v| v.to_vec()),
                Some(b"ours v2".to_vec()),
            )?;
        }
        // A client of ours started after the round loads the txn safe point.
        let fresh = ours("connect", TransactionClient::connect(run.pd.clone()).await)?;
        match fresh.snapshot(Timestamp::from_version(v1)).get(keys[0].clone()).await {
            Err(Error::TxnAbortedByGc { .. }) => Ok(()),
            other => Err(format!("ours read below client-go's safe point: {other:?}")),
        }
    }
    .await;
    report.record(
        "interop: client-go's GC rolls back our crashed writer, keeps the newest version; ours \
         reads agree and are refused below its safe point",
        r,
    );

    let r: Check = async {
        let keys = spread("io-gc-ours", 4);
        let crashed_keys = spread("io-gc-ours-crashed", 4);
        let (_, w1) = run.go.commit("2pc", &with_value(&keys, b"go w1")).await?;
        let (_, w2) = run.go.commit("2pc", &with_value(&keys, b"go w2")).await?;
        // An hour's TTL: only GC's resolution (current ts = max) ends it.
        let pairs = with_value(&crashed_keys, b"lost");
        let (crashed, _) = run.go.prewrite_and_crash("2pc", 3_600_000, false, &pairs).await?;
        let safe_point = ours("timestamp", run.mine.current_timestamp().await)?;
        let pairs = with_value(&keys, b"go w3");
        run.go.commit("2pc", &pairs).await?;
        run.remember(&pairs);
        let outcome = ours("gc", run.mine.gc(safe_point).await)?;
        expect_eq("our GC safe point", outcome.safe_point, safe_point)?;
        let safe_point = safe_point.version();
        run.expect_rolled_back_by_gc(&crashed_keys, crashed)?;
        run.expect_collected(&keys, safe_point, w2)?;
        run.go_reads_model(&[keys.clone(), crashed_keys].concat()).await?;
        let want = vec![Some(b"go w2".to_vec()); keys.len()];
        expect_eq("client-go at the safe point", run.go.get_at(safe_point, &keys).await?, want)?;
        // client-go refuses once its poller has seen the new txn safe point.
        let deadline = tokio::time::Instant::now() + GO_SAFE_POINT_POLL;
        loop {
            match run.go.get_at(w1, &keys[..1]).await {
                Err(e) if e.contains("aborted-by-gc") => break Ok(()),
                Err(e) => break Err(e),
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(v) => {
                    break Err(format!(
                        "client-go still reads below our safe point after {GO_SAFE_POINT_POLL:?}: \
                         {v:?}"
                    ));
                }
            }
        }
    }
    .await;
    report.record(
        "interop: our GC rolls back client-go's crashed writer, keeps the newest version; \
         client-go reads agree and refuse below our safe point",
        r,
    );
}

fn pessimistic() -> TransactionOptions {
    TransactionOptions::default().with_pessimistic()
}

/// How long a waiting lock request may wait in the pessimistic checks.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// How long a blocked lock request must stay blocked before the holder
/// lets go, to show it really waits.
const HOLD: Duration = Duration::from_millis(300);

/// Pessimistic transactions of both clients on the same keys: each one's
/// lock blocks the other's until it commits, a deadlock across the two is
/// found by TiKV's detector whichever side closes the cycle, and a crashed
/// pessimistic writer of each is cleaned up by the other.
async fn pessimistic_checks(run: &mut Run, report: &mut Report) {
    let r: Check = async {
        let k = b"\x31io-pess-go-holds".to_vec();
        run.go.plock("hold-1", 0, std::slice::from_ref(&k)).await?;
        let mut t = ours("begin", run.mine.begin_with_options(pessimistic()).await)?;
        let waiter = tokio::spawn({
            let k = k.clone();
            async move {
                let r = t
                    .lock_keys([k], LockOptions::new().wait_timeout(LOCK_WAIT).return_values())
                    .await;
                (t, r)
            }
        });
        tokio::time::sleep(HOLD).await;
        if waiter.is_finished() {
            return Err("ours got the lock while client-go held it".into());
        }
        let pairs = vec![(k.clone(), b"go pessimistic".to_vec())];
        run.go.pcommit("hold-1", &pairs).await?;
        run.remember(&pairs);
        let (mut t, r) = waiter.await.map_err(|e| format!("our waiter: {e}"))?;
        let values = ours("lock after the wait", r)?;
        // A locking read returns the latest committed value: client-go's.
        expect_eq(
            "our locking read",
            values.iter().map(|(_, v)| v.value.to_vec()).collect::<Vec<_>>(),
            vec![b"go pessimistic".to_vec()],
        )?;
        ours("put", t.put(k.clone(), b"ours after go".to_vec()))?;
        ours("commit", t.commit().await)?;
        run.remember(&[(k.clone(), b"ours after go".to_vec())]);
        run.go_reads_model(&[k]).await
    }
    .await;
    report.record("interop: client-go's pessimistic lock blocks ours until it commits", r);

    let r: Check = async {
        let k = b"\x32io-pess-ours-holds".to_vec();
        let mut t = ours("begin", run.mine.begin_with_options(pessimistic()).await)?;
        ours("lock", t.lock_keys([k.clone()], LockOptions::new()).await)?;
        run.go.plock_bg("wait-2", 0, std::slice::from_ref(&k)).await?;
        tokio::time::sleep(HOLD).await;
        ours("put", t.put(k.clone(), b"ours pessimistic".to_vec()))?;
        let commit_ts = ours("commit", t.commit().await)?.version();
        let (_, for_update_ts) = run.go.await_lock("wait-2").await?;
        // client-go's lock was granted after our commit: it locked at a
        // for_update_ts newer than that commit (woken, it met our write and
        // retried with a fresh one).
        if for_update_ts <= commit_ts {
            return Err(format!(
                "client-go locked at for_update_ts {for_update_ts}, not after our commit {commit_ts}"
            ));
        }
        let pairs = vec![(k.clone(), b"go after ours".to_vec())];
        run.go.pcommit("wait-2", &pairs).await?;
        run.remember(&pairs);
        run.ours_reads_model(&[k]).await
    }
    .await;
    report.record("interop: our pessimistic lock blocks client-go's until we commit", r);

    let r: Check = async {
        let (ka, kb) = (b"\x33io-dl-a".to_vec(), b"\xb3io-dl-b".to_vec());
        let mut t = ours("begin", run.mine.begin_with_options(pessimistic()).await)?;
        ours("lock a", t.lock_keys([ka.clone()], LockOptions::new()).await)?;
        run.go.plock("dl-3", 0, std::slice::from_ref(&kb)).await?;
        // client-go waits for our lock on a; our request for b closes the cycle.
        run.go.plock_bg("dl-3", 0, std::slice::from_ref(&ka)).await?;
        tokio::time::sleep(HOLD).await;
        match t.lock_keys([kb.clone()], LockOptions::new().wait_timeout(LOCK_WAIT)).await {
            Err(Error::Deadlock { wait_chain, .. }) if !wait_chain.is_empty() => {}
            other => return Err(format!("ours closes the cycle: want Deadlock, got {other:?}")),
        }
        ours("the victim rolls back", t.rollback().await)?;
        run.go.await_lock("dl-3").await?;
        let pairs =
            vec![(ka.clone(), b"go survived".to_vec()), (kb.clone(), b"go survived".to_vec())];
        run.go.pcommit("dl-3", &pairs).await?;
        run.remember(&pairs);
        run.ours_reads_model(&[ka, kb]).await
    }
    .await;
    report.record(
        "interop: a deadlock closed by ours fails ours with Deadlock, client-go goes on",
        r,
    );

    let r: Check = async {
        let (kc, kd) = (b"\x34io-dl-c".to_vec(), b"\xb4io-dl-d".to_vec());
        let mut t = ours("begin", run.mine.begin_with_options(pessimistic()).await)?;
        ours("lock c", t.lock_keys([kc.clone()], LockOptions::new()).await)?;
        run.go.plock("dl-4", 0, std::slice::from_ref(&kd)).await?;
        let waiter = tokio::spawn({
            let kd = kd.clone();
            async move {
                let r = t.lock_keys([kd], LockOptions::new().wait_timeout(LOCK_WAIT)).await;
                (t, r)
            }
        });
        tokio::time::sleep(HOLD).await;
        match run.go.plock("dl-4", 0, std::slice::from_ref(&kc)).await {
            Err(e) if e.contains("err deadlock") => {}
            other => {
                return Err(format!("client-go closes the cycle: want deadlock, got {other:?}"));
            }
        }
        run.go.prollback("dl-4").await?;
        let (mut t, r) = waiter.await.map_err(|e| format!("our waiter: {e}"))?;
        ours("our lock once client-go rolled back", r)?;
        let pairs =
            vec![(kc.clone(), b"ours survived".to_vec()), (kd.clone(), b"ours survived".to_vec())];
        for (k, v) in &pairs {
            ours("put", t.put(k.clone(), v.clone()))?;
        }
        ours("commit", t.commit().await)?;
        run.remember(&pairs);
        run.go_reads_model(&[kc, kd]).await
    }
    .await;
    report
        .record("interop: a deadlock closed by client-go fails it with Deadlock, ours goes on", r);

    // Both sides crash a pessimistic writer at once, so the wait for our
    // lock's TTL (client-go's ManagedLockTTL, 20 s) is paid once.
    let r: Check = async {
        let (ke, kf) = (b"\x35io-crash-go".to_vec(), b"\xb5io-crash-ours".to_vec());
        // client-go's crashing writer gets a short TTL; later ones the default.
        run.go.set_lock_ttl(GO_PESSIMISTIC_TTL_MS).await?;
        let locked = run.go.plock("crash-5", 0, std::slice::from_ref(&ke)).await;
        run.go.set_lock_ttl(MANAGED_LOCK_TTL_MS).await?;
        let (go_start, _) = locked?;
        expect_eq("client-go's crashed start ts", run.go.pcrash("crash-5").await?, go_start)?;

        let our_start = crash_ours_holding(run, &kf).await?;
        expect_eq(
            "our crashed writer's lock",
            run.crashed_txn(std::slice::from_ref(&kf), 1)?,
            our_start,
        )?;

        // client-go waits on our crashed lock until its TTL has passed,
        // then resolves it.
        run.go.plock_bg("after-crash-6", 0, std::slice::from_ref(&kf)).await?;
        let mut t = ours("begin", run.mine.begin_with_options(pessimistic()).await)?;
        ours(
            "ours locks past client-go's crashed lock",
            t.lock_keys([ke.clone()], LockOptions::new().wait_timeout(LOCK_WAIT)).await,
        )?;
        ours("put", t.put(ke.clone(), b"ours after go crashed".to_vec()))?;
        ours("commit", t.commit().await)?;
        run.remember(&[(ke.clone(), b"ours after go crashed".to_vec())]);
        run.go.await_lock("after-crash-6").await?;
        let pairs = vec![(kf.clone(), b"go after ours crashed".to_vec())];
        run.go.pcommit("after-crash-6", &pairs).await?;
        run.remember(&pairs);
        for start in [go_start, our_start] {
            let left = run.cluster.locks().into_iter().filter(|l| l.lock_version == start).count();
            expect_eq(&format!("locks of crashed txn {start}"), left, 0)?;
        }
        run.ours_reads_model(&[ke.clone(), kf.clone()]).await?;
        run.go_reads_model(&[ke, kf]).await
    }
    .await;
    report
        .record("interop: a crashed pessimistic writer of each side is cleaned up by the other", r);
}

/// The shares of key `k`'s lock, by holder start ts (none if `k` is not
/// locked in share mode).
fn share_holders(run: &Run, k: &[u8]) -> Vec<u64> {
    run.cluster
        .locks()
        .into_iter()
        .filter(|l| l.key == k)
        .flat_map(|l| l.shared_lock_infos.into_iter().map(|h| h.lock_version))
        .collect()
}

/// Waits (up to 10 s) until key `k`'s shares are held by `want` (sorted):
/// both clients commit a share, a secondary, in the background after the
/// primary.
async fn shares_become(run: &Run, what: &str, k: &[u8], want: Vec<u64>) -> Check {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut holders = share_holders(run, k);
        holders.sort();
        if holders == want || tokio::time::Instant::now() >= deadline {
            return expect_eq(what, holders, want);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shared pessimistic locks across the two clients: a share held by one
/// lets the other share the key too but not lock it exclusively, and both
/// holders' commits release their shares. Each side's share needs an
/// exclusive primary first (client-go's rule, ours too).
async fn shared_lock_checks(run: &mut Run, report: &mut Report) {
    let r: Check = async {
        let (go_primary, our_primary, k) =
            (b"\x36io-sh-go-p".to_vec(), b"\x76io-sh-ours-p".to_vec(), b"\xb6io-sh-go".to_vec());
        run.go.plock("sh-7", 0, std::slice::from_ref(&go_primary)).await?;
        let (go_start, _) = run.go.plock_shared("sh-7", 0, std::slice::from_ref(&k)).await?;
        let mut t = ours("begin", run.mine.begin_with_options(pessimistic()).await)?;
        ours("our primary", t.lock_keys([our_primary.clone()], LockOptions::new()).await)?;
        ours(
            "our share beside client-go's",
            t.lock_keys([k.clone()], LockOptions::new().in_share_mode().no_wait()).await,
        )?;
        let mut holders = share_holders(run, &k);
        holders.sort();
        let mut want = vec![go_start, t.start_timestamp().version()];
        want.sort();
        expect_eq("the key's share holders", holders, want)?;
        let mut other = ours("begin", run.mine.begin_with_options(pessimistic()).await)?;
        match other.lock_keys([k.clone()], LockOptions::new().no_wait()).await {
            Err(Error::LockAcquireFailAndNoWaitSet) => {}
            r => {
                return Err(format!("our exclusive lock over the shares: want no-wait, got {r:?}"));
            }
        }
        ours("rollback the refused", other.rollback().await)?;
        let pairs = vec![(go_primary.clone(), b"go shared".to_vec())];
        run.go.pcommit("sh-7", &pairs).await?;
        run.remember(&pairs);
        let ours_only = vec![t.start_timestamp().version()];
        shares_become(run, "shares after client-go's commit", &k, ours_only).await?;
        ours("put", t.put(our_primary.clone(), b"ours shared".to_vec()))?;
        ours("commit", t.commit().await)?;
        run.remember(&[(our_primary.clone(), b"ours shared".to_vec())]);
        shares_become(run, "shares after both commits", &k, Vec::new()).await?;
        run.go_reads_model(&[go_primary, our_primary, k]).await
    }
    .await;
    report.record(
        "interop: client-go's shared lock admits our share and refuses our exclusive lock",
        r,
    );

    let r: Check = async {
        let (our_primary, go_primary, k) =
            (b"\x37io-sh-ours-p".to_vec(), b"\x77io-sh-go-p".to_vec(), b"\xb7io-sh-ours".to_vec());
        let mut t = ours("begin", run.mine.begin_with_options(pessimistic()).await)?;
        ours("our primary", t.lock_keys([our_primary.clone()], LockOptions::new()).await)?;
        ours("our share", t.lock_keys([k.clone()], LockOptions::new().in_share_mode()).await)?;
        run.go.plock("sh-8", 0, std::slice::from_ref(&go_primary)).await?;
        let (go_start, _) = run.go.plock_shared("sh-8", -1, std::slice::from_ref(&k)).await?;
        let mut holders = share_holders(run, &k);
        holders.sort();
        let mut want = vec![go_start, t.start_timestamp().version()];
        want.sort();
        expect_eq("the key's share holders", holders, want)?;
        match run.go.plock("sh-9", -1, std::slice::from_ref(&k)).await {
            Err(e) if e.contains("err no-wait") => {}
            other => {
                return Err(format!(
                    "client-go's exclusive lock over the shares: want no-wait, got {other:?}"
                ));
            }
        }
        run.go.prollback("sh-9").await?;
        ours("put", t.put(our_primary.clone(), b"ours shared".to_vec()))?;
        ours("commit", t.commit().await)?;
        run.remember(&[(our_primary.clone(), b"ours shared".to_vec())]);
        shares_become(run, "shares after our commit", &k, vec![go_start]).await?;
        let pairs = vec![(go_primary.clone(), b"go shared".to_vec())];
        run.go.pcommit("sh-8", &pairs).await?;
        run.remember(&pairs);
        shares_become(run, "shares after both commits", &k, Vec::new()).await?;
        run.ours_reads_model(&[our_primary, go_primary, k]).await
    }
    .await;
    report.record(
        "interop: our shared lock admits client-go's share and refuses its exclusive lock",
        r,
    );
}

/// client-go's default `ManagedLockTTL`, which our pessimistic locks use too.
const MANAGED_LOCK_TTL_MS: u64 = 20_000;

/// client-go's crashing pessimistic writer's lock TTL, short so that our
/// lock request need not wait long.
const GO_PESSIMISTIC_TTL_MS: u64 = 500;

/// A pessimistic writer of ours locks `key` and its process dies: a client
/// of its own on a runtime of its own, shut down with the transaction still
/// open, so that neither its keep-alive nor its rollback-on-drop runs.
/// Returns the crashed transaction's start ts.
async fn crash_ours_holding(run: &Run, key: &[u8]) -> Result<u64, String> {
    let process = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime for the crashing writer: {e}"))?;
    let pd = run.pd.clone();
    let key = key.to_vec();
    let locked = process
        .spawn(async move {
            let client = TransactionClient::connect(pd).await?;
            let mut t = client.begin_with_options(pessimistic()).await?;
            t.lock_keys([key], LockOptions::new()).await?;
            Ok::<_, Error>((client, t))
        })
        .await
        .map_err(|e| format!("the crashing writer: {e}"))?;
    let (client, t) = ours("the crashing writer locks", locked)?;
    let start = t.start_timestamp().version();
    process.shutdown_background();
    // Dropping them would run the rollback-on-drop a crash never runs.
    std::mem::forget(t);
    std::mem::forget(client);
    Ok(start)
}

async fn start(
    bed: Bed,
    go_bin: &PathBuf,
    go_log: Option<&PathBuf>,
) -> Result<(Run, SimHandle), String> {
    let tso_base_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| e.to_string())?;
    let config = ClusterConfig {
        stores: 3,
        split_keys: vec![vec![0x40], vec![0x80], vec![0xc0]],
        v1_txn: true,
        tso_base_ms,
        ..ClusterConfig::default()
    };
    let server = SimHandle::start(bed, config).await;
    let cluster = server.cluster().clone();
    let pd = server.pd_addrs();
    // Short commit budgets: a "crashed" writer of ours gives up quickly.
    let mut budgets = BackoffBudgets::default();
    budgets.commit = Duration::from_millis(300);
    budgets.prewrite = Duration::from_millis(300);
    let config = Config::default().with_pd_endpoints(pd.clone()).with_backoff_budgets(budgets);
    let mine = TransactionClient::connect_with_config(config)
        .await
        .map_err(|e| format!("connect ours: {e}"))?;
    let go = GoPeer::start(go_bin, &pd[0], bed, go_log).await?;
    Ok((Run { cluster, pd, mine, go, model: Model::new(), bed }, server))
}

fn parse_args() -> Result<(PathBuf, Option<PathBuf>, Bed), String> {
    let mut go_bin = None;
    let mut go_log = None;
    let mut bed = Bed::InProcess;
    let mut it = std::env::args_os().skip(1);
    while let Some(flag) = it.next() {
        if flag.to_str() == Some("--real-pd") {
            bed = Bed::RealPd;
            continue;
        }
        let value = it.next().map(PathBuf::from);
        match (flag.to_str(), value) {
            (Some("--go-bin"), Some(v)) => go_bin = Some(v),
            (Some("--go-log"), Some(v)) => go_log = Some(v),
            _ => return Err(format!("bad argument {flag:?}")),
        }
    }
    Ok((go_bin.ok_or("--go-bin is required")?, go_log, bed))
}

fn main() -> ExitCode {
    let (go_bin, go_log, bed) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\nusage: interop-client-go --go-bin PATH [--go-log FILE] [--real-pd]");
            return ExitCode::from(2);
        }
    };
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("cannot start a tokio runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    let mut report = Report::default();
    rt.block_on(async {
        let (mut run, server) = match start(bed, &go_bin, go_log.as_ref()).await {
            Ok(s) => s,
            Err(e) => {
                report.record("interop: start the cluster, our client and client-go", Err(e));
                return;
            }
        };
        let limit = Duration::from_secs(240);
        if tokio::time::timeout(limit, checks(&mut run, &mut report)).await.is_err() {
            report.record("interop run", Err(format!("timed out after {limit:?}")));
        }
        run.go.quit().await;
        server.shutdown().await;
    });
    println!("interop client-go: {} passed, {} failed", report.passed, report.failed);
    if report.failed == 0 && report.passed > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
