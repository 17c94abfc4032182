//! What only the async-std side has: its connection pool (one connection
//! shared, redialled after the server dies, closed with the transport),
//! hyper's keepalive on async-io, smol's executor, and no tokio runtime
//! anywhere. The rules every runtime's transport follows are the transport
//! suite's (`tikv_tests::transport`, run under both runtimes).
//!
//! The gRPC servers here are the tonic-generated server stubs served by
//! hyper's HTTP/2 server on async-io sockets: no tokio runtime exists on
//! either side (checked by `no_tokio_runtime_anywhere`). Every task of a
//! server is abortable, so dropping a server closes all its connections at
//! once, as a crashed process would, and can be frozen, as a hung one.

use std::future::Future;
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
use tikv_core::rpc::{KvRequest, PdRequest, PdResponse, Request, Response, RpcError, Target};
use tikv_core::time::Instant;
use tikv_driver::{Runtime, Transport};
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
/// closes the stream when asked for a count of 0.
struct TestPd {
    generation: i64,
    issued: Arc<AtomicI64>,
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
        TestServer::serve(StdListener::bind("127.0.0.1:0").unwrap(), generation)
    }

    /// Restarts on `addr`, retrying while the old listener is still closing.
    fn restart(addr: SocketAddr, generation: i64) -> TestServer {
        for _ in 0..200 {
            if let Ok(listener) = StdListener::bind(addr) {
                return TestServer::serve(listener, generation);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("could not rebind {addr}");
    }

    fn serve(listener: StdListener, generation: i64) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let listener = Async::new(listener).unwrap();
        let tasks = Tasks::default();
        let open = Arc::new(AtomicUsize::new(0));
        let tikv = TikvServer::new(TestTikv);
        let pd = PdServer::new(TestPd { generation, issued: Arc::default() });
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

// ------------------------------------------------------------------ client

fn store(addr: Arc<str>) -> Target {
    Target::Store { store_id: 1, addr, forwarded_host: None }
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
