//! Scripted arrivals and time against the collector, as insta transcripts.

use std::fmt::Write;

use tikv_proto::kvrpcpb;
use tikv_proto::tikvpb::batch_commands_response::Response as RespEntry;
use tikv_proto::tikvpb::{BatchCommandsRequest, BatchCommandsResponse};

use super::*;

fn us(n: u64) -> Instant {
    Instant::from_nanos(n * 1000)
}

fn get(key: &str) -> KvRequest {
    KvRequest::RawGet(Box::new(kvrpcpb::RawGetRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    }))
}

/// A runtime in miniature: drains every output after each event and
/// writes a line per output.
struct Script {
    c: BatchCollector<String>,
    /// The current stream of each slot.
    streams: Vec<StreamGen>,
    /// Messages written and not yet answered, oldest first.
    sent: Vec<(StreamGen, BatchCommandsRequest)>,
    log: String,
}

impl Script {
    fn new(config: BatchConfig) -> Script {
        Script {
            c: BatchCollector::new(config),
            streams: (0..config.streams.max(1))
                .map(|slot| StreamGen { slot, generation: 0 })
                .collect(),
            sent: Vec::new(),
            log: String::new(),
        }
    }

    fn line(&mut self, now: Instant, what: impl std::fmt::Display) {
        let _ = writeln!(self.log, "{now}  {what}");
    }

    /// What the runtime does after every event.
    fn drain(&mut self, now: Instant) {
        while let Some(slot) = self.c.wants_stream(now) {
            let stream = self.c.open_stream(slot, now);
            self.streams[slot] = stream;
            self.line(now, format_args!("open stream {}.{}", stream.slot, stream.generation));
        }
        while let Some((stream, batch)) = self.c.poll_batch(now) {
            let what: Vec<String> = batch
                .requests
                .iter()
                .zip(&batch.request_ids)
                .map(|(r, id)| match &r.cmd {
                    Some(ReqCmd::Empty(_)) => format!("{id}:probe"),
                    Some(ReqCmd::RawGet(g)) => {
                        format!("{id}:{}", String::from_utf8_lossy(&g.key))
                    }
                    Some(ReqCmd::RawPut(p)) => {
                        format!("{id}:put {}", String::from_utf8_lossy(&p.key))
                    }
                    _ => format!("{id}:?"),
                })
                .collect();
            let shown = if what.len() > 6 {
                format!("{} .. {} ({} requests)", what[0], what[what.len() - 1], what.len())
            } else {
                what.join(" ")
            };
            if self.streams.len() > 1 {
                self.line(now, format_args!("send on {} [{shown}]", stream.slot));
            } else {
                self.line(now, format_args!("send [{shown}]"));
            }
            self.sent.push((stream, batch));
        }
        while let Some((waiter, result)) = self.c.poll_completion() {
            let result = match result {
                Ok(r) => format!("ok {r:?}"),
                Err(e) => format!("err {e}"),
            };
            self.line(now, format_args!("done {waiter}: {result}"));
        }
        while let Some(f) = self.c.poll_fallback() {
            self.line(now, format_args!("unary {}: {:?}", f.waiter, f.request));
        }
        if let Some(at) = self.c.poll_timeout() {
            self.line(now, format_args!("timer {at}"));
        }
    }

    fn push(&mut self, now: Instant, label: &str, deadline: Instant) {
        self.push_req(now, label, get(label), deadline);
    }

    fn push_req(&mut self, now: Instant, label: &str, req: KvRequest, deadline: Instant) {
        self.line(now, format_args!("push {label}"));
        self.c.push(req, label.to_owned(), deadline, now);
        self.drain(now);
    }

    /// `n` requests `b0..` arrive in one instant (deadline 1 s later).
    fn burst(&mut self, now: Instant, n: usize) {
        self.line(now, format_args!("{n} requests arrive in one instant"));
        for i in 0..n {
            self.c.push(get(&format!("b{i}")), format!("b{i}"), now + Duration::from_secs(1), now);
        }
        self.drain(now);
    }

    fn tick(&mut self, now: Instant) {
        self.line(now, "tick");
        self.c.on_timeout(now);
        self.drain(now);
    }

    /// The server answers the oldest unanswered message in full.
    fn answer_oldest(&mut self, now: Instant) {
        self.answer_oldest_on(now, self.sent[0].0.slot);
    }

    /// The server answers the oldest unanswered message of `slot` in full.
    fn answer_oldest_on(&mut self, now: Instant, slot: usize) {
        let i = self.sent.iter().position(|(s, _)| s.slot == slot).expect("a message to answer");
        let (stream, batch) = self.sent.remove(i);
        let responses = batch
            .requests
            .iter()
            .map(|r| RespEntry {
                cmd: Some(match &r.cmd {
                    Some(ReqCmd::Empty(_)) => RespCmd::Empty(Default::default()),
                    Some(ReqCmd::RawPut(_)) => RespCmd::RawPut(Default::default()),
                    _ => RespCmd::RawGet(Default::default()),
                }),
            })
            .collect();
        self.answer_on(
            now,
            stream,
            BatchCommandsResponse {
                responses,
                request_ids: batch.request_ids,
                ..Default::default()
            },
        );
    }

    /// An answer on slot 0's stream.
    fn answer(&mut self, now: Instant, response: BatchCommandsResponse) {
        self.answer_on(now, self.streams[0], response);
    }

    fn answer_on(&mut self, now: Instant, stream: StreamGen, response: BatchCommandsResponse) {
        if self.streams.len() > 1 {
            self.line(
                now,
                format_args!("answer on {} ids {:?}", stream.slot, response.request_ids),
            );
        } else {
            self.line(now, format_args!("answer ids {:?}", response.request_ids));
        }
        self.c.on_response(stream, response, now);
        self.drain(now);
    }

    /// Slot 0's stream breaks.
    fn broken(&mut self, now: Instant, reason: &str) {
        self.broken_on(now, 0, reason);
    }

    fn broken_on(&mut self, now: Instant, slot: usize, reason: &str) {
        if self.streams.len() > 1 {
            self.line(now, format_args!("stream {slot} broken: {reason}"));
        } else {
            self.line(now, format_args!("stream broken: {reason}"));
        }
        self.sent.retain(|(s, _)| s.slot != slot);
        self.c.on_stream_broken(self.streams[slot], reason, now);
        self.drain(now);
    }

    /// Opens the stream with a first request and answers the probe.
    fn ready(&mut self, now: Instant) {
        self.push(now, "first", now + Duration::from_secs(1));
        self.answer_oldest(now);
        if self.sent.is_empty() {
            // `Positive` holds even a lone request for its wait.
            self.tick(now + TURBO_WAIT);
            self.answer_oldest(now + TURBO_WAIT);
        } else {
            self.answer_oldest(now);
        }
    }

    fn finish(mut self) -> String {
        let s = self.c.stats();
        let _ = writeln!(self.log, "{s:?}");
        self.log
    }
}

#[test]
fn sparse_arrivals_are_sent_at_once() {
    let mut s = Script::new(BatchConfig::default());
    s.ready(us(0));
    // 1 ms apart: far above the 80 µs threshold, no request ever waits.
    for i in 0..4 {
        let t = us(1000 * (i + 1));
        s.push(t, &format!("k{i}"), t + Duration::from_millis(10));
        s.answer_oldest(t + Duration::from_micros(50));
    }
    insta::assert_snapshot!(s.finish());
}

#[test]
fn dense_arrivals_wait_for_a_batch() {
    let mut s = Script::new(BatchConfig::default());
    s.ready(us(0));
    // Requests every 20 µs. The gap estimate starts at the first gap and
    // falls under 80 µs; from then on the head of a batch waits up to
    // 100 µs for the (EWMA-estimated) batch size.
    let mut t = 0;
    for i in 0..24 {
        t += 20;
        s.tick(us(t));
        s.push(us(t), &format!("k{i}"), us(t) + Duration::from_millis(10));
    }
    // Then arrivals 1 ms apart: the first long gap (capped at 500 µs)
    // lifts the estimate over 80 µs, and nothing waits any more.
    t += 100;
    for i in 0..3 {
        s.tick(us(t));
        t += 1000;
        s.push(us(t), &format!("s{i}"), us(t) + Duration::from_millis(10));
    }
    insta::assert_snapshot!(s.finish());
}

/// After a quiet spell the batch-size estimate is 1, so a dense stream of
/// requests finds its predicted batch queued as soon as its head arrives.
/// The collector still waits 1 µs (client-go's one yield for a last
/// non-blocking fetch), which lets a request arriving meanwhile join, so
/// the estimate grows again instead of staying at 1.
#[test]
fn a_batch_estimate_of_one_still_takes_what_arrives_within_a_yield() {
    let mut s = Script::new(BatchConfig::default());
    s.ready(us(0));
    let mut t = us(1000);
    // Sparse: each request is sent alone and answered; the size estimate
    // falls from 8 towards 1.
    for i in 0..30 {
        s.push(t, &format!("q{i}"), t + Duration::from_millis(10));
        s.answer_oldest(t + Duration::from_micros(50));
        t += Duration::from_millis(1);
    }
    // Dense pairs 0.5 µs apart, 10 µs between pairs: once the gap estimate
    // is under 80 µs each pair goes out as one message.
    for i in 0..14 {
        s.push(t, &format!("a{i}"), t + Duration::from_millis(10));
        let second = t + Duration::from_nanos(500);
        s.push(second, &format!("b{i}"), second + Duration::from_millis(10));
        s.tick(t + YIELD_WAIT);
        s.answer_oldest(t + Duration::from_micros(5));
        if !s.sent.is_empty() {
            s.answer_oldest(t + Duration::from_micros(5));
        }
        t += Duration::from_micros(10);
    }
    insta::assert_snapshot!(s.finish());
}

#[test]
fn a_burst_is_cut_into_messages_of_128() {
    let mut s = Script::new(BatchConfig::default());
    s.ready(us(0));
    s.burst(us(1000), 300);
    insta::assert_snapshot!(s.finish());
}

#[test]
fn policies_differ_only_in_waiting() {
    let mut out = String::new();
    for policy in [BatchPolicy::Basic, BatchPolicy::Standard, BatchPolicy::Positive] {
        let mut s = Script::new(BatchConfig::default().policy(policy));
        s.ready(us(0));
        // Two requests 10 µs apart, then silence.
        s.push(us(100), "a", us(100) + Duration::from_millis(10));
        s.push(us(110), "b", us(110) + Duration::from_millis(10));
        s.tick(us(250));
        let _ = writeln!(out, "--- {policy:?}\n{}", s.finish());
    }
    insta::assert_snapshot!(out);
}

#[test]
fn deadlines_unknown_ids_and_mismatches() {
    let mut s = Script::new(BatchConfig::default());
    s.ready(us(0));
    s.push(us(1000), "late", us(2000));
    s.push(us(3000), "mismatch", us(10_000));
    // The deadline passes before the answer: the waiter gets
    // DeadlineExceeded at once, and the late answer is an unknown id.
    s.tick(us(2000));
    let (_, late) = s.sent.remove(0);
    let (_, mismatch) = s.sent.remove(0);
    s.answer(
        us(2500),
        BatchCommandsResponse {
            responses: vec![RespEntry { cmd: Some(RespCmd::RawGet(Default::default())) }],
            request_ids: late.request_ids,
            ..Default::default()
        },
    );
    // An answer of another command, an answer without a command (TiKV's
    // reply to a request it cannot parse), and an id never issued.
    s.answer(
        us(3500),
        BatchCommandsResponse {
            responses: vec![
                RespEntry { cmd: Some(RespCmd::Commit(Default::default())) },
                RespEntry { cmd: None },
            ],
            request_ids: vec![mismatch.request_ids[0], 999],
            ..Default::default()
        },
    );
    // More ids than responses: the missing response is a mismatch too.
    s.push(us(4000), "short", us(10_000));
    let (_, short) = s.sent.remove(0);
    s.answer(
        us(4100),
        BatchCommandsResponse {
            responses: vec![],
            request_ids: short.request_ids,
            ..Default::default()
        },
    );
    // A request queued while the stream is still probing expires in the queue.
    s.broken(us(5000), "reset");
    s.push(us(105_200), "queued", us(105_300));
    s.tick(us(105_300));
    insta::assert_snapshot!(s.finish());
}

#[test]
fn a_broken_stream_fails_pending_and_reopens_with_backoff() {
    let mut s = Script::new(BatchConfig::default());
    s.ready(us(0));
    s.push(us(1000), "sent1", us(1_000_000));
    s.push(us(2000), "sent2", us(1_000_000));
    // Sent requests fail with the retryable error; the stream is down.
    s.broken(us(3000), "connection reset");
    // During the backoff (100 ms) requests go unary.
    s.push(us(4000), "during-backoff", us(1_000_000));
    // After it, a request asks for a new stream and waits for the probe.
    s.push(us(103_000), "after", us(1_000_000));
    s.push(us(103_010), "after2", us(1_000_000));
    // The new stream fails before answering its probe: queued requests
    // (never written) go unary, and the next backoff doubles.
    s.broken(us(104_000), "connection refused");
    s.push(us(204_000), "too-early", us(1_000_000));
    s.push(us(304_000), "retry", us(1_000_000));
    s.answer_oldest(us(304_100));
    // An event from a replaced stream is ignored.
    s.line(us(304_200), "old stream reports a failure");
    s.c.on_stream_broken(StreamGen { slot: 0, generation: 1 }, "stale", us(304_200));
    s.drain(us(304_200));
    // Unbatchable commands never ride the stream.
    s.push_req(us(305_000), "checksum", KvRequest::RawChecksum(Default::default()), us(1_000_000));
    insta::assert_snapshot!(s.finish());
}

/// client-go's shape: one queue over several connections' streams. Every
/// slot opens on the first request; whole messages go to the ready streams
/// in turn; a broken stream fails only what was written to it and its slot
/// backs off alone while the others carry the traffic; with every stream
/// down, queued requests go unary.
#[test]
fn several_streams_take_whole_messages_in_turn() {
    let mut s = Script::new(BatchConfig::default().streams(3).max_batch_size(8));
    s.push(us(0), "first", us(0) + Duration::from_secs(1));
    // Slot 1 answers its probe first: it takes the waiting request.
    s.answer_oldest_on(us(10), 1);
    s.answer_oldest_on(us(20), 0);
    s.answer_oldest_on(us(30), 2);
    s.answer_oldest_on(us(40), 1);
    s.burst(us(1000), 20);
    // Slot 0's stream breaks with its 8 requests in flight; the others'
    // requests are unaffected.
    s.broken_on(us(2000), 0, "connection reset");
    s.answer_oldest_on(us(2100), 1);
    s.answer_oldest_on(us(2200), 2);
    // During slot 0's backoff the other streams take everything.
    s.push(us(3000), "x", us(1_000_000));
    s.push(us(4000), "y", us(1_000_000));
    // After it, the next request reopens slot 0 (a probe) and rides a
    // ready stream meanwhile.
    s.push(us(103_000), "z", us(1_000_000));
    // Every stream breaks: queued requests go unary, as do new ones.
    s.broken_on(us(104_000), 1, "gone");
    s.broken_on(us(104_000), 2, "gone");
    s.push(us(104_100), "queued-behind-probe", us(1_000_000));
    s.broken_on(us(104_200), 0, "refused");
    s.push(us(104_300), "all-down", us(1_000_000));
    insta::assert_snapshot!(s.finish());
}

/// Idleness (client-go's `idleTimeout` recycling): the collector is idle
/// once nothing has been queued or in flight for the timeout, measured from
/// the last request pushed or answered; its timer fires then, so the
/// runtime need not poll. A request in flight longer than the timeout
/// keeps it busy (the timer moves on).
#[test]
fn idle_after_the_timeout_with_nothing_pending() {
    let config = BatchConfig::default().idle_timeout(Duration::from_millis(100));
    // A collector is made for a request: unused, it is not idle yet.
    let fresh = BatchCollector::<String>::new(config);
    assert!(!fresh.is_idle(us(10_000_000)));
    assert_eq!(fresh.poll_timeout(), None);
    let mut s = Script::new(config);
    s.ready(us(0));
    let idle = |s: &Script, at: Instant| format!("idle at {at}: {}", s.c.is_idle(at));
    let mut notes = vec![idle(&s, us(99_000)), idle(&s, us(100_000))];
    s.push(us(50_000), "slow", us(1_000_000));
    // The idle timer fires with the request in flight: still busy.
    s.tick(us(150_000));
    notes.push(idle(&s, us(300_000)));
    s.answer_oldest(us(300_000));
    notes.push(idle(&s, us(399_000)));
    notes.push(idle(&s, us(400_000)));
    for note in notes {
        s.line(us(0), note);
    }
    insta::assert_snapshot!(s.finish());
}

macro_rules! round_trip_all {
    ($(($variant:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
        /// Every command either rides the stream both ways or stays unary.
        #[test]
        fn conversions_round_trip() {
            let mut batchable = Vec::new();
            let mut unary = Vec::new();
            $(
                let req = KvRequest::$variant(Default::default());
                match to_batch_cmd(req.clone()) {
                    Ok(cmd) => {
                        assert!(is_batchable(&req));
                        assert!(from_batch_cmd(cmd).is_ok_and(|r| r == req));
                        // A non-empty message, so the round trip is seen to
                        // carry it (a store RPC's response has no fields to
                        // fill).
                        let region_error = tikv_proto::errorpb::Error {
                            message: stringify!($variant).into(),
                            ..Default::default()
                        };
                        let mut resp = KvResponse::from(kvrpcpb::$resp::default());
                        if let Some(field) = resp.region_error_mut() {
                            *field = Some(region_error);
                        }
                        let cmd = response_to_batch(resp.clone()).expect(stringify!($variant));
                        assert!(response_from_batch(cmd).is_some_and(|r| r == resp));
                        batchable.push(stringify!($method));
                    }
                    Err(back) => {
                        assert!(!is_batchable(&req));
                        assert!(back == req);
                        assert!(response_to_batch(KvResponse::$variant(Default::default())).is_none());
                        unary.push(stringify!($method));
                    }
                }
            )*
            insta::assert_snapshot!(format!("batch: {}\nunary: {}", batchable.join(" "), unary.join(" ")));
        }
    };
}
crate::for_each_kv_rpc!(round_trip_all);

/// Answers in any order leave the timer at the earliest deadline still in
/// flight (an answered request's deadline never wakes the runtime), and a
/// broken stream fails what it carried in the order it was written.
#[test]
fn the_timer_follows_the_requests_still_in_flight() {
    let mut s = Script::new(BatchConfig::default().policy(BatchPolicy::Basic));
    s.ready(us(0));
    s.push(us(10), "a", us(1000));
    s.push(us(20), "b", us(3000));
    s.push(us(30), "c", us(2000));
    s.push(us(40), "d", us(4000));
    let answer = |s: &mut Script, now: Instant, label: &str| {
        let i = s
            .sent
            .iter()
            .position(|(_, batch)| {
                matches!(&batch.requests[0].cmd, Some(ReqCmd::RawGet(g)) if g.key == label.as_bytes())
            })
            .expect("a message to answer");
        let (_, batch) = s.sent.remove(i);
        s.answer(
            now,
            BatchCommandsResponse {
                responses: vec![RespEntry { cmd: Some(RespCmd::RawGet(Default::default())) }],
                request_ids: batch.request_ids,
                ..Default::default()
            },
        );
    };
    assert_eq!(s.c.poll_timeout(), Some(us(1000)));
    answer(&mut s, us(50), "c");
    assert_eq!(s.c.poll_timeout(), Some(us(1000)), "a is still the earliest\n{}", s.log);
    answer(&mut s, us(60), "a");
    assert_eq!(s.c.poll_timeout(), Some(us(3000)), "c's deadline is gone too\n{}", s.log);
    s.broken(us(70), "reset");
    assert_eq!(s.c.poll_timeout(), None, "{}", s.log);
    let failed: Vec<&str> = s
        .log
        .lines()
        .filter_map(|l| l.split_once("done ").map(|(_, rest)| rest))
        .filter(|rest| rest.contains("broken"))
        .map(|rest| &rest[..1])
        .collect();
    assert_eq!(failed, ["b", "d"], "{}", s.log);
    assert_eq!(s.c.stats().broken, 2);
}
