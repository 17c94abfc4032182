//! Test your application under simulation: a transfer ledger with
//! idempotency keys, swept over many seeds of faults.
//!
//! The service ([`Ledger`]) is ordinary application code on the public
//! client, generic over `tikv_driver::Platform`: in production it runs as
//! `Ledger<tikv_tokio::Tokio>`, here as `Ledger<SimPlatform>`. Each
//! transfer request carries an id chosen by its caller; the ledger applies
//! it in one transaction that also writes the request's receipt under
//! `ledger/req/<id>`, and a request whose receipt exists is answered from
//! it. Callers retry whatever did not come back as a success (errors,
//! undetermined commits, their own timeouts), so a request may arrive many
//! times and must be applied exactly once.
//!
//! The invariant, checked from one snapshot after the faults healed: every
//! request has a receipt agreeing with what its caller was told, each
//! balance is its opening balance plus the transfers the receipts say were
//! applied, and no balance is negative.
//!
//! [`Ledger::without_idempotency`] is the deliberately broken variant: it
//! writes receipts but never reads them, so a retried request whose first
//! attempt committed unseen (its answer lost, or its caller timed out) is
//! applied twice. The sweep catches it.
//!
//! ```text
//! cargo run --release -p tikv-sim --example ledger -- 1000          # sweep 1,000 seeds
//! cargo run --release -p tikv-sim --example ledger -- --seed 42     # replay one, with its trace
//! cargo test --release -p tikv-sim --example ledger                 # the tests below
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{self, Either};
use tikv_driver::{Error, Platform, TransactionClient};
use tikv_sim::platform::{Sim, SimConfig, SimFailure, simulate};

/// What a transfer request did, as its receipt records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receipt {
    /// The money moved.
    Applied,
    /// The payer could not cover it; nothing moved.
    Rejected,
}

impl Receipt {
    fn encode(self) -> &'static str {
        match self {
            Receipt::Applied => "applied",
            Receipt::Rejected => "rejected",
        }
    }

    fn decode(v: &[u8]) -> Result<Receipt, Error> {
        match v {
            b"applied" => Ok(Receipt::Applied),
            b"rejected" => Ok(Receipt::Rejected),
            other => Err(Error::Internal(format!("a corrupt receipt: {other:?}"))),
        }
    }
}

/// One transfer request; `id` is the caller's idempotency key.
#[derive(Clone, Debug)]
pub struct Transfer {
    /// Unique per request, the same on every retry of it.
    pub id: String,
    /// The payer's account.
    pub from: u32,
    /// The payee's account.
    pub to: u32,
    /// How much moves.
    pub amount: i64,
}

fn account_key(account: u32) -> String {
    format!("ledger/acct/{account:03}")
}

fn receipt_key(id: &str) -> String {
    format!("ledger/req/{id}")
}

fn parse_balance(v: Option<impl AsRef<[u8]>>) -> Result<i64, Error> {
    let v = v.ok_or_else(|| Error::Internal("an account is missing".into()))?;
    String::from_utf8_lossy(v.as_ref())
        .parse()
        .map_err(|e| Error::Internal(format!("a corrupt balance: {e}")))
}

/// The service: balances and receipts in TiKV, one transaction per request.
pub struct Ledger<P: Platform> {
    txns: TransactionClient<P>,
    checks_receipts: bool,
}

impl<P: Platform> Ledger<P> {
    /// The ledger as it should be written.
    pub fn new(txns: TransactionClient<P>) -> Self {
        Ledger { txns, checks_receipts: true }
    }

    /// The broken variant: receipts are written but never consulted.
    pub fn without_idempotency(txns: TransactionClient<P>) -> Self {
        Ledger { txns, checks_receipts: false }
    }

    /// Opens the accounts with their balances.
    pub async fn open(&self, balances: &[i64]) -> Result<(), Error> {
        let mut txn = self.txns.begin().await?;
        for (account, balance) in (0u32..).zip(balances) {
            txn.put(account_key(account), balance.to_string())?;
        }
        txn.commit().await.map(drop)
    }

    /// Applies `request` once, however often it arrives. The receipt is
    /// read and written in the same transaction as the balances, so two
    /// attempts of one request conflict and at most one commits; an
    /// attempt after a committed one finds its receipt.
    pub async fn transfer(&self, request: &Transfer) -> Result<Receipt, Error> {
        let mut txn = self.txns.begin().await?;
        let receipt_key = receipt_key(&request.id);
        if self.checks_receipts
            && let Some(receipt) = txn.get(receipt_key.clone()).await?
        {
            txn.rollback().await?;
            return Receipt::decode(&receipt);
        }
        let from = parse_balance(txn.get(account_key(request.from)).await?)?;
        let receipt = if from < request.amount {
            Receipt::Rejected
        } else {
            let to = parse_balance(txn.get(account_key(request.to)).await?)?;
            txn.put(account_key(request.from), (from - request.amount).to_string())?;
            txn.put(account_key(request.to), (to + request.amount).to_string())?;
            Receipt::Applied
        };
        txn.put(receipt_key, receipt.encode())?;
        txn.commit().await?;
        Ok(receipt)
    }
}

/// The test harness from here on: callers, the invariant, the sweep.
const ACCOUNTS: u32 = 4;
const OPENING_BALANCE: i64 = 100;
const CALLERS: u32 = 3;
const REQUESTS_PER_CALLER: u32 = 6;
/// A caller stops waiting for an answer after this long (virtual time) and
/// sends the request again.
const CALLER_TIMEOUT: Duration = Duration::from_secs(1);

/// Which ledger a run tests.
#[derive(Clone, Copy, Debug)]
pub enum Variant {
    /// [`Ledger::new`].
    Correct,
    /// [`Ledger::without_idempotency`].
    WithoutIdempotency,
}

/// What callers were told: request id → (request, final answer).
type Answers = BTreeMap<String, (Transfer, Receipt)>;

/// Sends `request` until an answer comes back within the caller's timeout,
/// as a client of the service behind a flaky network would. Gives up (an
/// error) only a minute of virtual time after the faults healed.
async fn submit<P: Platform>(
    sim: &Sim,
    ledger: &Ledger<P>,
    request: &Transfer,
) -> Result<Receipt, String> {
    let give_up = sim.heal_at().unwrap_or(sim.now()) + tikv_core::time::Duration::from_secs(60);
    let mut last = String::new();
    while sim.now() < give_up {
        let attempt = std::pin::pin!(ledger.transfer(request));
        // Dropping an attempt that timed out is part of the test: its
        // commit may still have happened.
        match future::select(attempt, std::pin::pin!(sim.sleep(CALLER_TIMEOUT))).await {
            Either::Left((Ok(receipt), _)) => {
                sim.log(format!("request {}: {receipt:?}", request.id));
                return Ok(receipt);
            }
            Either::Left((Err(e), _)) => last = e.to_string(),
            Either::Right(((), _)) => last = "timed out".into(),
        }
        // The trace shows why each request was sent again.
        sim.log(format!("request {}: {last}; sending it again", request.id));
        sim.sleep(Duration::from_millis(50)).await;
    }
    Err(format!("request {} was never answered; last attempt: {last}", request.id))
}

/// One seed's run: open the books, let the callers send their transfers
/// through the seed's faults, then check the invariant.
async fn run(sim: Sim, variant: Variant) -> Result<usize, String> {
    let connect = |sim: Sim| async move {
        let txns = sim.txn_client().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(match variant {
            Variant::Correct => Ledger::new(txns),
            Variant::WithoutIdempotency => Ledger::without_idempotency(txns),
        })
    };
    let setup = connect(sim.clone()).await?;
    setup.open(&[OPENING_BALANCE; ACCOUNTS as usize]).await.map_err(|e| e.to_string())?;
    let answers = Arc::new(Mutex::new(Answers::new()));
    // The callers' requests are spread over the fault window.
    let window = sim.heal_at().map_or(Duration::from_secs(1), |at| {
        Duration::from_nanos(at.as_nanos().max(1_000_000_000))
    });
    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let ledger = connect(sim.clone()).await?;
        let (sim2, answers) = (sim.clone(), answers.clone());
        callers.push(sim.spawn(async move {
            for n in 0..REQUESTS_PER_CALLER {
                sim2.sleep(window / REQUESTS_PER_CALLER * (c + 1) / CALLERS).await;
                let from = (c + n) % ACCOUNTS;
                let request = Transfer {
                    id: format!("c{c}-{n}"),
                    from,
                    to: (from + 1 + n % (ACCOUNTS - 1)) % ACCOUNTS,
                    amount: i64::from(10 + (c * 7 + n * 13) % 50),
                };
                let receipt = submit(&sim2, &ledger, &request).await?;
                answers.lock().unwrap().insert(request.id.clone(), (request, receipt));
            }
            Ok::<_, String>(())
        }));
    }
    for caller in callers {
        caller.await?;
    }
    let answers = answers.lock().unwrap().clone();
    check_books(&setup, &answers).await?;
    Ok(answers.len())
}

/// The invariant, from one snapshot.
async fn check_books<P: Platform>(ledger: &Ledger<P>, answers: &Answers) -> Result<(), String> {
    let ts = ledger.txns.current_timestamp().await.map_err(|e| e.to_string())?;
    let pairs = ledger
        .txns
        .snapshot(ts)
        .scan("ledger/".to_owned().."ledger0".to_owned(), 1000)
        .await
        .map_err(|e| e.to_string())?;
    let stored: BTreeMap<String, Vec<u8>> = pairs
        .into_iter()
        .map(|p| (String::from_utf8_lossy(p.key.as_bytes()).into_owned(), p.value.to_vec()))
        .collect();
    let mut expected: BTreeMap<u32, i64> = (0..ACCOUNTS).map(|a| (a, OPENING_BALANCE)).collect();
    for (id, (request, told)) in answers {
        let receipt = stored
            .get(&receipt_key(id))
            .ok_or_else(|| format!("request {id} was answered {told:?} but has no receipt"))?;
        let receipt = Receipt::decode(receipt).map_err(|e| e.to_string())?;
        if receipt != *told {
            return Err(format!(
                "request {id}: its caller was told {told:?}, the receipt says {receipt:?}"
            ));
        }
        if receipt == Receipt::Applied {
            *expected.get_mut(&request.from).unwrap() -= request.amount;
            *expected.get_mut(&request.to).unwrap() += request.amount;
        }
    }
    for (account, want) in expected {
        let have = parse_balance(stored.get(&account_key(account))).map_err(|e| e.to_string())?;
        if have != want {
            return Err(format!(
                "account {account} holds {have}, but its receipts add up to {want}: \
                 a transfer was applied more or less than once"
            ));
        }
        if have < 0 {
            return Err(format!("account {account} is overdrawn: {have}"));
        }
    }
    Ok(())
}

/// Runs one seed of `variant` with the seed's faults.
pub fn check_seed(seed: u64, variant: Variant, trace: bool) -> Result<usize, SimFailure> {
    let config = SimConfig { trace, ..SimConfig::chaos() };
    simulate(seed, config, move |sim| run(sim, variant)).map(|report| report.output)
}

/// The seeds of `seeds` on which `variant` fails.
pub fn sweep(seeds: std::ops::Range<u64>, variant: Variant) -> Vec<SimFailure> {
    tikv_sim::platform::sweep(seeds, &SimConfig::chaos(), move |sim| run(sim, variant))
}

/// `ledger [SEEDS]` sweeps seeds 0..SEEDS (default 1000) of the correct
/// ledger and prints the failures; `ledger --seed N` replays seed N with
/// its trace; `--broken` tests the broken variant instead.
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let variant = if args.iter().any(|a| a == "--broken") {
        Variant::WithoutIdempotency
    } else {
        Variant::Correct
    };
    let seed = args.iter().position(|a| a == "--seed").and_then(|i| args.get(i + 1));
    if let Some(seed) = seed.and_then(|s| s.parse().ok()) {
        return match check_seed(seed, variant, true) {
            Ok(requests) => {
                println!("seed {seed}: passed ({requests} requests)");
                ExitCode::SUCCESS
            }
            Err(failure) => {
                print!("{}", failure.trace);
                println!("{failure}");
                ExitCode::FAILURE
            }
        };
    }
    let seeds = args.iter().find_map(|a| a.parse::<u64>().ok()).unwrap_or(1000);
    // Wall time only measures the sweep; the simulation never sees it.
    let started = std::time::Instant::now();
    let failures = sweep(0..seeds, variant);
    for f in &failures {
        println!("{f}");
    }
    println!(
        "{variant:?}: {} of {seeds} seeds failed in {:.1} s",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `TIKV_SIM_SEEDS` overrides the number of seeds.
    fn seeds() -> u64 {
        std::env::var("TIKV_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000)
    }

    #[test]
    fn the_ledger_applies_every_request_exactly_once_under_faults() {
        let n = seeds();
        let failures = sweep(0..n, Variant::Correct);
        if let Some(first) = failures.first() {
            let all: Vec<u64> = failures.iter().map(|f| f.seed).collect();
            panic!("{} of {n} seeds failed ({all:?}); the first:\n{first}", failures.len());
        }
    }

    #[test]
    fn the_sweep_catches_the_ledger_without_idempotency_keys() {
        let n = seeds();
        let failures = sweep(0..n, Variant::WithoutIdempotency);
        let caught: Vec<&SimFailure> = failures
            .iter()
            .filter(|f| f.reason.contains("applied more or less than once"))
            .collect();
        assert!(
            !caught.is_empty(),
            "no seed of {n} caught the broken ledger; other failures: {:?}",
            failures.iter().map(|f| &f.reason).collect::<Vec<_>>()
        );
        // A caught seed replays: the same failure, byte for byte.
        let first = caught[0];
        let again = check_seed(first.seed, Variant::WithoutIdempotency, false).unwrap_err();
        assert_eq!((again.trace_hash, &again.reason), (first.trace_hash, &first.reason));
    }
}
