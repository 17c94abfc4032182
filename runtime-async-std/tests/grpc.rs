//! `GrpcTransport` and `AsyncStdRuntime` against small servers on loopback.
//!
//! The gRPC servers here are the tonic-generated server stubs served by
//! hyper's HTTP/2 server on async-io sockets: no tokio runtime exists on
//! either side (checked by `no_tokio_runtime_anywhere`). Every task of a
//! server is abortable, so dropping a server closes all its connections at
//! once, as a crashed process would. The misbehaving peers (garbage, stall,
//! hang-up) are plain TCP listeners.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_io::{Async, Timer};
use futures::StreamExt;
use futures::future::{AbortHandle, FutureExt, abortable};
use tikv_async_std::{AsyncStdRuntime, GrpcTransport, TransportConfig};
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
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};
use tower_service::Service as _;

const CLUSTER_ID: u64 = 42;
const SLOW_TSO_COUNT: u32 = 99;

fn block_on<F: Future>(f: F) -> F::Output {
    async_std::task::block_on(f)
}

// ------------------------------------------------------------------ services

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
            Timer::after(Duration::from_secs(10)).await;
        }
        let mut value = b"value-of-".to_vec();
        value.extend_from_slice(&key);
        Ok(GrpcResponse::new(RawGetResponse { value: value.into(), ..Default::default() }))
    }
}

/// `get_members` answers with the cluster id; `tso` answers each request
/// with `physical = generation * 1000 + n` (n counts from 1 per server) and
/// the requested count, takes 300ms for a count of [`SLOW_TSO_COUNT`], and
/// closes the stream when asked for a count of 0. With `hold` above 1 it
/// instead answers nothing until it holds that many requests, then answers
/// them all in order.
struct TestPd {
    generation: i64,
    issued: Arc<AtomicI64>,
    hold: usize,
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
        if self.hold > 1 {
            let answers = request.into_inner().chunks(self.hold).flat_map(move |held| {
                let answers: Vec<Result<TsoResponse, Status>> = held
                    .into_iter()
                    .map(|r| {
                        let r = r?;
                        let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                        let timestamp =
                            Timestamp { physical: generation * 1000 + n, ..Default::default() };
                        Ok(TsoResponse {
                            header: header(),
                            count: r.count,
                            timestamp: Some(timestamp),
                        })
                    })
                    .collect();
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
                        Timer::after(Duration::from_millis(300)).await;
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

// ------------------------------------------------------------------ server glue

/// Server-side I/O for hyper (the crate's own adapter is private; this one
/// only has to be correct, not fast).
struct ServerIo(Async<TcpStream>);

impl hyper::rt::Read for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut scratch = vec![0u8; buf.remaining().min(16 * 1024)];
        let n = futures::ready!(futures::io::AsyncRead::poll_read(
            Pin::new(&mut self.get_mut().0),
            cx,
            &mut scratch
        ))?;
        buf.put_slice(&scratch[..n]);
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        futures::io::AsyncWrite::poll_write(Pin::new(&mut self.get_mut().0), cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures::io::AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().0), cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures::io::AsyncWrite::poll_close(Pin::new(&mut self.get_mut().0), cx)
    }
}

/// Spawns a server's tasks on async-std, keeping a handle to abort each,
/// and a switch that freezes them all (they stop being polled but keep
/// their sockets open, like a hung process).
#[derive(Clone, Default)]
struct Tasks {
    handles: Arc<Mutex<Vec<AbortHandle>>>,
    frozen: Arc<AtomicBool>,
}

/// A future that is not polled while its server is frozen.
struct Freezable<F> {
    inner: Pin<Box<F>>,
    frozen: Arc<AtomicBool>,
}

impl<F: Future> Future for Freezable<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.frozen.load(Ordering::SeqCst) {
            // Never woken again: the task just sits there, holding its socket.
            return Poll::Pending;
        }
        self.inner.as_mut().poll(cx)
    }
}

impl Tasks {
    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let fut = Freezable { inner: Box::pin(fut), frozen: self.frozen.clone() };
        let (fut, handle) = abortable(fut);
        self.handles.lock().unwrap().push(handle);
        drop(async_std::task::spawn(fut.map(drop)));
    }

    fn abort_all(&self) {
        for handle in self.handles.lock().unwrap().drain(..) {
            handle.abort();
        }
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

impl<F> hyper::rt::Executor<F> for Tasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.spawn(fut.map(drop));
    }
}

/// A `Tikv` + `PD` server; dropping it kills it.
struct TestServer {
    addr: SocketAddr,
    tasks: Tasks,
    /// Connections being served right now.
    open: Arc<AtomicUsize>,
}

impl TestServer {
    fn start(generation: i64) -> TestServer {
        TestServer::serve(StdListener::bind("127.0.0.1:0").unwrap(), generation, 1)
    }

    /// A server whose TSO answers only once it holds `hold` requests.
    fn holding(generation: i64, hold: usize) -> TestServer {
        TestServer::serve(StdListener::bind("127.0.0.1:0").unwrap(), generation, hold)
    }

    /// Restarts on `addr`, retrying while the old listener is still closing.
    fn restart(addr: SocketAddr, generation: i64) -> TestServer {
        for _ in 0..200 {
            if let Ok(listener) = StdListener::bind(addr) {
                return TestServer::serve(listener, generation, 1);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("could not rebind {addr}");
    }

    fn serve(listener: StdListener, generation: i64, hold: usize) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let listener = Async::new(listener).unwrap();
        let tasks = Tasks::default();
        let open = Arc::new(AtomicUsize::new(0));
        let tikv = TikvServer::new(TestTikv);
        let pd = PdServer::new(TestPd { generation, issued: Arc::default(), hold });
        let (spawner, counter) = (tasks.clone(), open.clone());
        tasks.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tikv, pd) = (tikv.clone(), pd.clone());
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let (mut tikv, mut pd) = (tikv.clone(), pd.clone());
                    async move {
                        if req.uri().path().starts_with("/pdpb.PD/") {
                            pd.call(req).await
                        } else {
                            tikv.call(req).await
                        }
                    }
                });
                let connection = hyper::server::conn::http2::Builder::new(spawner.clone())
                    .serve_connection(ServerIo(stream), service);
                let counter = counter.clone();
                counter.fetch_add(1, Ordering::SeqCst);
                spawner.spawn(async move {
                    let _ = connection.await;
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        TestServer { addr, tasks, open }
    }

    fn addr(&self) -> Arc<str> {
        self.addr.to_string().into()
    }

    /// Waits (bounded) until no connection is open, returning how many are.
    fn wait_for_no_connections(&self) -> usize {
        for _ in 0..300 {
            if self.open.load(Ordering::SeqCst) == 0 {
                return 0;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.tasks.abort_all();
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

/// A plain TCP peer on its own thread, running `handle` on each accepted
/// connection until the returned flag is set (checked between connections,
/// and at most ~20s in all, whatever the client does).
fn raw_server(handle: impl Fn(TcpStream) + Send + 'static) -> (Arc<str>, Arc<AtomicBool>) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        for _ in 0..2000 {
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            match listener.accept() {
                Ok((conn, _)) => {
                    conn.set_nonblocking(false).unwrap();
                    handle(conn);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (addr.to_string().into(), stop)
}

/// Answers every connection with pseudo-random bytes.
fn garbage_server() -> (Arc<str>, Arc<AtomicBool>) {
    let seed = Mutex::new(0x9e37_79b9_7f4a_7c15_u64);
    raw_server(move |mut conn| {
        let mut seed = seed.lock().unwrap();
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
fn hang_up_server() -> (Arc<str>, Arc<AtomicBool>) {
    raw_server(|mut conn| {
        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
        let _ = conn.read(&mut [0u8; 4096]);
    })
}

/// Accepts connections and never answers or closes them (until stopped).
fn stalled_server() -> (Arc<str>, Arc<AtomicBool>) {
    let held = Mutex::new(Vec::new());
    raw_server(move |conn| held.lock().unwrap().push(conn))
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
    rt: AsyncStdRuntime,
    transport: GrpcTransport,
}

impl Client {
    fn new() -> Client {
        Client::with_config(TransportConfig::default().connect_timeout(Duration::from_secs(2)))
    }

    /// These tests are about unary calls and the connection pool, so every
    /// request goes unary (the `BatchCommands` path has its own suite test,
    /// `tikv_tests::raw::requests_ride_batch_streams_and_survive_a_store_outage`).
    fn with_config(config: TransportConfig) -> Client {
        let transport = GrpcTransport::new(config.batch_commands(false));
        Client { rt: AsyncStdRuntime::new(), transport }
    }

    fn deadline(&self, ms: u64) -> Instant {
        self.rt.now() + Duration::from_millis(ms)
    }

    async fn call(&self, target: &Target, request: Request, ms: u64) -> Result<Response, RpcError> {
        self.transport.call(target, request, self.deadline(ms)).await
    }
}

#[test]
fn unary_calls_to_tikv_and_pd() {
    let server = TestServer::start(1);
    let client = Client::new();
    block_on(async {
        let response = client.call(&store(server.addr()), raw_get("k1"), 5000).await;
        match response {
            Ok(Response::Kv(KvResponse::RawGet(r))) => assert_eq!(&r.value[..], b"value-of-k1"),
            other => panic!("{other:?}"),
        }

        // The same address with a scheme works the same.
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
    });
}

#[test]
fn concurrent_calls_share_one_connection() {
    let server = TestServer::start(1);
    let client = Client::new();
    block_on(async {
        let target = store(server.addr());
        let calls = (0..32).map(|_| client.call(&target, raw_get("k"), 5000));
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        client.call(&target, raw_get("k"), 5000).await.unwrap();
    });
    assert_eq!(server.open.load(Ordering::SeqCst), 1, "one HTTP/2 connection per address");
}

#[test]
fn unimplemented_method_is_typed() {
    let server = TestServer::start(1);
    let client = Client::new();
    block_on(async {
        let put = Request::Kv(KvRequest::RawPut(Box::default()));
        match client.call(&store(server.addr()), put, 5000).await {
            Err(RpcError::Unimplemented(_)) => {}
            other => panic!("{other:?}"),
        }
        let pd = Target::Pd { addr: server.addr() };
        let stores = Request::Pd(PdRequest::GetAllStores(Default::default()));
        let result = client.call(&pd, stores, 5000).await;
        assert!(matches!(result, Err(RpcError::Unimplemented(_))), "{result:?}");
    });
}

#[test]
fn slow_server_is_deadline_exceeded_on_time() {
    let server = TestServer::start(1);
    let client = Client::new();
    block_on(async {
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

        // The abandoned call did not break the connection.
        client.call(&store(server.addr()), raw_get("k"), 5000).await.unwrap();
    });
}

#[test]
fn stalled_peer_is_deadline_exceeded_on_time() {
    let (addr, stop) = stalled_server();
    let client = Client::new();
    block_on(async {
        let started = std::time::Instant::now();
        let response = client.call(&store(addr.clone()), raw_get("k"), 300).await;
        let waited = started.elapsed();
        assert_eq!(response, Err(RpcError::DeadlineExceeded));
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_millis(1500), "{waited:?}");
        let round = client.call(&Target::Pd { addr }, tso(1), 300).await;
        assert_eq!(round, Err(RpcError::DeadlineExceeded));
    });
    stop.store(true, Ordering::SeqCst);
}

#[test]
fn refused_connection_is_unavailable() {
    let client = Client::new();
    block_on(async {
        let started = std::time::Instant::now();
        let response = client.call(&store(dead_addr()), raw_get("k"), 5000).await;
        assert!(matches!(response, Err(RpcError::Unavailable(_))), "{response:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

        // So is a TSO round to a dead PD.
        let pd = Target::Pd { addr: dead_addr() };
        let round = client.call(&pd, tso(1), 5000).await;
        assert!(matches!(round, Err(RpcError::Unavailable(_))), "{round:?}");
    });
}

#[test]
fn invalid_address_is_an_error() {
    let client = Client::new();
    block_on(async {
        let response = client.call(&store("not a uri".into()), raw_get("k"), 1000).await;
        assert!(matches!(response, Err(RpcError::Unavailable(m)) if m.contains("invalid address")));
    });
}

#[test]
fn garbage_server_is_a_typed_error() {
    let (addr, stop) = garbage_server();
    let client = Client::new();
    block_on(async {
        let started = std::time::Instant::now();
        let response = client.call(&store(addr.clone()), raw_get("k"), 3000).await;
        // An HTTP/2 protocol error on a connection is a transport failure.
        assert!(matches!(response, Err(RpcError::Unavailable(_))), "{response:?}");
        assert!(started.elapsed() < Duration::from_secs(3));

        let round = client.call(&Target::Pd { addr }, tso(1), 3000).await;
        assert!(matches!(round, Err(RpcError::Unavailable(_))), "{round:?}");
    });
    stop.store(true, Ordering::SeqCst);
}

#[test]
fn peer_hanging_up_is_unavailable() {
    let (addr, stop) = hang_up_server();
    let client = Client::new();
    block_on(async {
        for _ in 0..3 {
            // Each call redials, and each connection is closed under it.
            let response = client.call(&store(addr.clone()), raw_get("k"), 3000).await;
            assert!(matches!(response, Err(RpcError::Unavailable(_))), "{response:?}");
        }
    });
    stop.store(true, Ordering::SeqCst);
}

#[test]
fn server_dying_mid_call_is_unavailable_and_the_next_call_redials() {
    let server = TestServer::start(1);
    let addr = server.addr;
    let client = Client::new();
    block_on(async {
        let pd = Target::Pd { addr: server.addr() };
        assert_eq!(physical(client.call(&pd, tso(1), 2000).await), 1001);
        // The slow round is in flight when the server dies under it.
        let slow = client.call(&pd, tso(SLOW_TSO_COUNT), 5000);
        let kill = async {
            Timer::after(Duration::from_millis(100)).await;
            drop(server);
        };
        let (round, ()) = futures::join!(slow, kill);
        assert!(matches!(round, Err(RpcError::Unavailable(_))), "{round:?}");
        // A unary call on the dead address is also refused.
        let get = client.call(&store(addr.to_string().into()), raw_get("k"), 2000).await;
        assert!(matches!(get, Err(RpcError::Unavailable(_))), "{get:?}");

        let _server = TestServer::restart(addr, 2);
        let get = client.call(&store(addr.to_string().into()), raw_get("k"), 2000).await;
        assert!(get.is_ok(), "redialled: {get:?}");
    });
}

/// Three rounds are in flight on one stream at once (the server answers
/// only when it holds all three; the stream's reader runs on async-std's
/// spawner), and each gets the answer to its own request.
#[test]
fn tso_rounds_are_pipelined_on_one_stream() {
    let server = TestServer::holding(5, 3);
    let client = Client::new();
    let pd = Target::Pd { addr: server.addr() };
    block_on(async {
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
    });
}

#[test]
fn tso_stream_serves_rounds_and_recovers_after_restart() {
    let server = TestServer::start(1);
    let addr = server.addr;
    let client = Client::new();
    let pd = Target::Pd { addr: server.addr() };
    block_on(async {
        for n in 1..=5 {
            assert_eq!(physical(client.call(&pd, tso(3), 2000).await), 1000 + n);
        }
    });
    drop(server);
    block_on(async {
        let failed = client.call(&pd, tso(1), 2000).await;
        assert!(matches!(failed, Err(RpcError::Unavailable(_))), "{failed:?}");
    });

    let _server = TestServer::restart(addr, 2);
    block_on(async {
        // The first call after the restart redials.
        let mut recovered = None;
        for _ in 0..50 {
            match client.call(&pd, tso(1), 2000).await {
                Ok(response) => {
                    recovered = Some(physical(Ok(response)));
                    break;
                }
                Err(RpcError::Unavailable(_)) => {
                    Timer::after(Duration::from_millis(20)).await;
                }
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(recovered, Some(2001), "the new server's first timestamp");
        assert_eq!(physical(client.call(&pd, tso(1), 2000).await), 2002);
    });
}

#[test]
fn tso_stream_closed_by_server_is_reopened() {
    let server = TestServer::start(3);
    let client = Client::new();
    let pd = Target::Pd { addr: server.addr() };
    block_on(async {
        assert_eq!(physical(client.call(&pd, tso(1), 2000).await), 3001);
        // count 0 makes the test server end the stream.
        let closed = client.call(&pd, tso(0), 2000).await;
        assert!(
            matches!(closed, Err(RpcError::Unavailable(ref m)) if m.contains("closed")),
            "{closed:?}"
        );
        assert_eq!(physical(client.call(&pd, tso(1), 2000).await), 3002);
    });
}

#[test]
fn abandoned_tso_round_does_not_leak_into_the_next() {
    let server = TestServer::start(4);
    let client = Client::new();
    let pd = Target::Pd { addr: server.addr() };
    block_on(async {
        assert_eq!(physical(client.call(&pd, tso(1), 2000).await), 4001);
        // The server answers this round after 300ms; the caller gives up at
        // 50ms and drops the call, as `execute` does at an RPC's deadline.
        let abandoned = client.call(&pd, tso(SLOW_TSO_COUNT), 50).await;
        assert_eq!(abandoned, Err(RpcError::DeadlineExceeded));
        // The next round gets its own answer (count 7), not the late one (99).
        match client.call(&pd, tso(7), 2000).await {
            Ok(Response::Pd(PdResponse::Tso(r))) => assert_eq!(r.count, 7),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn dropping_the_transport_closes_its_connections() {
    let server = TestServer::start(5);
    let client = Client::new();
    block_on(async {
        client.call(&store(server.addr()), raw_get("k"), 2000).await.unwrap();
        let pd = Target::Pd { addr: format!("http://{}", server.addr).into() };
        assert_eq!(physical(client.call(&pd, tso(1), 2000).await), 5001);
    });
    assert!(server.open.load(Ordering::SeqCst) >= 1);
    // The connection tasks own the sockets: if one outlived the transport,
    // its connection would stay open.
    drop(client);
    assert_eq!(server.wait_for_no_connections(), 0, "connections left open");
}

#[test]
fn keepalive_detects_a_peer_that_stopped_answering() {
    let server = TestServer::start(6);
    let config = TransportConfig::default()
        .connect_timeout(Duration::from_secs(2))
        .keepalive(Duration::from_millis(100), Duration::from_millis(200));
    let client = Client::with_config(config);
    block_on(async {
        client.call(&store(server.addr()), raw_get("k"), 2000).await.unwrap();
        // Idle for a while: pings are answered, the connection stays.
        Timer::after(Duration::from_millis(500)).await;
        client.call(&store(server.addr()), raw_get("k"), 2000).await.unwrap();
        assert_eq!(server.open.load(Ordering::SeqCst), 1, "still the first connection");
    });
    // Freeze the server without closing its sockets: pings go unanswered,
    // and so does the call below.
    server.tasks.freeze();
    block_on(async {
        // Keepalive declares the connection dead after interval + timeout,
        // failing the call on it long before its 5s deadline would.
        let started = std::time::Instant::now();
        let result = client.call(&store(server.addr()), raw_get("k"), 5000).await;
        assert!(matches!(result, Err(RpcError::Unavailable(_))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    });
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
        let deadline = AsyncStdRuntime::new().now() + self.timeout;
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

#[test]
fn execute_runs_an_operation_over_grpc() {
    let server = TestServer::start(1);
    let client = Client::new();
    let op = GetOp::new(server.addr(), "hello", Duration::from_secs(5));
    let (rt, transport) = (client.rt.clone(), client.transport.clone());
    // Spawned, so this also checks that `execute`'s future is `Send`.
    let value = block_on(async_std::task::spawn(async move { execute(op, &rt, &transport).await }));
    assert_eq!(value.as_deref(), Ok(&b"value-of-hello"[..]));

    let started = std::time::Instant::now();
    let op = GetOp::new(server.addr(), "slow", Duration::from_millis(300));
    let late = block_on(execute(op, &client.rt, &client.transport));
    assert_eq!(late, Err(Error::Rpc(RpcError::DeadlineExceeded)));
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
}

#[test]
fn calls_work_on_smols_executor() {
    let server = TestServer::start(7);
    let client = Client::new();
    let pd = Target::Pd { addr: server.addr() };
    let physical_ts = smol::block_on(async { physical(client.call(&pd, tso(1), 2000).await) });
    assert_eq!(physical_ts, 7001);
}

#[test]
fn no_tokio_runtime_anywhere() {
    let server = TestServer::start(8);
    let client = Client::new();
    block_on(async {
        assert!(tokio_absent(), "inside the async-std executor");
        client.call(&store(server.addr()), raw_get("k"), 2000).await.unwrap();
        let checked = async_std::task::spawn(async { tokio_absent() }).await;
        assert!(checked, "inside an async-std task");
    });
    let names = thread_names();
    assert!(!names.is_empty());
    assert!(!names.iter().any(|n| n.starts_with("tokio")), "{names:?}");
}

/// No tokio runtime is reachable from here, and no tokio worker thread
/// exists in the process. tokio is in the dependency graph (hyper and h2
/// use its I/O traits, the sim server its runtime), but nothing on this
/// side may start or enter a runtime.
fn tokio_absent() -> bool {
    tokio::runtime::Handle::try_current().is_err()
        && thread_names().iter().all(|n| !n.starts_with("tokio"))
}

/// Names of this process's threads (Linux).
fn thread_names() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return vec!["<no procfs>".into()] };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}
