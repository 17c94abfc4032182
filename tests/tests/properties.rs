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
fn worlds_from_arbitrary_schedules_pass() {
    arbtest::arbtest(props::world_schedule).budget_ms(BUDGET_MS);
}
