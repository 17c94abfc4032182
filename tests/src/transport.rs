//! The transport suite: a runtime's `GrpcTransport` (the transport of
//! `tikv-grpc` over the runtime's connector, built by its
//! `Platform::build`) against small tonic servers and misbehaving TCP
//! peers on loopback, so every runtime is held to the same rules: which
//! path a request takes, deadlines, mismatched answers, unreachable and
//! broken peers, the TSO stream.
//!
//! The servers run on their own threads with private tokio runtimes, so
//! dropping one closes every connection at once, as a crashed process
//! would, and the client side of an async-std run has no tokio runtime.
//! [`transport_suite!`](crate::transport_suite) stamps the tests out for
//! one [`Harness`].
//!
//! These scripted peers are this suite's in-process bed: a real PD cannot
//! be made to stall, hang up, answer garbage or reorder answers on cue, so
//! none of those tests has a real-PD form. On the real-PD bed
//! ([`Bed::RealPd`](crate::harness::Bed)) the suite instead runs the
//! transport's PD paths against the real PD ([`RealPd`]): unary calls, TSO
//! rounds one at a time and pipelined, and a PD restart under an open TSO
//! stream.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt};
use tikv_core::Error;
use tikv_core::config::TransportConfig;
use tikv_core::op::Operation;
use tikv_core::rpc::{KvRequest, KvResponse, PdRequest, PdResponse, Request, Response, RpcError};
use tikv_core::rpc::{Rpc, RpcId, Target, batch::response_to_batch};
use tikv_core::time::Instant;
use tikv_driver::{Config, Platform, Runtime, Transport, execute};
use tikv_proto::kvrpcpb::{HealthFeedback, RawGetRequest, RawGetResponse};
use tikv_proto::pdpb::pd_server::{Pd, PdServer};
use tikv_proto::pdpb::{
    GetMembersRequest, GetMembersResponse, RequestHeader, ResponseHeader, Timestamp, TsoRequest,
    TsoResponse,
};
use tikv_proto::tikvpb::batch_commands_request::request::Cmd as ReqCmd;
use tikv_proto::tikvpb::batch_commands_response::Response as RespEntry;
use tikv_proto::tikvpb::batch_commands_response::response::Cmd as RespCmd;
use tikv_proto::tikvpb::tikv_server::{Tikv, TikvServer};
use tikv_proto::tikvpb::{BatchCommandsEmptyResponse, BatchCommandsRequest, BatchCommandsResponse};
use tikv_sim::real_pd::RealPd;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};

use crate::harness::Harness;

/// Stamps out the transport suite as `#[test]` functions running on the
/// given [`Harness`](crate::Harness): the scripted-peer tests (`InProcess`,
/// the default) or the real-PD ones (`RealPd`). Every test of
/// [`transport`](crate::transport) is listed here once.
///
/// ```text
/// tikv_tests::transport_suite!(tikv_tests::harness::TokioHarness);
/// tikv_tests::transport_suite!(tikv_tests::harness::TokioHarness, RealPd);
/// ```
#[macro_export]
macro_rules! transport_suite {
    (@each $harness:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                <$harness as $crate::Harness>::block_on($crate::transport::$name::<$harness>());
            }
        )*
    };
    ($harness:ty, RealPd) => {
        $crate::transport_suite!(@each $harness;
            pd_calls_and_the_tso_stream_against_a_real_pd_and_its_restart,
        );
    };
    ($harness:ty, InProcess) => {
        $crate::transport_suite!($harness);
    };
    ($harness:ty) => {
        $crate::transport_suite!(@each $harness;
            a_call_future_stays_small,
            unary_calls_to_tikv_and_pd,
            batchable_requests_ride_the_stream_and_the_switch_keeps_them_unary,
            requests_go_unary_when_the_store_has_no_batch_stream,
            health_feedback_reaches_the_sink_before_its_answer,
            a_unary_fallback_ends_at_its_deadline,
            a_mismatched_answer_is_a_mismatch,
            unimplemented_method_is_typed,
            slow_server_is_deadline_exceeded_on_time,
            unanswered_stream_request_is_deadline_exceeded_on_time,
            stalled_peer_is_deadline_exceeded_on_time,
            refused_connection_is_unavailable,
            invalid_address_is_an_error,
            garbage_server_is_a_typed_error,
            peer_hanging_up_is_unavailable,
            tso_stream_serves_rounds_and_recovers_after_restart,
            tso_stream_closed_by_server_is_reopened,
            abandoned_tso_round_does_not_leak_into_the_next,
            tso_rounds_are_pipelined_on_one_stream,
            reordered_tso_answers_break_the_stream,
            execute_runs_an_operation_over_grpc,
            execute_bounds_a_call_the_transport_never_answers,
        );
    };
}

const CLUSTER_ID: u64 = 42;
/// A TSO count the test PD answers after 300 ms.
const SLOW_TSO_COUNT: u32 = 99;
/// The key the test store never answers in time (unary: after 10 s; on the
/// stream: never).
const SLOW_KEY: &str = "slow";
/// The key on which the test store's unary `raw_get` stalls its whole
/// server for [`FROZEN_FOR`] (a hung process: not even its `grpc-timeout`
/// enforcement runs).
const FREEZE_KEY: &str = "freeze";
const FROZEN_FOR: Duration = Duration::from_millis(1500);
/// The key the test store answers, on the stream, with another RPC's
/// response.
const MISMATCH_KEY: &str = "mismatch";
/// The key whose answer message on the stream carries [`feedback`].
const FEEDBACK_KEY: &str = "feedback";

/// The health feedback the test store attaches to the stream message
/// answering [`FEEDBACK_KEY`]: TiKV's slow score for a slow store.
fn feedback() -> HealthFeedback {
    HealthFeedback { store_id: 7, feedback_seq_no: 3, slow_score: 90 }
}

// ------------------------------------------------------------------ server

/// How many `RawGet`s the test store served on each path.
#[derive(Debug, Default)]
pub struct Served {
    unary: AtomicUsize,
    batched: AtomicUsize,
}

impl Served {
    fn unary(&self) -> usize {
        self.unary.load(Ordering::SeqCst)
    }
    fn batched(&self) -> usize {
        self.batched.load(Ordering::SeqCst)
    }
}

/// `raw_get` answers `value-of-<key>` (after 10 s for [`SLOW_KEY`]); with
/// `batch`, `BatchCommands` answers `RawGet` entries the same way, except
/// that [`SLOW_KEY`] is never answered, [`MISMATCH_KEY`] is answered
/// with a `RawPut` response, and the message answering [`FEEDBACK_KEY`]
/// carries health feedback.
struct TestTikv {
    served: Arc<Served>,
    batch: bool,
}

fn value_of(key: &[u8]) -> RawGetResponse {
    let mut value = b"value-of-".to_vec();
    value.extend_from_slice(key);
    RawGetResponse { value: value.into(), ..Default::default() }
}

#[tonic::async_trait]
impl Tikv for TestTikv {
    async fn raw_get(
        &self,
        request: GrpcRequest<RawGetRequest>,
    ) -> Result<GrpcResponse<RawGetResponse>, Status> {
        self.served.unary.fetch_add(1, Ordering::SeqCst);
        let key = request.into_inner().key;
        if key[..] == *SLOW_KEY.as_bytes() {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        if key[..] == *FREEZE_KEY.as_bytes() {
            // Blocks the server's only worker thread.
            std::thread::sleep(FROZEN_FOR);
        }
        Ok(GrpcResponse::new(value_of(&key)))
    }

    async fn batch_commands(
        &self,
        request: GrpcRequest<Streaming<BatchCommandsRequest>>,
    ) -> Result<GrpcResponse<tonic::codegen::BoxStream<BatchCommandsResponse>>, Status> {
        if !self.batch {
            return Err(Status::unimplemented("no BatchCommands here"));
        }
        let served = self.served.clone();
        let answers = request.into_inner().filter_map(move |message| {
            let served = served.clone();
            async move {
                let message = match message {
                    Ok(message) => message,
                    Err(status) => return Some(Err(status)),
                };
                let mut answer = BatchCommandsResponse::default();
                for (entry, id) in message.requests.into_iter().zip(message.request_ids) {
                    let cmd = match entry.cmd {
                        // The client's probes, as TiKV answers them.
                        Some(ReqCmd::Empty(empty)) => {
                            RespCmd::Empty(Box::new(BatchCommandsEmptyResponse {
                                test_id: empty.test_id,
                            }))
                        }
                        Some(ReqCmd::RawGet(get)) => {
                            served.batched.fetch_add(1, Ordering::SeqCst);
                            if get.key[..] == *FEEDBACK_KEY.as_bytes() {
                                answer.health_feedback = Some(feedback());
                            }
                            let response = match &get.key[..] {
                                k if k == SLOW_KEY.as_bytes() => continue,
                                k if k == MISMATCH_KEY.as_bytes() => {
                                    KvResponse::RawPut(Box::default())
                                }
                                k => KvResponse::RawGet(Box::new(value_of(k))),
                            };
                            match response_to_batch(response) {
                                Some(cmd) => cmd,
                                None => continue,
                            }
                        }
                        _ => continue,
                    };
                    answer.responses.push(RespEntry { cmd: Some(cmd) });
                    answer.request_ids.push(id);
                }
                (!answer.request_ids.is_empty()).then_some(Ok(answer))
            }
        });
        Ok(GrpcResponse::new(Box::pin(answers)))
    }
}

/// `get_members` answers with the cluster id; `tso` answers each request
/// with `physical = generation * 1000 + n` (n counts from 1 per server) and
/// the requested count, takes 300ms for a count of [`SLOW_TSO_COUNT`], and
/// closes the stream when asked for a count of 0. With a [`Pipeline`] it
/// instead answers nothing until it holds that many requests, then answers
/// them all (in order, or swapped pairwise).
struct TestPd {
    generation: i64,
    issued: Arc<AtomicI64>,
    pipeline: Option<Pipeline>,
}

/// How [`TestPd`] answers pipelined requests.
#[derive(Clone, Copy)]
struct Pipeline {
    hold: usize,
    swap: bool,
}

fn header() -> Option<ResponseHeader> {
    Some(ResponseHeader { cluster_id: CLUSTER_ID, ..Default::default() })
}

fn tso_answer(generation: i64, n: i64, count: u32, logical: i64) -> TsoResponse {
    TsoResponse {
        header: header(),
        count,
        timestamp: Some(Timestamp { physical: generation * 1000 + n, logical, suffix_bits: 0 }),
    }
}

#[tonic::async_trait]
impl Pd for TestPd {
    async fn get_members(
        &self,
        _request: GrpcRequest<GetMembersRequest>,
    ) -> Result<GrpcResponse<GetMembersResponse>, Status> {
        Ok(GrpcResponse::new(GetMembersResponse { header: header(), ..Default::default() }))
    }

    async fn tso(
        &self,
        request: GrpcRequest<Streaming<TsoRequest>>,
    ) -> Result<GrpcResponse<tonic::codegen::BoxStream<TsoResponse>>, Status> {
        let (generation, issued) = (self.generation, self.issued.clone());
        if let Some(Pipeline { hold, swap }) = self.pipeline {
            let answers = request.into_inner().chunks(hold).flat_map(move |held| {
                let mut answers: Vec<Result<TsoResponse, Status>> = held
                    .into_iter()
                    .map(|r| {
                        let r = r?;
                        let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                        Ok(tso_answer(generation, n, r.count, i64::from(r.count)))
                    })
                    .collect();
                if swap {
                    answers.chunks_mut(2).for_each(|pair| pair.reverse());
                }
                futures::stream::iter(answers)
            });
            return Ok(GrpcResponse::new(Box::pin(answers)));
        }
        let answers = request
            .into_inner()
            .take_while(|r| futures::future::ready(!matches!(r, Ok(r) if r.count == 0)))
            .then(move |r| {
                let issued = issued.clone();
                async move {
                    let r = r?;
                    if r.count == SLOW_TSO_COUNT {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                    Ok(tso_answer(generation, n, r.count, 0))
                }
            });
        Ok(GrpcResponse::new(Box::pin(answers)))
    }
}

/// A `Tikv` + `PD` server on its own tokio runtime; dropping it kills it.
struct TestServer {
    addr: SocketAddr,
    served: Arc<Served>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// What a [`TestServer`] serves.
#[derive(Clone, Copy)]
struct Serve {
    generation: i64,
    pipeline: Option<Pipeline>,
    batch: bool,
}

impl Serve {
    fn generation(generation: i64) -> Serve {
        Serve { generation, pipeline: None, batch: true }
    }
}

impl TestServer {
    fn start(serve: Serve) -> TestServer {
        TestServer::serve(StdListener::bind("127.0.0.1:0").expect("bind"), serve)
    }

    /// Restarts on `addr`, retrying while the old listener is still closing.
    fn restart(addr: SocketAddr, serve: Serve) -> TestServer {
        for _ in 0..200 {
            if let Ok(listener) = StdListener::bind(addr) {
                return TestServer::serve(listener, serve);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("could not rebind {addr}");
    }

    fn serve(listener: StdListener, serve: Serve) -> TestServer {
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-server")
            .enable_all()
            .build()
            .expect("server runtime");
        let served = Arc::new(Served::default());
        let tikv = TestTikv { served: served.clone(), batch: serve.batch };
        let pd = TestPd {
            generation: serve.generation,
            issued: Arc::default(),
            pipeline: serve.pipeline,
        };
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            tonic::transport::Server::builder()
                .add_service(TikvServer::new(tikv))
                .add_service(PdServer::new(pd))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .expect("serve");
        });
        TestServer { addr, served, runtime: Some(runtime) }
    }

    fn addr(&self) -> Arc<str> {
        self.addr.to_string().into()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        // Wait until the port refuses connections, so a test that follows
        // sees a dead server, not one that is still shutting down.
        for _ in 0..200 {
            if TcpStream::connect(self.addr).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A port with nothing listening on it.
fn dead_addr() -> Arc<str> {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    addr.to_string().into()
}

/// A plain TCP peer on its own thread, running `handle` on each accepted
/// connection until it is dropped (checked between connections, and at
/// most ~20s in all, whatever the client does).
struct RawPeer {
    addr: Arc<str>,
    stop: Arc<AtomicBool>,
}

impl RawPeer {
    fn start(handle: impl Fn(TcpStream) + Send + 'static) -> RawPeer {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for _ in 0..2000 {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        handle(conn);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        RawPeer { addr: addr.to_string().into(), stop }
    }

    /// Answers every connection with pseudo-random bytes.
    fn garbage() -> RawPeer {
        let seed = Mutex::new(0x9e37_79b9_7f4a_7c15_u64);
        RawPeer::start(move |mut conn| {
            let mut seed = seed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let garbage: Vec<u8> = (0..4096)
                .map(|_| {
                    *seed ^= *seed << 13;
                    *seed ^= *seed >> 7;
                    *seed ^= *seed << 17;
                    *seed as u8
                })
                .collect();
            let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
            let _ = conn.write_all(&garbage);
            let _ = conn.read(&mut [0u8; 1024]);
        })
    }

    /// Reads what the client sends and hangs up without a byte in return.
    fn hang_up() -> RawPeer {
        RawPeer::start(|mut conn| {
            let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = conn.read(&mut [0u8; 4096]);
        })
    }

    /// Accepts connections and never answers or closes them.
    fn stalled() -> RawPeer {
        let held = Mutex::new(Vec::new());
        RawPeer::start(move |conn| {
            held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(conn)
        })
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ------------------------------------------------------------------ client

fn store(addr: Arc<str>) -> Target {
    Target::Store { store_id: 1, addr, forwarded_host: None }
}

fn raw_get(key: &str) -> Request {
    Request::Kv(KvRequest::RawGet(Box::new(RawGetRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    })))
}

fn tso(count: u32) -> Request {
    Request::Pd(PdRequest::Tso(Box::new(TsoRequest { count, ..Default::default() })))
}

fn value(response: Result<Response, RpcError>) -> Vec<u8> {
    match response {
        Ok(Response::Kv(KvResponse::RawGet(r))) => r.value.to_vec(),
        other => panic!("expected a RawGet response, got {other:?}"),
    }
}

fn physical(response: Result<Response, RpcError>) -> i64 {
    match response {
        Ok(Response::Pd(PdResponse::Tso(r))) => r.timestamp.expect("timestamp").physical,
        other => panic!("expected a TSO response, got {other:?}"),
    }
}

fn count(response: Result<Response, RpcError>) -> u32 {
    match response {
        Ok(Response::Pd(PdResponse::Tso(r))) => r.count,
        other => panic!("expected a TSO response, got {other:?}"),
    }
}

/// The runtime and transport of `H`'s platform, as `Platform::build` makes
/// them for a client.
struct Client<H: Harness> {
    rt: <H::Platform as Platform>::Runtime,
    transport: <H::Platform as Platform>::Transport,
}

impl<H: Harness> Client<H> {
    /// With the default transport settings but a short connect timeout.
    fn new() -> Client<H> {
        Client::with(TransportConfig::default())
    }

    fn with(transport: TransportConfig) -> Client<H> {
        let transport = transport.connect_timeout(Duration::from_secs(2));
        let config = Config::default().with_transport(transport);
        let (rt, transport) = H::Platform::build(&config).expect("build");
        Client { rt, transport }
    }

    /// Every request unary.
    fn unary() -> Client<H> {
        Client::with(TransportConfig::default().batch_commands(false))
    }

    fn deadline(&self, ms: u64) -> Instant {
        self.rt.now() + Duration::from_millis(ms)
    }

    async fn call(&self, target: &Target, request: Request, ms: u64) -> Result<Response, RpcError> {
        self.transport.call(target, request, self.deadline(ms)).await
    }
}

/// Asserts that `waited` is the deadline `ms` give or take scheduling.
fn on_time(waited: Duration, ms: u64) {
    let ms = Duration::from_millis(ms);
    assert!(waited + Duration::from_millis(50) >= ms, "early: {waited:?} for {ms:?}");
    assert!(waited < ms + Duration::from_millis(1200), "late: {waited:?} for {ms:?}");
}

// ------------------------------------------------------------------ tests

/// Every call moves its future into a box; the stream path's future must
/// not carry the unary paths' state (tonic's unary call is kilobytes).
pub async fn a_call_future_stays_small<H: Harness>() {
    let client = Client::<H>::new();
    for request in [raw_get("k"), tso(1)] {
        let call = client.transport.call(&store("127.0.0.1:1".into()), request, Instant::MAX);
        let size = std::mem::size_of_val(&*call);
        assert!(size <= 1024, "GrpcTransport::call future: {size} bytes");
    }
}

/// Unary calls reach TiKV's and PD's services, with or without a scheme
/// in the address.
pub async fn unary_calls_to_tikv_and_pd<H: Harness>() {
    let server = TestServer::start(Serve::generation(1));
    let client = Client::<H>::unary();
    let response = client.call(&store(server.addr()), raw_get("k1"), 5000).await;
    assert_eq!(value(response), b"value-of-k1");
    assert_eq!((server.served.unary(), server.served.batched()), (1, 0));

    // The same address with a scheme works the same.
    let pd = Target::Pd { addr: format!("http://{}", server.addr).into() };
    let members =
        client.call(&pd, Request::Pd(PdRequest::GetMembers(Default::default())), 5000).await;
    match members {
        Ok(Response::Pd(PdResponse::GetMembers(r))) => {
            assert_eq!(r.header.map(|h| h.cluster_id), Some(CLUSTER_ID));
        }
        other => panic!("{other:?}"),
    }
}

/// With `batch_commands` (the default) a batchable request rides the
/// store's `BatchCommands` stream; with it off, it goes unary.
pub async fn batchable_requests_ride_the_stream_and_the_switch_keeps_them_unary<H: Harness>() {
    let server = TestServer::start(Serve::generation(1));
    let client = Client::<H>::new();
    let target = store(server.addr());
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let answers =
        futures::future::join_all(keys.iter().map(|k| client.call(&target, raw_get(k), 5000)))
            .await;
    for (key, answer) in keys.iter().zip(answers) {
        assert_eq!(value(answer), format!("value-of-{key}").into_bytes());
    }
    assert_eq!((server.served.unary(), server.served.batched()), (0, 20));

    let unary = Client::<H>::unary();
    assert_eq!(value(unary.call(&target, raw_get("u"), 5000).await), b"value-of-u");
    assert_eq!((server.served.unary(), server.served.batched()), (1, 20));
}

/// TiKV's health feedback on a `BatchCommands` answer reaches the installed
/// sink as the answer arrives, before the answer reaches its caller
/// (client-go's `batchRecvLoop` calls `OnHealthFeedback` before handing out
/// the answers): once the call returns, the sink holds the feedback,
/// stamped with the runtime's clock between the call's start and end.
/// Answers without feedback hand nothing to it, and a sink installed later
/// replaces the first on the streams already open.
pub async fn health_feedback_reaches_the_sink_before_its_answer<H: Harness>() {
    type Received = Arc<Mutex<Vec<(HealthFeedback, Instant)>>>;
    fn sink_into(received: &Received) -> tikv_driver::HealthFeedbackSink {
        let received = received.clone();
        Arc::new(move |feedback: HealthFeedback, now| {
            received.lock().unwrap().push((feedback, now));
        })
    }
    let server = TestServer::start(Serve::generation(1));
    let client = Client::<H>::new();
    let target = store(server.addr());
    let first = Received::default();
    client.transport.set_health_feedback_sink(sink_into(&first));
    assert_eq!(value(client.call(&target, raw_get("k"), 5000).await), b"value-of-k");
    assert!(first.lock().unwrap().is_empty(), "an answer without feedback");

    let before = client.rt.now();
    let response = client.call(&target, raw_get(FEEDBACK_KEY), 5000).await;
    let after = client.rt.now();
    assert_eq!(value(response), b"value-of-feedback");
    let received = first.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].0, feedback());
    assert!(before <= received[0].1 && received[0].1 <= after, "{received:?}");
    assert_eq!(server.served.batched(), 2, "both rode the stream");

    let second = Received::default();
    client.transport.set_health_feedback_sink(sink_into(&second));
    assert_eq!(
        value(client.call(&target, raw_get(FEEDBACK_KEY), 5000).await),
        b"value-of-feedback"
    );
    assert_eq!(first.lock().unwrap().len(), 1, "replaced");
    assert_eq!(second.lock().unwrap().len(), 1);
}

/// A store that does not serve `BatchCommands` is still served: the
/// collector sends its requests unary.
pub async fn requests_go_unary_when_the_store_has_no_batch_stream<H: Harness>() {
    let server = TestServer::start(Serve { batch: false, ..Serve::generation(1) });
    let client = Client::<H>::new();
    let response = client.call(&store(server.addr()), raw_get("k"), 5000).await;
    assert_eq!(value(response), b"value-of-k");
    assert_eq!((server.served.unary(), server.served.batched()), (1, 0));
}

/// A stream request the collector sends unary (the store has no stream)
/// still ends at its deadline when the store hangs: the transport arms no
/// timer for it, the fallback does.
pub async fn a_unary_fallback_ends_at_its_deadline<H: Harness>() {
    let server = TestServer::start(Serve { batch: false, ..Serve::generation(1) });
    let client = Client::<H>::new();
    let target = store(server.addr());
    client.call(&target, raw_get("k"), 5000).await.expect("warm-up");
    let started = std::time::Instant::now();
    let response = client.call(&target, raw_get(FREEZE_KEY), 300).await;
    on_time(started.elapsed(), 300);
    assert!(started.elapsed() < FROZEN_FOR, "ended by the server, not the deadline");
    assert_eq!(response, Err(RpcError::DeadlineExceeded));
}

/// An answer of another RPC than the request's is `Mismatch`, not a
/// response the caller would misread.
pub async fn a_mismatched_answer_is_a_mismatch<H: Harness>() {
    let server = TestServer::start(Serve::generation(1));
    let client = Client::<H>::new();
    let response = client.call(&store(server.addr()), raw_get(MISMATCH_KEY), 5000).await;
    assert_eq!(response, Err(RpcError::Mismatch));
    // The stream carries on.
    assert_eq!(value(client.call(&store(server.addr()), raw_get("k"), 5000).await), b"value-of-k");
}

/// A method the server does not implement is `RpcError::Unimplemented`
/// (gRPC status 12), a variant of its own: the core falls back on it.
pub async fn unimplemented_method_is_typed<H: Harness>() {
    let server = TestServer::start(Serve::generation(1));
    let client = Client::<H>::unary();
    let put = Request::Kv(KvRequest::RawPut(Box::default()));
    let response = client.call(&store(server.addr()), put, 5000).await;
    assert!(matches!(response, Err(RpcError::Unimplemented(_))), "{response:?}");
    // Unimplemented PD method on a server that does serve PD.
    let pd = Target::Pd { addr: server.addr() };
    let stores = Request::Pd(PdRequest::GetAllStores(Default::default()));
    let response = client.call(&pd, stores, 5000).await;
    assert!(matches!(response, Err(RpcError::Unimplemented(_))), "{response:?}");
}

/// A unary call to a store that answers too late ends at its deadline, as
/// `DeadlineExceeded`, without breaking the connection.
pub async fn slow_server_is_deadline_exceeded_on_time<H: Harness>() {
    let server = TestServer::start(Serve::generation(1));
    let client = Client::<H>::unary();
    let target = store(server.addr());
    // Warm the connection so the deadline measures the call, not the dial.
    client.call(&target, raw_get("k"), 5000).await.expect("warm-up");

    let started = std::time::Instant::now();
    let response = client.call(&target, raw_get(SLOW_KEY), 300).await;
    on_time(started.elapsed(), 300);
    assert_eq!(response, Err(RpcError::DeadlineExceeded));

    // A deadline already in the past fails without a call.
    let past = client.rt.now() - Duration::from_millis(1);
    assert_eq!(
        client.transport.call(&target, raw_get("k"), past).await,
        Err(RpcError::DeadlineExceeded)
    );
    assert_eq!(server.served.unary(), 2);

    // The abandoned call did not break the connection.
    assert_eq!(value(client.call(&target, raw_get("k"), 5000).await), b"value-of-k");
}

/// A request the store's stream never answers ends at its deadline too:
/// the batch collector enforces it (the transport arms no timer of its own
/// for stream requests).
pub async fn unanswered_stream_request_is_deadline_exceeded_on_time<H: Harness>() {
    let server = TestServer::start(Serve::generation(1));
    let client = Client::<H>::new();
    let target = store(server.addr());
    client.call(&target, raw_get("k"), 5000).await.expect("warm-up");

    let started = std::time::Instant::now();
    let response = client.call(&target, raw_get(SLOW_KEY), 300).await;
    on_time(started.elapsed(), 300);
    assert_eq!(response, Err(RpcError::DeadlineExceeded));
    assert_eq!((server.served.unary(), server.served.batched()), (0, 2));
    assert_eq!(value(client.call(&target, raw_get("k"), 5000).await), b"value-of-k");
}

/// A peer that accepts the connection and never speaks: every path ends at
/// the deadline, before the connect timeout.
pub async fn stalled_peer_is_deadline_exceeded_on_time<H: Harness>() {
    let peer = RawPeer::stalled();
    for client in [Client::<H>::new(), Client::<H>::unary()] {
        let started = std::time::Instant::now();
        let response = client.call(&store(peer.addr.clone()), raw_get("k"), 300).await;
        on_time(started.elapsed(), 300);
        assert_eq!(response, Err(RpcError::DeadlineExceeded));
        let round = client.call(&Target::Pd { addr: peer.addr.clone() }, tso(1), 300).await;
        assert_eq!(round, Err(RpcError::DeadlineExceeded));
    }
}

/// A refused connection is the retryable `Unavailable`, on every path,
/// well before the deadline.
pub async fn refused_connection_is_unavailable<H: Harness>() {
    for client in [Client::<H>::new(), Client::<H>::unary()] {
        let started = std::time::Instant::now();
        let response = client.call(&store(dead_addr()), raw_get("k"), 5000).await;
        assert!(matches!(response, Err(RpcError::Unavailable(_))), "{response:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

        // So is a TSO round to a dead PD.
        let round = client.call(&Target::Pd { addr: dead_addr() }, tso(1), 5000).await;
        assert!(matches!(round, Err(RpcError::Unavailable(_))), "{round:?}");
    }
}

/// An address that is no URI fails the call, on every path.
pub async fn invalid_address_is_an_error<H: Harness>() {
    for client in [Client::<H>::new(), Client::<H>::unary()] {
        let response = client.call(&store("not a uri".into()), raw_get("k"), 1000).await;
        assert!(
            matches!(&response, Err(RpcError::Unavailable(m)) if m.contains("invalid address")),
            "{response:?}"
        );
    }
}

/// An HTTP/2 protocol error on a connection is a transport failure.
pub async fn garbage_server_is_a_typed_error<H: Harness>() {
    let peer = RawPeer::garbage();
    for client in [Client::<H>::new(), Client::<H>::unary()] {
        let started = std::time::Instant::now();
        let response = client.call(&store(peer.addr.clone()), raw_get("k"), 3000).await;
        assert!(matches!(response, Err(RpcError::Unavailable(_))), "{response:?}");
        assert!(started.elapsed() < Duration::from_secs(3));

        let round = client.call(&Target::Pd { addr: peer.addr.clone() }, tso(1), 3000).await;
        assert!(matches!(round, Err(RpcError::Unavailable(_))), "{round:?}");
    }
}

/// A peer closing each connection under the call is `Unavailable`.
pub async fn peer_hanging_up_is_unavailable<H: Harness>() {
    let peer = RawPeer::hang_up();
    let client = Client::<H>::unary();
    for _ in 0..3 {
        // Each call reconnects, and each connection is closed under it.
        let response = client.call(&store(peer.addr.clone()), raw_get("k"), 3000).await;
        assert!(matches!(response, Err(RpcError::Unavailable(_))), "{response:?}");
    }
}

/// TSO rounds share one stream; when PD restarts the broken stream fails
/// its round and the next round opens a new one.
pub async fn tso_stream_serves_rounds_and_recovers_after_restart<H: Harness>() {
    let server = TestServer::start(Serve::generation(1));
    let addr = server.addr;
    let client = Client::<H>::new();
    let pd = Target::Pd { addr: server.addr() };

    for n in 1..=5 {
        assert_eq!(physical(client.call(&pd, tso(3), 2000).await), 1000 + n);
    }

    drop(server);
    let failed = client.call(&pd, tso(1), 2000).await;
    assert!(matches!(failed, Err(RpcError::Unavailable(_))), "{failed:?}");

    let _server = TestServer::restart(addr, Serve::generation(2));
    // The connection is re-established; allow it a few tries.
    let mut recovered = None;
    for _ in 0..50 {
        match client.call(&pd, tso(1), 2000).await {
            Ok(response) => {
                recovered = Some(physical(Ok(response)));
                break;
            }
            Err(RpcError::Unavailable(_)) => H::sleep(Duration::from_millis(20)).await,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(recovered, Some(2001), "the new server's first timestamp");
    assert_eq!(physical(client.call(&pd, tso(1), 2000).await), 2002);
}

/// A TSO stream that PD ends fails its round and is reopened.
pub async fn tso_stream_closed_by_server_is_reopened<H: Harness>() {
    let server = TestServer::start(Serve::generation(3));
    let client = Client::<H>::new();
    let pd = Target::Pd { addr: server.addr() };
    assert_eq!(physical(client.call(&pd, tso(1), 2000).await), 3001);
    // count 0 makes the test server end the stream.
    let closed = client.call(&pd, tso(0), 2000).await;
    assert!(
        matches!(closed, Err(RpcError::Unavailable(ref m)) if m.contains("closed")),
        "{closed:?}"
    );
    assert_eq!(physical(client.call(&pd, tso(1), 2000).await), 3002);
}

/// A TSO round given up at its deadline breaks its stream, so its late
/// answer cannot be taken for the next round's.
pub async fn abandoned_tso_round_does_not_leak_into_the_next<H: Harness>() {
    let server = TestServer::start(Serve::generation(4));
    let client = Client::<H>::new();
    let pd = Target::Pd { addr: server.addr() };
    assert_eq!(physical(client.call(&pd, tso(1), 2000).await), 4001);

    // The server answers this round after 300ms; the caller gives up at 50ms
    // and drops the call, as `execute` does at an RPC's deadline.
    let abandoned = client.call(&pd, tso(SLOW_TSO_COUNT), 50).await;
    assert_eq!(abandoned, Err(RpcError::DeadlineExceeded));

    // The next round must get its own answer, not the late one: the late
    // answer echoes count 99, this round's echoes 7.
    assert_eq!(count(client.call(&pd, tso(7), 2000).await), 7);
}

/// Three rounds are in flight on one stream at once (the server answers
/// only when it holds all three), and each gets the answer to its own
/// request: answers are matched to requests in sending order.
pub async fn tso_rounds_are_pipelined_on_one_stream<H: Harness>() {
    let pipeline = Some(Pipeline { hold: 3, swap: false });
    let server = TestServer::start(Serve { pipeline, ..Serve::generation(5) });
    let client = Client::<H>::new();
    let pd = Target::Pd { addr: server.addr() };
    for _ in 0..2 {
        let (a, b, c) = futures::join!(
            client.call(&pd, tso(1), 2000),
            client.call(&pd, tso(2), 2000),
            client.call(&pd, tso(3), 2000),
        );
        assert_eq!((count(a), count(b), count(c)), (1, 2, 3));
    }
}

/// A server answering two pipelined requests in swapped order breaks the
/// stream: both rounds fail with the retryable `Unavailable` (never with
/// each other's timestamps), and the next round opens a fresh stream.
pub async fn reordered_tso_answers_break_the_stream<H: Harness>() {
    let pipeline = Some(Pipeline { hold: 2, swap: true });
    let server = TestServer::start(Serve { pipeline, ..Serve::generation(6) });
    let client = Client::<H>::new();
    let pd = Target::Pd { addr: server.addr() };
    let (a, b) = futures::join!(client.call(&pd, tso(1), 2000), client.call(&pd, tso(2), 2000));
    for answer in [a, b] {
        assert!(
            matches!(&answer, Err(RpcError::Unavailable(m)) if m.contains("the oldest request asked")),
            "{answer:?}"
        );
    }
    // A fresh stream, whose answers come swapped too. With equal counts the
    // first answer (the second request's) is a valid range for the first
    // round; the second is lower than it, which the stream order check
    // refuses: that round fails, nobody gets a timestamp twice.
    let (a, b) = futures::join!(client.call(&pd, tso(4), 2000), client.call(&pd, tso(4), 2000));
    assert_eq!(physical(a), 6004);
    assert!(matches!(&b, Err(RpcError::Unavailable(m)) if m.contains("same stream")), "{b:?}");
}

// ------------------------------------------------------------------ execute

/// Reads one key from one store and returns its value.
struct GetOp {
    target: Target,
    key: &'static str,
    deadline: Instant,
    sent: bool,
    result: Option<Result<Vec<u8>, Error>>,
}

impl GetOp {
    fn new(addr: Arc<str>, key: &'static str, deadline: Instant) -> GetOp {
        GetOp { target: store(addr), key, deadline, sent: false, result: None }
    }
}

impl Operation for GetOp {
    type Output = Vec<u8>;
    fn start(&mut self, _now: Instant) {}
    fn poll_rpc(&mut self) -> Option<Rpc> {
        if self.sent {
            return None;
        }
        self.sent = true;
        let request = raw_get(self.key);
        Some(Rpc { id: RpcId(1), target: self.target.clone(), request, deadline: self.deadline })
    }
    fn on_response(&mut self, _id: RpcId, response: Result<Response, RpcError>, _now: Instant) {
        self.result = Some(match response {
            Ok(Response::Kv(KvResponse::RawGet(r))) => Ok(r.value.to_vec()),
            Ok(other) => Err(Error::malformed(format!("{other:?}"))),
            Err(e) => Err(Error::Rpc(e)),
        });
    }
    fn on_timeout(&mut self, _now: Instant) {}
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn poll_result(&mut self) -> Option<Result<Vec<u8>, Error>> {
        self.result.take()
    }
}

/// The driver's loop runs an operation over the transport, on a task of
/// the runtime (so its future is `Send`), and a call past its deadline ends
/// there.
pub async fn execute_runs_an_operation_over_grpc<H: Harness>() {
    let server = TestServer::start(Serve::generation(1));
    let client = Client::<H>::new();
    let op = GetOp::new(server.addr(), "hello", client.deadline(5000));
    let (rt, transport) = (client.rt.clone(), Arc::new(client.transport));
    let (reply, value) = futures::channel::oneshot::channel();
    let task = {
        let (rt, transport) = (rt.clone(), transport.clone());
        async move {
            let _ = reply.send(execute(op, &rt, &*transport).await);
        }
    };
    rt.spawn(task.boxed());
    assert_eq!(value.await.expect("task").as_deref(), Ok(&b"value-of-hello"[..]));

    let started = std::time::Instant::now();
    let op = GetOp::new(server.addr(), SLOW_KEY, rt.now() + Duration::from_millis(300));
    let late = execute(op, &rt, &*transport).await;
    on_time(started.elapsed(), 300);
    assert_eq!(late, Err(Error::Rpc(RpcError::DeadlineExceeded)));
}

/// A transport that never answers: only the loop's own deadline (the
/// runtime's timer) ends the call.
pub async fn execute_bounds_a_call_the_transport_never_answers<H: Harness>() {
    struct BlackHole;
    impl Transport for BlackHole {
        fn call(
            &self,
            _: &Target,
            _: Request,
            _: Instant,
        ) -> BoxFuture<'static, Result<Response, RpcError>> {
            futures::future::pending().boxed()
        }
    }
    let client = Client::<H>::new();
    let started = std::time::Instant::now();
    let op = GetOp::new("127.0.0.1:1".into(), "k", client.deadline(100));
    let result = execute(op, &client.rt, &BlackHole).await;
    on_time(started.elapsed(), 100);
    assert_eq!(result, Err(Error::Rpc(RpcError::DeadlineExceeded)));
}

/// The transport's PD paths against a real PD (one started for the test,
/// no stores): unary `GetMembers` answers PD's cluster id and leader; TSO
/// rounds, one at a time and three pipelined on one stream, answer their
/// own counts with strictly increasing timestamps; and after PD restarts on
/// its address under the open stream, rounds fail only as `Unavailable`
/// until one on a new stream answers above every earlier timestamp (PD
/// saved its TSO window before it stopped).
pub async fn pd_calls_and_the_tso_stream_against_a_real_pd_and_its_restart<H: Harness>() {
    // Blocks the test's own thread for about a second.
    let mut pd = RealPd::start();
    let client = Client::<H>::new();
    let target = Target::Pd { addr: pd.addr().into() };
    let members =
        client.call(&target, Request::Pd(PdRequest::GetMembers(Default::default())), 5000).await;
    let cluster_id = match members {
        Ok(Response::Pd(PdResponse::GetMembers(r))) => {
            assert!(r.leader.is_some(), "{r:?}");
            r.header.map_or(0, |h| h.cluster_id)
        }
        other => panic!("{other:?}"),
    };
    assert_ne!(cluster_id, 0);
    // PD refuses a TSO request whose header names another cluster.
    let tso = |count: u32| {
        Request::Pd(PdRequest::Tso(Box::new(TsoRequest {
            header: Some(RequestHeader { cluster_id, ..Default::default() }),
            count,
            ..Default::default()
        })))
    };
    // The last timestamp of a round, composed as PD's clients compose it.
    let last_ts = |response: Result<Response, RpcError>| -> (u64, u32) {
        match response {
            Ok(Response::Pd(PdResponse::Tso(r))) => {
                let ts = r.timestamp.expect("timestamp");
                let physical = u64::try_from(ts.physical).expect("physical");
                let logical = u64::try_from(ts.logical).expect("logical");
                ((physical << 18) | logical, r.count)
            }
            other => panic!("expected a TSO response, got {other:?}"),
        }
    };

    let mut last = 0;
    for _ in 0..5 {
        let (ts, n) = last_ts(client.call(&target, tso(3), 2000).await);
        assert_eq!(n, 3);
        assert!(ts > last, "{ts} after {last}");
        last = ts;
    }
    for _ in 0..2 {
        let (a, b, c) = futures::join!(
            client.call(&target, tso(1), 2000),
            client.call(&target, tso(2), 2000),
            client.call(&target, tso(3), 2000),
        );
        let rounds = [last_ts(a), last_ts(b), last_ts(c)];
        assert_eq!(rounds.map(|r| r.1), [1, 2, 3]);
        let mut stamps: Vec<u64> = rounds.iter().map(|r| r.0).collect();
        stamps.sort_unstable();
        stamps.dedup();
        assert_eq!(stamps.len(), 3, "{rounds:?}");
        assert!(stamps[0] > last, "{rounds:?} after {last}");
        last = stamps[2];
    }

    // Blocks the test's own thread while PD stops and starts again.
    pd.restart();
    let mut recovered = None;
    for _ in 0..100 {
        match client.call(&target, tso(1), 2000).await {
            Ok(response) => {
                recovered = Some(last_ts(Ok(response)).0);
                break;
            }
            Err(RpcError::Unavailable(_)) => H::sleep(Duration::from_millis(50)).await,
            Err(other) => panic!("a TSO round across PD's restart: {other:?}"),
        }
    }
    let recovered = recovered.expect("TSO answers again after PD's restart");
    assert!(recovered > last, "{recovered} after {last}, across PD's restart");
}
