//! `GrpcTransport` and `TokioRuntime` against small tonic servers on loopback.
//!
//! Each server runs on its own tokio runtime, so dropping it closes every
//! connection at once, as a crashed process would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tikv_core::Error;
use tikv_core::op::Operation;
use tikv_core::rpc::{
    KvRequest, KvResponse, PdRequest, PdResponse, Request, Response, Rpc, RpcError, RpcId, Target,
};
use tikv_core::time::Instant;
use tikv_driver::{Runtime, Transport, execute};
use tikv_proto::kvrpcpb::{RawGetRequest, RawGetResponse};
use tikv_proto::pdpb::pd_server::{Pd, PdServer};
use tikv_proto::pdpb::{
    GetMembersRequest, GetMembersResponse, ResponseHeader, Timestamp, TsoRequest, TsoResponse,
};
use tikv_proto::tikvpb::tikv_server::{Tikv, TikvServer};
use tikv_tokio::{GrpcTransport, TokioRuntime, TransportConfig};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};

const CLUSTER_ID: u64 = 42;
const SLOW_TSO_COUNT: u32 = 99;

// ------------------------------------------------------------------ server

/// `raw_get` answers `value-of-<key>`, or sleeps 10s for the key `slow`.
struct TestTikv;

#[tonic::async_trait]
impl Tikv for TestTikv {
    async fn raw_get(
        &self,
        request: GrpcRequest<RawGetRequest>,
    ) -> Result<GrpcResponse<RawGetResponse>, Status> {
        let key = request.into_inner().key;
        if &key[..] == b"slow" {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let mut value = b"value-of-".to_vec();
        value.extend_from_slice(&key);
        Ok(GrpcResponse::new(RawGetResponse { value: value.into(), ..Default::default() }))
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
                        Ok(TsoResponse {
                            header: header(),
                            count: r.count,
                            timestamp: Some(Timestamp {
                                physical: generation * 1000 + n,
                                logical: i64::from(r.count),
                                suffix_bits: 0,
                            }),
                        })
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
                    Ok(TsoResponse {
                        header: header(),
                        count: r.count,
                        timestamp: Some(Timestamp {
                            physical: generation * 1000 + n,
                            logical: 0,
                            suffix_bits: 0,
                        }),
                    })
                }
            });
        Ok(GrpcResponse::new(Box::pin(answers)))
    }
}

/// A `Tikv` + `PD` server on its own runtime; dropping it kills it.
struct TestServer {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    fn start(generation: i64) -> TestServer {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        TestServer::serve(listener, generation, None)
    }

    fn pipelined(generation: i64, pipeline: Pipeline) -> TestServer {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        TestServer::serve(listener, generation, Some(pipeline))
    }

    /// Restarts on `addr`, retrying while the old listener is still closing.
    fn restart(addr: SocketAddr, generation: i64) -> TestServer {
        for _ in 0..200 {
            if let Ok(listener) = StdListener::bind(addr) {
                return TestServer::serve(listener, generation, None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("could not rebind {addr}");
    }

    fn serve(listener: StdListener, generation: i64, pipeline: Option<Pipeline>) -> TestServer {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let pd = TestPd { generation, issued: Arc::default(), pipeline };
            tonic::transport::Server::builder()
                .add_service(TikvServer::new(TestTikv))
                .add_service(PdServer::new(pd))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        TestServer { addr, runtime: Some(runtime) }
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
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string().into()
}

/// A TCP server that answers every connection with pseudo-random bytes.
/// Stops when the returned flag is set (checked between connections).
fn garbage_server() -> (Arc<str>, Arc<AtomicBool>) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        // Bounded: at most ~20s, whatever the client does.
        for _ in 0..2000 {
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            match listener.accept() {
                Ok((mut conn, _)) => {
                    let garbage: Vec<u8> = (0..4096)
                        .map(|_| {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            seed as u8
                        })
                        .collect();
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
                    let _ = conn.write_all(&garbage);
                    let _ = conn.read(&mut [0u8; 1024]);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (addr.to_string().into(), stop)
}

// ------------------------------------------------------------------ client

fn store(addr: Arc<str>) -> Target {
    Target::Store { store_id: 1, addr }
}

fn raw_get(key: &'static str) -> Request {
    Request::Kv(KvRequest::RawGet(Box::new(RawGetRequest {
        key: key.into(),
        ..Default::default()
    })))
}

fn tso(count: u32) -> Request {
    Request::Pd(PdRequest::Tso(Box::new(TsoRequest { count, ..Default::default() })))
}

fn physical(response: Result<Response, RpcError>) -> i64 {
    match response {
        Ok(Response::Pd(PdResponse::Tso(r))) => r.timestamp.expect("timestamp").physical,
        other => panic!("expected a TSO response, got {other:?}"),
    }
}

struct Client {
    rt: TokioRuntime,
    transport: GrpcTransport,
}

impl Client {
    fn new() -> Client {
        let config = TransportConfig::default().connect_timeout(Duration::from_secs(2));
        Client { rt: TokioRuntime::new(), transport: GrpcTransport::new(config) }
    }

    fn deadline(&self, ms: u64) -> Instant {
        self.rt.now() + Duration::from_millis(ms)
    }

    async fn call(&self, target: &Target, request: Request, ms: u64) -> Result<Response, RpcError> {
        self.transport.call(target, request, self.deadline(ms)).await
    }
}

#[tokio::test]
async fn unary_calls_to_tikv_and_pd() {
    let server = TestServer::start(1);
    let client = Client::new();

    let response = client.call(&store(server.addr()), raw_get("k1"), 5000).await;
    match response {
        Ok(Response::Kv(KvResponse::RawGet(r))) => assert_eq!(&r.value[..], b"value-of-k1"),
        other => panic!("{other:?}"),
    }

    // The same address with a scheme shares nothing but works the same.
    let with_scheme: Arc<str> = format!("http://{}", server.addr).into();
    let pd = Target::Pd { addr: with_scheme };
    let members =
        client.call(&pd, Request::Pd(PdRequest::GetMembers(Default::default())), 5000).await;
    match members {
        Ok(Response::Pd(PdResponse::GetMembers(r))) => {
            assert_eq!(r.header.map(|h| h.cluster_id), Some(CLUSTER_ID));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unimplemented_method_is_typed() {
    let server = TestServer::start(1);
    let client = Client::new();
    let put = Request::Kv(KvRequest::RawPut(Box::default()));
    match client.call(&store(server.addr()), put, 5000).await {
        Err(RpcError::Unimplemented(_)) => {}
        other => panic!("{other:?}"),
    }
    // Unimplemented PD method on a server that does serve PD.
    let pd = Target::Pd { addr: server.addr() };
    let stores = Request::Pd(PdRequest::GetAllStores(Default::default()));
    assert!(matches!(client.call(&pd, stores, 5000).await, Err(RpcError::Unimplemented(_))));
}

#[tokio::test]
async fn slow_server_is_deadline_exceeded_on_time() {
    let server = TestServer::start(1);
    let client = Client::new();
    // Warm the connection so the deadline measures the call, not the dial.
    client.call(&store(server.addr()), raw_get("k"), 5000).await.unwrap();

    let started = std::time::Instant::now();
    let response = client.call(&store(server.addr()), raw_get("slow"), 300).await;
    let waited = started.elapsed();
    assert_eq!(response, Err(RpcError::DeadlineExceeded));
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_millis(1500), "{waited:?}");

    // A deadline already in the past fails without a call.
    let past = client.rt.now() - Duration::from_millis(1);
    let late = client.transport.call(&store(server.addr()), raw_get("k"), past).await;
    assert_eq!(late, Err(RpcError::DeadlineExceeded));
}

#[tokio::test]
async fn refused_connection_is_unavailable() {
    let client = Client::new();
    let started = std::time::Instant::now();
    let response = client.call(&store(dead_addr()), raw_get("k"), 5000).await;
    assert!(matches!(response, Err(RpcError::Unavailable(_))), "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // So is a TSO round to a dead PD.
    let pd = Target::Pd { addr: dead_addr() };
    let round = client.call(&pd, tso(1), 5000).await;
    assert!(matches!(round, Err(RpcError::Unavailable(_))), "{round:?}");
}

#[tokio::test]
async fn invalid_address_is_an_error() {
    let client = Client::new();
    let response = client.call(&store("not a uri".into()), raw_get("k"), 1000).await;
    assert!(matches!(response, Err(RpcError::Unavailable(m)) if m.contains("invalid address")));
}

#[tokio::test]
async fn garbage_server_is_a_typed_error() {
    let (addr, stop) = garbage_server();
    let client = Client::new();
    let started = std::time::Instant::now();
    let response = client.call(&store(addr.clone()), raw_get("k"), 3000).await;
    // An HTTP/2 protocol error on a connection is a transport failure.
    assert!(matches!(response, Err(RpcError::Unavailable(_))), "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    let round = client.call(&Target::Pd { addr }, tso(1), 3000).await;
    assert!(matches!(round, Err(RpcError::Unavailable(_))), "{round:?}");
    stop.store(true, Ordering::SeqCst);
}

#[tokio::test]
async fn tso_stream_serves_rounds_and_recovers_after_restart() {
    let server = TestServer::start(1);
    let addr = server.addr;
    let client = Client::new();
    let pd = Target::Pd { addr: server.addr() };

    for n in 1..=5 {
        assert_eq!(physical(client.call(&pd, tso(3), 2000).await), 1000 + n);
    }

    drop(server);
    let failed = client.call(&pd, tso(1), 2000).await;
    assert!(matches!(failed, Err(RpcError::Unavailable(_))), "{failed:?}");

    let _server = TestServer::restart(addr, 2);
    // The channel redials by itself; allow it a few tries.
    let mut recovered = None;
    for _ in 0..50 {
        match client.call(&pd, tso(1), 2000).await {
            Ok(response) => {
                recovered = Some(physical(Ok(response)));
                break;
            }
            Err(RpcError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(recovered, Some(2001), "the new server's first timestamp");
    assert_eq!(physical(client.call(&pd, tso(1), 2000).await), 2002);
}

#[tokio::test]
async fn tso_stream_closed_by_server_is_reopened() {
    let server = TestServer::start(3);
    let client = Client::new();
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

#[tokio::test]
async fn abandoned_tso_round_does_not_leak_into_the_next() {
    let server = TestServer::start(4);
    let client = Client::new();
    let pd = Target::Pd { addr: server.addr() };
    assert_eq!(physical(client.call(&pd, tso(1), 2000).await), 4001);

    // The server answers this round after 300ms; the caller gives up at 50ms
    // and drops the call, as `execute` does at an RPC's deadline.
    let abandoned = client.call(&pd, tso(SLOW_TSO_COUNT), 50).await;
    assert_eq!(abandoned, Err(RpcError::DeadlineExceeded));

    // The next round must get its own answer, not the late one: the late
    // answer echoes count 99, this round's echoes 7.
    match client.call(&pd, tso(7), 2000).await {
        Ok(Response::Pd(PdResponse::Tso(r))) => assert_eq!(r.count, 7),
        other => panic!("{other:?}"),
    }
}

// ------------------------------------------------------------------ execute

/// Reads one key from one store and returns its value.
struct GetOp {
    target: Target,
    key: &'static str,
    timeout: Duration,
    sent: bool,
    result: Option<Result<Vec<u8>, Error>>,
}

impl GetOp {
    fn new(addr: Arc<str>, key: &'static str, timeout: Duration) -> GetOp {
        GetOp { target: store(addr), key, timeout, sent: false, result: None }
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
        // Deadline relative to the first poll; `start` has just been called.
        let deadline = TokioRuntime::new().now() + self.timeout;
        Some(Rpc {
            id: RpcId(1),
            target: self.target.clone(),
            request: raw_get(self.key),
            deadline,
        })
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

#[tokio::test]
async fn execute_runs_an_operation_over_grpc() {
    let server = TestServer::start(1);
    let client = Client::new();
    let op = GetOp::new(server.addr(), "hello", Duration::from_secs(5));
    let (rt, transport) = (client.rt.clone(), client.transport.clone());
    // Spawned, so this also checks that `execute`'s future is `Send`.
    let value = tokio::spawn(async move { execute(op, &rt, &transport).await }).await.unwrap();
    assert_eq!(value.as_deref(), Ok(&b"value-of-hello"[..]));

    let started = std::time::Instant::now();
    let op = GetOp::new(server.addr(), "slow", Duration::from_millis(300));
    let late = execute(op, &client.rt, &client.transport).await;
    assert_eq!(late, Err(Error::Rpc(RpcError::DeadlineExceeded)));
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
}

#[tokio::test]
async fn execute_bounds_a_call_the_transport_never_answers() {
    // A transport that never answers: only the loop's own deadline ends it.
    struct BlackHole;
    impl Transport for BlackHole {
        fn call(
            &self,
            _: &Target,
            _: Request,
            _: Instant,
        ) -> futures::future::BoxFuture<'static, Result<Response, RpcError>> {
            Box::pin(futures::future::pending())
        }
    }
    let rt = TokioRuntime::new();
    let started = std::time::Instant::now();
    let op = GetOp::new("127.0.0.1:1".into(), "k", Duration::from_millis(100));
    let result = execute(op, &rt, &BlackHole).await;
    assert_eq!(result, Err(Error::Rpc(RpcError::DeadlineExceeded)));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(90) && waited < Duration::from_secs(1), "{waited:?}");
}

/// Three rounds are in flight on one stream at once (the server answers
/// only when it holds all three), and each gets the answer to its own
/// request: answers are matched to requests in sending order.
#[tokio::test]
async fn tso_rounds_are_pipelined_on_one_stream() {
    let server = TestServer::pipelined(5, Pipeline { hold: 3, swap: false });
    let client = Client::new();
    let pd = Target::Pd { addr: server.addr() };
    for _ in 0..2 {
        let (a, b, c) = futures::join!(
            client.call(&pd, tso(1), 2000),
            client.call(&pd, tso(2), 2000),
            client.call(&pd, tso(3), 2000),
        );
        for (answer, count) in [(a, 1), (b, 2), (c, 3)] {
            match answer {
                Ok(Response::Pd(PdResponse::Tso(r))) => assert_eq!(r.count, count),
                other => panic!("{other:?}"),
            }
        }
    }
}

/// A server answering two pipelined requests in swapped order breaks the
/// stream: both rounds fail with the retryable `Unavailable` (never with
/// each other's timestamps), and the next round opens a fresh stream.
#[tokio::test]
async fn reordered_tso_answers_break_the_stream() {
    let server = TestServer::pipelined(6, Pipeline { hold: 2, swap: true });
    let client = Client::new();
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
