//! The fuzz targets' properties (`tikv_tests::props`), run on stable with a
//! fixed time budget per property so CI exercises them without nightly.
//!
//! arbtest picks a random seed per run and prints it on failure; rerun one
//! with `ARBTEST_SEED=<seed>` isn't needed: paste the seed into
//! `.seed(0x...)` on the failing property to replay and minimise it.

use tikv_tests::props;

/// Per-property time budget: a few seconds of random inputs each keeps the
/// whole file well under CI's share.
const BUDGET_MS: u64 = 2_000;

#[test]
fn raw_operations_survive_arbitrary_events() {
    arbtest::arbtest(props::raw_op_events).budget_ms(BUDGET_MS);
}

#[test]
fn region_cache_agrees_with_a_model() {
    arbtest::arbtest(props::region_cache).budget_ms(BUDGET_MS);
}

#[test]
fn tso_timestamps_strictly_increase() {
    arbtest::arbtest(props::tso_batcher).budget_ms(BUDGET_MS);
}

#[test]
fn batch_collector_answers_every_caller_once_with_its_own_answer() {
    arbtest::arbtest(props::batch_collector).budget_ms(BUDGET_MS);
}

#[test]
fn worlds_from_arbitrary_schedules_pass() {
    arbtest::arbtest(props::world_schedule).budget_ms(BUDGET_MS);
}

#[test]
fn lock_resolver_acts_only_on_what_it_was_told() {
    arbtest::arbtest(props::lock_resolver).budget_ms(BUDGET_MS);
}

#[test]
fn committer_reports_only_what_the_protocol_allows() {
    arbtest::arbtest(props::committer).budget_ms(BUDGET_MS);
}

/// Inputs the fuzzers once failed on, replayed through their properties:
/// `tests/fuzz-regressions/<target>/<name>` (a failing `cargo fuzz`
/// artifact, copied and named after what it found).
#[test]
fn fuzz_regressions_pass() {
    type Property = fn(&mut arbitrary::Unstructured<'_>) -> arbitrary::Result<()>;
    let targets: [(&str, Property); 2] =
        [("lock_resolver", props::lock_resolver), ("committer", props::committer)];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-regressions");
    let mut replayed = 0;
    for (target, property) in targets {
        let Ok(dir) = std::fs::read_dir(root.join(target)) else { continue };
        let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("readable regression input");
            let _ = property(&mut arbitrary::Unstructured::new(&data));
            replayed += 1;
        }
    }
    assert!(replayed >= 2, "the kept inputs are found (replayed {replayed})");
}
