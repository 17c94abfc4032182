//! `real-pd`: starts the real PD of `shared/pd/` beside the checkout
//! ([`tikv_sim::real_pd::RealPd`]: free loopback ports, `pd-fast.toml`) for
//! scripts, prints `addr=HOST:PORT pid=N data=DIR` and exits, leaving PD
//! running. The caller stops it by pid and removes `DIR` and its `.log`,
//! `.stdout` and `.pid` siblings (`tests/run-peers.sh` does both in a trap).
//! Fails with PD's own message when `shared/pd/` is missing.

use tikv_sim::real_pd::RealPd;

fn main() {
    let pd = RealPd::start();
    let (addr, pid) = (pd.addr().to_owned(), pd.pid());
    let data = pd.detach();
    println!("addr={addr} pid={pid} data={}", data.display());
}
