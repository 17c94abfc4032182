//! Transcript and unit tests of the region cache and store table.

use std::fmt::Write as _;

use tikv_proto::metapb;

use super::*;
use crate::time::Duration;

const TTL: Duration = Duration::from_secs(600);
const JITTER: Duration = Duration::from_secs(60);

fn t(secs: u64) -> Instant {
    Instant::from_millis(secs * 1000)
}

/// Peer ids are `region * 100 + store`, so transcripts show both.
fn peer(region: u64, store: u64) -> metapb::Peer {
    metapb::Peer { id: region * 100 + store, store_id: store, ..Default::default() }
}

fn meta(
    id: u64,
    start: &str,
    end: &str,
    conf_ver: u64,
    version: u64,
    stores: &[u64],
) -> metapb::Region {
    metapb::Region {
        id,
        start_key: start.as_bytes().to_vec().into(),
        end_key: end.as_bytes().to_vec().into(),
        region_epoch: Some(metapb::RegionEpoch { conf_ver, version }),
        peers: stores.iter().map(|&s| peer(id, s)).collect(),
        ..Default::default()
    }
}

fn cache() -> RegionCache {
    RegionCache::new(TTL, JITTER, 7)
}

/// Inserts with the leader on `leader_store`.
fn put(c: &RegionCache, m: metapb::Region, leader_store: u64, now: Instant) -> RegionRef {
    let leader = m.peers.iter().find(|p| p.store_id == leader_store).cloned();
    c.insert(m, leader, now).expect("well-formed region")
}

/// One line per region: identity, range, leader, validity.
fn show(r: Option<&RegionRef>) -> String {
    match r {
        None => "none".to_string(),
        Some(r) => {
            let mut s = format!(
                "r{} v{}.{} {:?} leader s{}",
                r.id(),
                r.ver_id().conf_ver,
                r.ver_id().version,
                r.range(),
                r.leader_store_id()
            );
            if let Some(reason) = r.invalid_reason() {
                write!(s, " INVALID({reason})").unwrap();
            }
            s
        }
    }
}

fn dump(c: &RegionCache) -> String {
    let mut s = String::new();
    for r in c.snapshot() {
        writeln!(s, "    {}", show(Some(&r))).unwrap();
    }
    s
}

#[test]
fn region_cache_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RegionCache>();
    assert_send_sync::<StoreTable>();
    assert_send_sync::<RegionRef>();
}

#[test]
fn lookup_by_key_end_key_and_id() {
    let c = cache();
    let now = t(0);
    put(&c, meta(1, "", "b", 1, 1, &[1, 2, 3]), 1, now);
    put(&c, meta(2, "b", "d", 1, 1, &[1, 2, 3]), 2, now);
    // gap [d, f)
    put(&c, meta(3, "f", "h", 1, 1, &[1, 2, 3]), 3, now);
    put(&c, meta(4, "h", "", 1, 1, &[2, 3, 4]), 4, now);
    assert_eq!(c.len(), 4);

    let mut out = String::from("cache:\n");
    out += &dump(&c);
    for key in ["", "a", "b", "c", "d", "e", "f", "g\u{7f}", "h", "zzz"] {
        writeln!(
            out,
            "locate_key({key:?}) -> {}",
            show(c.locate_key(key.as_bytes(), now).as_ref())
        )
        .unwrap();
    }
    for key in ["", "a", "b", "c", "d", "e", "f", "g", "h", "i"] {
        writeln!(
            out,
            "locate_end_key({key:?}) -> {}",
            show(c.locate_end_key(key.as_bytes(), now).as_ref())
        )
        .unwrap();
    }
    for id in [1, 3, 4, 5] {
        writeln!(out, "get_by_id({id}) -> {}", show(c.get_by_id(id, now).as_ref())).unwrap();
    }
    insta::assert_snapshot!(out);

    // Handles are shared, not copies.
    let a = c.locate_key(b"c", now).unwrap();
    let b = c.get_by_id(2, now).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.to_meta().start_key.as_ref(), b"b");
    assert_eq!(a.peers().len(), 3);
    assert_eq!(a.leader().id, 202);
}

#[test]
fn stale_regions_are_refused() {
    let c = cache();
    let now = t(0);
    put(&c, meta(1, "a", "m", 3, 5, &[1, 2]), 1, now);
    put(&c, meta(2, "m", "", 1, 5, &[1, 2]), 1, now);
    let before = dump(&c);
    let mut out = String::from("cache:\n");
    out += &before;

    let offers = [
        ("same id, older version", meta(1, "a", "m", 3, 4, &[1, 2])),
        ("same id, older conf_ver", meta(1, "a", "m", 2, 6, &[1, 2])),
        ("other id overlapping a newer version", meta(9, "k", "p", 1, 4, &[1])),
        ("other id overlapping the unbounded tail", meta(9, "x", "", 1, 1, &[1])),
    ];
    for (what, m) in offers {
        let res = c.insert(m, None, now).map(|r| show(Some(&r)));
        writeln!(out, "insert {what}: {res:?}").unwrap();
        assert!(matches!(res, Err(InsertError::Stale { .. })));
    }
    assert_eq!(dump(&c), before, "a refused region changes nothing");
    // The typed error converts for callers that propagate it.
    let e: crate::Error = c.insert(meta(1, "a", "m", 3, 4, &[1]), None, now).unwrap_err().into();
    writeln!(out, "as Error: {e}").unwrap();

    // Equal epochs are accepted (a reload of the same region).
    let again = c.insert(meta(1, "a", "m", 3, 5, &[1, 2]), None, now);
    writeln!(out, "insert same epoch again: {}", show(again.as_ref().ok())).unwrap();
    insta::assert_snapshot!(out);
}

#[test]
fn split_and_merge_replace_overlapping_regions() {
    let c = cache();
    let mut out = String::new();
    let old = put(&c, meta(1, "a", "z", 1, 1, &[1, 2, 3]), 1, t(0));
    writeln!(out, "load r1 [a, z)\n{}", dump(&c)).unwrap();

    // Split at "m": TiKV keeps id 1 for the right half, id 2 is new on the left.
    // The right half arrives first: it overlaps r1 v1 from the middle, which
    // must still be dropped (its start is before the new region's start).
    put(&c, meta(1, "m", "z", 1, 2, &[1, 2, 3]), 1, t(1));
    writeln!(out, "split: insert r1 v1.2 [m, z)\n{}", dump(&c)).unwrap();
    writeln!(out, "  held handle of r1 v1.1: {}", show(Some(&old))).unwrap();
    writeln!(out, "  locate_key(\"c\") -> {}", show(c.locate_key(b"c", t(1)).as_ref())).unwrap();
    put(&c, meta(2, "a", "m", 1, 2, &[1, 2, 3]), 2, t(1));
    writeln!(out, "split: insert r2 v1.2 [a, m)\n{}", dump(&c)).unwrap();
    assert_eq!(c.len(), 2);

    // Merge r2 into r1: r1 covers [a, z) again with a higher version.
    let left = c.get_by_id(2, t(2)).unwrap();
    put(&c, meta(1, "a", "z", 1, 3, &[1, 2, 3]), 3, t(2));
    writeln!(out, "merge: insert r1 v1.3 [a, z)\n{}", dump(&c)).unwrap();
    writeln!(out, "  held handle of r2: {}", show(Some(&left))).unwrap();
    writeln!(out, "  get_by_id(2) -> {}", show(c.get_by_id(2, t(2)).as_ref())).unwrap();
    writeln!(out, "  locate_key(\"c\") -> {}", show(c.locate_key(b"c", t(2)).as_ref())).unwrap();
    assert_eq!(c.len(), 1);
    assert!(left.is_invalidated());

    // A region covering several cached ones drops them all.
    put(&c, meta(5, "", "a", 1, 1, &[1]), 1, t(3));
    put(&c, meta(6, "z", "", 1, 1, &[1]), 1, t(3));
    put(&c, meta(7, "", "", 1, 9, &[1]), 1, t(3));
    writeln!(out, "insert r7 [\"\", +inf) over three regions\n{}", dump(&c)).unwrap();
    assert_eq!(c.len(), 1);
    insta::assert_snapshot!(out);
}

/// Concurrent lookups of one region each load it from PD and insert it:
/// an identical copy of a live entry leaves the cached handle in place and
/// valid, so calls already holding it are not sent back to re-locate (each
/// of their reloads would invalidate the others' handles in turn). A copy
/// that differs (another leader), or one offered once the entry expired,
/// replaces it as before and invalidates the old handle.
#[test]
fn an_identical_reload_keeps_the_cached_handle() {
    let c = RegionCache::new(Duration::from_secs(10), Duration::ZERO, 1);
    let held = put(&c, meta(1, "", "", 1, 1, &[1, 2, 3]), 1, t(0));
    let again = put(&c, meta(1, "", "", 1, 1, &[1, 2, 3]), 1, t(1));
    assert!(Arc::ptr_eq(&held, &again), "the same handle");
    assert!(!held.is_invalidated());
    // Another leader: a new handle, the held one invalidated.
    let moved = put(&c, meta(1, "", "", 1, 1, &[1, 2, 3]), 2, t(2));
    assert!(!Arc::ptr_eq(&held, &moved));
    assert_eq!(held.invalid_reason(), Some(InvalidReason::Other));
    // Past its TTL the entry is reloaded into a fresh handle.
    let late =
        put(&c, meta(1, "", "", 1, 1, &[1, 2, 3]), 2, moved.expires_at() + Duration::from_secs(1));
    assert!(!Arc::ptr_eq(&moved, &late));
    assert!(moved.is_invalidated());
    assert!(!late.is_invalidated());
}

#[test]
fn ttl_expires_and_is_extended_on_hits() {
    let c = RegionCache::new(Duration::from_secs(10), Duration::from_secs(2), 42);
    let r = put(&c, meta(1, "", "", 1, 1, &[1]), 1, t(0));
    let mut out = String::new();
    writeln!(out, "t+0 insert: expires {}", r.expires_at()).unwrap();
    // Hits at these instants; the deadline is only moved once less than the
    // 10 s TTL remains, and jumps to now + 10 s + jitter (the hit at t+21
    // finds the deadline still more than 10 s away and leaves it).
    for s in [1, 5, 9, 15, 20, 21] {
        let hit = c.locate_key(b"k", t(s)).is_some();
        writeln!(out, "{} locate: hit={hit} expires {}", t(s), r.expires_at()).unwrap();
        assert!(hit);
    }
    let deadline = r.expires_at();
    let after = deadline + Duration::from_nanos(1);
    writeln!(
        out,
        "{} (1ns past the deadline) locate: {}",
        after,
        show(c.locate_key(b"k", after).as_ref())
    )
    .unwrap();
    writeln!(out, "{} get_by_id: {}", after, show(c.get_by_id(1, after).as_ref())).unwrap();
    writeln!(out, "{} locate_end_key: {}", after, show(c.locate_end_key(b"", after).as_ref()))
        .unwrap();
    assert!(c.locate_key(b"k", after).is_none());
    // Exactly at the deadline the region is still fresh (client-go: `ts > ttl` expires).
    let c2 = RegionCache::new(Duration::from_secs(10), Duration::ZERO, 1);
    put(&c2, meta(1, "", "", 1, 1, &[1]), 1, t(0));
    assert!(c2.locate_key(b"k", t(10)).is_some());
    assert!(c2.locate_key(b"k", t(20)).is_some(), "the hit at t+10 extended it to t+20");
    assert!(
        c2.locate_key(b"k", t(20) + Duration::from_secs(10) + Duration::from_nanos(1)).is_none()
    );

    // Expired entries stay until replaced or evicted; a reload refreshes.
    writeln!(out, "evict_expired at {after}: {} dropped, len {}", c.evict_expired(after), c.len())
        .unwrap();
    let r = put(&c, meta(1, "", "", 1, 1, &[1]), 1, after);
    writeln!(out, "reload at {after}: expires {}", r.expires_at()).unwrap();
    insta::assert_snapshot!(out);

    // The jitter is reproducible from the seed, and varies with it.
    let deadlines = |seed| {
        let c = RegionCache::new(Duration::from_secs(10), Duration::from_secs(2), seed);
        (1..=5)
            .map(|id| put(&c, meta(id, "", "", 1, id, &[1]), 1, t(0)).expires_at())
            .collect::<Vec<_>>()
    };
    assert_eq!(deadlines(42), deadlines(42));
    assert_ne!(deadlines(42), deadlines(43));
    for d in deadlines(42) {
        assert!(d >= t(10) && d < t(12), "{d} outside [ttl, ttl + jitter)");
    }
}

#[test]
fn invalidation_reasons() {
    let c = cache();
    let now = t(0);
    let mut out = String::new();
    let reasons = [
        InvalidReason::NoLeader,
        InvalidReason::RegionNotFound,
        InvalidReason::EpochNotMatch,
        InvalidReason::StoreNotFound,
        InvalidReason::StoreNotMatch,
        InvalidReason::Other,
    ];
    for (i, reason) in reasons.into_iter().enumerate() {
        let id = i as u64 + 1;
        let start = format!("{}", (b'a' + i as u8) as char);
        let end = format!("{}", (b'b' + i as u8) as char);
        let m = metapb::Region {
            start_key: start.into_bytes().into(),
            end_key: end.into_bytes().into(),
            ..meta(id, "", "", 1, 1, &[1, 2, 3])
        };
        let r = put(&c, m, 1, now);
        c.invalidate(r.ver_id(), reason);
        writeln!(out, "invalidate {reason}: {}", show(Some(&r))).unwrap();
        assert!(c.locate_key(r.start_key().as_bytes(), now).is_none());
        assert!(c.get_by_id(id, now).is_none());
    }
    // The first reason sticks.
    let r = c.snapshot()[0].clone();
    assert!(!r.invalidate(InvalidReason::Other));
    assert_eq!(r.invalid_reason(), Some(InvalidReason::NoLeader));
    // A different version of the region is not touched.
    let live = put(&c, meta(9, "x", "y", 1, 1, &[1]), 1, now);
    c.invalidate(RegionVerId { id: 9, conf_ver: 1, version: 0 }, InvalidReason::Other);
    assert!(!live.is_invalidated());
    writeln!(out, "invalidate r9 at another version: {}", show(Some(&live))).unwrap();

    // A region invalidated for NoLeader is reloaded starting at the next peer,
    // even though PD still names store 1 (client-go's joint-consensus rule).
    let reloaded = put(&c, meta(1, "a", "b", 1, 1, &[1, 2, 3]), 1, now);
    writeln!(out, "reload r1 (was NoLeader), PD says s1: {}", show(Some(&reloaded))).unwrap();
    assert_eq!(reloaded.leader_store_id(), 2);
    let reloaded = put(&c, meta(2, "b", "c", 1, 1, &[1, 2, 3]), 1, now);
    writeln!(out, "reload r2 (was RegionNotFound), PD says s1: {}", show(Some(&reloaded))).unwrap();
    assert_eq!(reloaded.leader_store_id(), 1);
    insta::assert_snapshot!(out);
}

#[test]
fn leader_switch() {
    let c = cache();
    let now = t(0);
    let mut out = String::new();
    let held = put(&c, meta(1, "", "", 1, 1, &[1, 2, 3]), 1, now);
    let ver = held.ver_id();
    writeln!(out, "cached: {}", show(Some(&held))).unwrap();

    let ok = c.update_leader(ver, 3);
    writeln!(out, "update_leader(s3) -> {ok}: held handle {}", show(Some(&held))).unwrap();
    assert!(ok);
    assert_eq!(held.leader().id, 103);
    assert!(Arc::ptr_eq(&held, &c.locate_key(b"k", now).unwrap()), "switched in place");

    let ok = held.switch_to_next_peer(2);
    writeln!(
        out,
        "NotLeader without hint after trying peer 2 -> index {ok}: {}",
        show(Some(&held))
    )
    .unwrap();
    assert_eq!(held.leader_store_id(), 1);
    // A second caller that also tried index 2 does not skip another peer.
    assert_eq!(held.switch_to_next_peer(2), 0);

    let stale = RegionVerId { version: 0, ..ver };
    let ok = c.update_leader(stale, 2);
    writeln!(out, "update_leader at an older version -> {ok}: {}", show(Some(&held))).unwrap();
    assert!(!ok);
    assert!(!held.is_invalidated());

    let ok = c.update_leader(ver, 9);
    writeln!(out, "update_leader(s9), no peer there -> {ok}: {}", show(Some(&held))).unwrap();
    assert!(!ok);
    assert_eq!(held.invalid_reason(), Some(InvalidReason::StoreNotFound));
    writeln!(out, "locate_key -> {}", show(c.locate_key(b"k", now).as_ref())).unwrap();
    insta::assert_snapshot!(out);
}

#[test]
fn epoch_not_match() {
    let mut out = String::new();

    // No current regions: invalidate, back off, relocate.
    let c = cache();
    let r = put(&c, meta(1, "a", "z", 1, 1, &[1, 2]), 1, t(0));
    let action = c.on_epoch_not_match(r.ver_id(), vec![], 1, t(1));
    writeln!(out, "empty current_regions -> {action:?}: {}", show(Some(&r))).unwrap();
    assert_eq!(action, EpochNotMatchAction::BackoffAndRelocate);
    assert!(!action.retry_without_backoff());
    assert!(c.locate_key(b"c", t(1)).is_none());

    // TiKV is behind us: retry the same request after a backoff.
    let c = cache();
    let r = put(&c, meta(1, "a", "z", 1, 2, &[1, 2]), 1, t(0));
    let before = dump(&c);
    let action = c.on_epoch_not_match(r.ver_id(), vec![meta(1, "a", "z", 1, 1, &[1, 2])], 1, t(1));
    writeln!(out, "TiKV's r1 is v1.1, ours v1.2 -> {action:?}: {}", show(Some(&r))).unwrap();
    assert_eq!(action, EpochNotMatchAction::BackoffAndRetry);
    assert_eq!(dump(&c), before);

    // The region split: cache TiKV's regions, led by the store that answered.
    let c = cache();
    let r = put(&c, meta(1, "a", "z", 1, 1, &[1, 2, 3]), 1, t(0));
    let current = vec![
        meta(1, "m", "z", 1, 2, &[1, 2, 3]),
        meta(2, "a", "m", 1, 2, &[1, 2, 3]),
        metapb::Region { region_epoch: None, ..meta(3, "z", "", 1, 2, &[1]) },
    ];
    let action = c.on_epoch_not_match(r.ver_id(), current, 2, t(1));
    writeln!(out, "split answered by s2 -> {action:?} (malformed r3 skipped)").unwrap();
    writeln!(out, "  held handle: {}", show(Some(&r))).unwrap();
    out += &dump(&c);
    assert_eq!(action, EpochNotMatchAction::RelocateNow);
    assert!(action.retry_without_backoff());
    assert_eq!(r.invalid_reason(), Some(InvalidReason::EpochNotMatch));
    assert_eq!(c.locate_key(b"b", t(1)).unwrap().leader_store_id(), 2);

    // Our region is among the current ones (another region was stale):
    // it stays valid.
    let c = cache();
    let r = put(&c, meta(1, "a", "z", 1, 2, &[1, 2]), 1, t(0));
    let action = c.on_epoch_not_match(r.ver_id(), vec![meta(1, "a", "z", 1, 2, &[1, 2])], 1, t(1));
    writeln!(out, "current_regions holds our own epoch -> {action:?}").unwrap();
    out += &dump(&c);
    assert_eq!(action, EpochNotMatchAction::RelocateNow);
    assert!(c.get_by_id(1, t(1)).is_some());
    insta::assert_snapshot!(out);
}

/// Regions [,b) [b,d) gap [d,f) [f,h) [h,+inf).
fn gapped_cache(now: Instant) -> RegionCache {
    let c = cache();
    put(&c, meta(1, "", "b", 1, 1, &[1]), 1, now);
    put(&c, meta(2, "b", "d", 1, 1, &[2]), 2, now);
    put(&c, meta(4, "f", "h", 1, 1, &[1]), 1, now);
    put(&c, meta(5, "h", "", 1, 1, &[2]), 2, now);
    c
}

fn show_groups<K: AsRef<[u8]>>(out: &mut String, g: &GroupResult<K>) {
    for group in &g.groups {
        let keys: Vec<_> = group.keys.iter().map(|k| Key::from(k.as_ref().to_vec())).collect();
        writeln!(out, "  {} <- {keys:?}", show(Some(&group.region))).unwrap();
    }
    let rest: Vec<_> = g.uncovered.iter().map(|k| Key::from(k.as_ref().to_vec())).collect();
    writeln!(out, "  uncovered: {rest:?}").unwrap();
}

#[test]
fn group_keys_across_regions_with_gaps() {
    let now = t(0);
    let c = gapped_cache(now);
    let mut out = String::from("cache:\n");
    out += &dump(&c);
    let keys: Vec<&[u8]> = vec![b"", b"a", b"a1", b"b", b"c", b"c2", b"e", b"f", b"g", b"zz"];
    let g = c.group_keys_by_region(keys.clone(), now);
    writeln!(out, "group {} keys:", keys.len()).unwrap();
    show_groups(&mut out, &g);
    assert_eq!(g.groups.len(), 2);
    assert_eq!(g.uncovered.first().copied(), Some(&b"e"[..]));

    // The caller loads the missing region from PD and groups the rest.
    put(&c, meta(3, "d", "f", 1, 1, &[3]), 3, now);
    let g = c.group_keys_by_region(g.uncovered, now);
    writeln!(out, "after loading r3 [d, f), group the rest:").unwrap();
    show_groups(&mut out, &g);
    assert_eq!(g.groups.len(), 3);
    assert!(g.uncovered.is_empty());

    // Invalidated regions count as uncovered; owned keys work too.
    c.invalidate(c.get_by_id(4, now).unwrap().ver_id(), InvalidReason::NoLeader);
    let owned = vec![Key::from("c"), Key::from("g"), Key::from("i")];
    let g = c.group_keys_by_region(owned, now);
    writeln!(out, "after invalidating r4, group [c, g, i]:").unwrap();
    show_groups(&mut out, &g);
    assert_eq!(g.uncovered, vec![Key::from("g"), Key::from("i")]);

    let g = c.group_keys_by_region(Vec::<Key>::new(), now);
    assert!(g.groups.is_empty() && g.uncovered.is_empty());
    insta::assert_snapshot!(out);
}

#[test]
fn group_ranges_across_regions_with_gaps() {
    let now = t(0);
    let c = gapped_cache(now);
    let mut out = String::new();
    let show_ranges = |out: &mut String, range: KeyRange| {
        let g = c.group_ranges_by_region(&range, now);
        writeln!(out, "split {range:?}:").unwrap();
        for (r, sub) in &g.ranges {
            assert!(r.contains(sub.start.as_bytes()));
            writeln!(out, "  r{} <- {sub:?}", r.id()).unwrap();
        }
        writeln!(out, "  uncovered: {:?}", g.uncovered).unwrap();
        g
    };
    let g = show_ranges(&mut out, KeyRange::new("a", "c"));
    assert!(g.uncovered.is_none());
    let g = show_ranges(&mut out, KeyRange::new("a1", "g"));
    assert_eq!(g.uncovered, Some(KeyRange::new("d", "g")));
    put(&c, meta(3, "d", "f", 1, 1, &[3]), 3, now);
    writeln!(out, "(loaded r3 [d, f))").unwrap();
    let g = show_ranges(&mut out, KeyRange::new("a1", "g"));
    assert_eq!(g.ranges.len(), 4);
    show_ranges(&mut out, KeyRange::new("b", "d"));
    show_ranges(&mut out, KeyRange::new("g", ""));
    let g = show_ranges(&mut out, KeyRange::all());
    assert_eq!(g.ranges.len(), 5);
    let g = show_ranges(&mut out, KeyRange::new("c", "c"));
    assert!(g.ranges.is_empty() && g.uncovered.is_none());
    insta::assert_snapshot!(out);
}

#[test]
fn malformed_regions_are_refused() {
    let c = cache();
    let now = t(0);
    let mut out = String::new();
    let witness =
        |region: u64, store: u64| metapb::Peer { is_witness: true, ..peer(region, store) };
    let cases = [
        ("no epoch", metapb::Region { region_epoch: None, ..meta(1, "a", "b", 1, 1, &[1]) }, None),
        ("no peers", meta(2, "a", "b", 1, 1, &[]), None),
        ("start > end", meta(3, "c", "b", 1, 1, &[1]), None),
        ("start == end", meta(4, "b", "b", 1, 1, &[1]), None),
        (
            "only a witness follower",
            metapb::Region {
                peers: vec![peer(5, 1), witness(5, 2)],
                ..meta(5, "a", "b", 1, 1, &[])
            },
            None,
        ),
        (
            "witness follower + leader",
            metapb::Region {
                peers: vec![peer(6, 1), witness(6, 2)],
                ..meta(6, "a", "b", 1, 1, &[])
            },
            Some(peer(6, 1)),
        ),
        (
            "witness follower only, leader elsewhere",
            metapb::Region { peers: vec![witness(7, 2)], ..meta(7, "c", "d", 1, 1, &[]) },
            Some(peer(7, 1)),
        ),
        (
            "witness leader",
            metapb::Region { peers: vec![witness(8, 2)], ..meta(8, "c", "d", 1, 1, &[]) },
            Some(witness(8, 2)),
        ),
        ("leader not among peers", meta(9, "e", "f", 1, 1, &[1, 2]), Some(peer(9, 7))),
    ];
    for (what, m, leader) in cases {
        match c.insert(m, leader, now) {
            Ok(r) => {
                let peers: Vec<_> = r.peers().iter().map(|p| p.id).collect();
                writeln!(out, "{what}: ok {} peers {peers:?}", show(Some(&r))).unwrap()
            }
            Err(e) => writeln!(out, "{what}: refused: {e}").unwrap(),
        }
    }
    assert_eq!(c.len(), 3);
    insta::assert_snapshot!(out);
}

fn store(id: u64, addr: &str, state: metapb::StoreState, zone: &str) -> metapb::Store {
    metapb::Store {
        id,
        address: addr.to_string(),
        state: state as i32,
        labels: vec![metapb::StoreLabel { key: "zone".into(), value: zone.into() }],
        ..Default::default()
    }
}

#[test]
fn store_table_states() {
    use metapb::StoreState::{Offline, Tombstone, Up};
    let st = StoreTable::new();
    let mut out = String::new();
    let line = |out: &mut String, what: &str, st: &StoreTable, id: u64| {
        writeln!(
            out,
            "{what}\n  get({id}) -> {:?}; resolve_state {}; reachable {}",
            st.get(id),
            st.resolve_state(id),
            st.is_reachable(id)
        )
        .unwrap();
    };
    line(&mut out, "unknown store", &st, 1);
    let s1 = st.insert(store(1, "tikv-1:20160", Up, "z1")).unwrap();
    line(&mut out, "insert s1", &st, 1);
    st.invalidate(1);
    line(&mut out, "invalidate s1", &st, 1);
    let again = st.insert(store(1, "tikv-1:20160", Up, "z1")).unwrap();
    assert!(Arc::ptr_eq(&s1, &again), "unchanged metadata keeps the entry");
    line(&mut out, "re-insert s1 unchanged", &st, 1);
    let moved = st.insert(store(1, "tikv-1b:20160", Up, "z1")).unwrap();
    line(&mut out, "re-insert s1 with a new address", &st, 1);
    writeln!(out, "  old handle: {s1:?}").unwrap();
    assert_eq!(s1.resolve_state(), ResolveState::Deleted);
    st.insert(store(1, "tikv-1b:20160", Offline, "z1")).unwrap();
    line(&mut out, "s1 goes offline (still serving)", &st, 1);
    assert_eq!(moved.resolve_state(), ResolveState::Deleted);

    let err = st.insert(store(1, "", Up, "z1")).unwrap_err();
    line(&mut out, &format!("insert s1 with empty address -> {err}"), &st, 1);
    let err = st.insert(store(0, "x:1", Up, "z1")).unwrap_err();
    writeln!(out, "insert store 0 -> {err}").unwrap();

    let live = st.get(1).unwrap();
    st.insert(store(1, "", Tombstone, "z1")).unwrap();
    line(&mut out, "s1 becomes a tombstone (empty address allowed)", &st, 1);
    writeln!(out, "  old handle: {live:?}").unwrap();
    assert!(live.is_tombstone());
    st.invalidate(1);
    assert!(st.get(1).unwrap().is_tombstone(), "a tombstone is not reopened by invalidate");

    st.insert(store(2, "tikv-2:20160", Up, "z2")).unwrap();
    st.mark_unreachable(2);
    line(&mut out, "s2 marked unreachable", &st, 2);
    st.mark_reachable(2);
    line(&mut out, "s2 reachable again", &st, 2);
    let mut flash = store(3, "tiflash-3:3930", Up, "z3");
    flash.labels.push(metapb::StoreLabel { key: "engine".into(), value: "tiflash".into() });
    let flash = st.insert(flash).unwrap();
    assert!(flash.is_tiflash() && !st.get(2).unwrap().is_tiflash());
    assert_eq!(flash.label("zone"), Some("z3"));
    writeln!(out, "all: {st:?}").unwrap();
    insta::assert_snapshot!(out);
}

/// Random splits, merges, stale and malformed regions over a small key
/// space: the cache never panics, never holds overlapping ranges, its two
/// indexes agree, and every lookup answer contains its key.
#[test]
fn random_inserts_keep_the_index_consistent() {
    let mut state = 0x5eed_u64;
    let mut next = move |n: u64| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    };
    let keys = ["", "b", "d", "f", "h", "j", "l"];
    let c = cache();
    let (mut ok, mut refused) = (0, 0);
    for step in 0..2000u64 {
        let now = t(step);
        let a = next(keys.len() as u64) as usize;
        let b = next(keys.len() as u64) as usize;
        let (start, end) =
            if next(8) == 0 { (keys[b], keys[a]) } else { (keys[a.min(b)], keys[a.max(b)]) };
        let mut m = meta(1 + next(6), start, end, next(3), next(10), &[1, 2, 3]);
        match next(20) {
            0 => m.region_epoch = None,
            1 => m.peers.clear(),
            _ => {}
        }
        match c.insert(m, None, now) {
            Ok(r) => {
                ok += 1;
                assert!(Arc::ptr_eq(&r, &c.get_by_id(r.id(), now).unwrap()));
            }
            Err(_) => refused += 1,
        }
        c.check_invariants();
        for k in ["", "a", "c", "i", "z"] {
            if let Some(r) = c.locate_key(k.as_bytes(), now) {
                assert!(r.contains(k.as_bytes()));
            }
            if let Some(r) = c.locate_end_key(k.as_bytes(), now) {
                assert!(r.contains_by_end(k.as_bytes()));
            }
        }
        if next(50) == 0 {
            c.evict_expired(now);
            c.check_invariants();
        }
    }
    assert!(ok > 100 && refused > 100, "both paths exercised: {ok} ok, {refused} refused");
}

/// Lookups and range walks on other threads always get a region that
/// contains their key (or nothing) while one thread splits, merges and
/// refreshes regions: each insert is atomic to readers.
#[test]
fn lookups_stay_correct_while_another_thread_inserts() {
    const N: u64 = 600;
    let key = |i: u64| format!("t_r{i:05}");
    let c = cache();
    for i in 0..N {
        let start = if i == 0 { String::new() } else { key(i) };
        let end = if i + 1 == N { String::new() } else { key(i + 1) };
        put(&c, meta(i + 1, &start, &end, 1, 1, &[1, 2, 3]), 1, t(0));
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..2u64)
            .map(|r| {
                let (c, done) = (&c, &done);
                s.spawn(move || {
                    let (mut hits, mut walks) = (0u64, 0u64);
                    let mut i = r;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) || hits < 1000 {
                        i = (i * 7 + 13) % (N * 10);
                        let k = format!("t_r{:05}{}", i / 10, i % 10);
                        if let Some(region) = c.locate_key(k.as_bytes(), t(1)) {
                            assert!(region.contains(k.as_bytes()), "{region:?} does not hold {k}");
                            hits += 1;
                        }
                        if i % 97 == 0 {
                            let g = c.group_ranges_by_region(&KeyRange::all(), t(1));
                            for (region, piece) in &g.ranges {
                                assert!(region.contains(piece.start.as_bytes()));
                            }
                            for w in g.ranges.windows(2) {
                                assert_eq!(w[0].1.end, w[1].1.start, "pieces are contiguous");
                            }
                            walks += 1;
                        }
                    }
                    (hits, walks)
                })
            })
            .collect();
        // Split region i in two, then merge it back, each at a newer version.
        for round in 0..300u64 {
            let i = 1 + (round * 37) % (N - 2);
            let version = 2 + 2 * round;
            let (start, mid, end) = (key(i), format!("{}5", key(i)), key(i + 1));
            let split_id = 10_000 + round;
            put(&c, meta(i + 1, &start, &mid, 1, version, &[1, 2, 3]), 2, t(1));
            put(&c, meta(split_id, &mid, &end, 1, version, &[1, 2, 3]), 3, t(1));
            put(&c, meta(i + 1, &start, &end, 1, version + 1, &[1, 2, 3]), 1, t(1));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            let (hits, walks) = r.join().expect("reader");
            assert!(hits >= 1000 && walks > 0, "reader made progress: {hits} hits, {walks} walks");
        }
    });
    c.check_invariants();
    assert_eq!(c.len() as u64, N);
}

#[test]
fn lookups_are_counted_as_hits_and_misses() {
    let c = cache();
    assert_eq!(c.lookup_counts(), LookupCounts::default());
    let r = put(&c, meta(1, "a", "m", 1, 1, &[1, 2]), 1, t(0));
    assert!(c.locate_key(b"b", t(1)).is_some());
    assert!(c.locate_end_key(b"m", t(1)).is_some());
    assert!(c.get_by_id(1, t(1)).is_some());
    // Outside every cached region, an unknown id, and (after the
    // invalidation) the region that no longer counts as cached.
    assert!(c.locate_key(b"x", t(1)).is_none());
    assert!(c.get_by_id(9, t(1)).is_none());
    c.invalidate(r.ver_id(), InvalidReason::EpochNotMatch);
    assert!(c.locate_key(b"b", t(2)).is_none());
    let counts = c.lookup_counts();
    assert_eq!((counts.hits, counts.misses), (3, 3));
    // A grouping looks up each key outside the region of the key before.
    put(&c, meta(1, "a", "m", 1, 2, &[1, 2]), 1, t(3));
    let before = c.lookup_counts();
    let _ = c.group_keys_by_region([b"b".as_slice(), b"c", b"z"], t(3));
    assert_eq!(c.lookup_counts().since(before), LookupCounts { hits: 1, misses: 1 });
}
