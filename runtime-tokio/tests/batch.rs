//! `BatchCommands` streams of `GrpcTransport`: against the simulated
//! cluster, and against a tiny server that swallows requests.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tikv_core::Error;
use tikv_core::config::Config;
use tikv_core::rpc::{KvRequest, Request, RpcError, Target};
use tikv_driver::{Platform, Runtime, Transport};
use tikv_proto::kvrpcpb::RawGetRequest;
use tikv_proto::tikvpb::batch_commands_request::request::Cmd as ReqCmd;
use tikv_proto::tikvpb::batch_commands_response::Response as RespEntry;
use tikv_proto::tikvpb::batch_commands_response::response::Cmd as RespCmd;
use tikv_proto::tikvpb::tikv_server::{Tikv, TikvServer};
use tikv_proto::tikvpb::{BatchCommandsEmptyResponse, BatchCommandsRequest, BatchCommandsResponse};
use tikv_sim::server::{ServerOptions, SimServer};
use tikv_sim::{Cluster, ClusterConfig};
use tikv_tokio::{GrpcTransport, TokioRuntime, TransportConfig};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};

/// The tokio platform with every request unary.
struct Unary;

impl Platform for Unary {
    type Runtime = TokioRuntime;
    type Transport = GrpcTransport;

    fn build(_config: &Config) -> Result<(TokioRuntime, GrpcTransport), Error> {
        let transport = GrpcTransport::new(TransportConfig::default().batch_commands(false));
        Ok((TokioRuntime::new(), transport))
    }
}

async fn sim() -> SimServer {
    let cfg = ClusterConfig { split_keys: vec![b"k5".to_vec()], ..ClusterConfig::default() };
    SimServer::start(Cluster::new(cfg), ServerOptions::default()).await.expect("sim starts")
}

fn config(server: &SimServer) -> Config {
    Config::default()
        .with_pd_endpoints(server.pd_addrs())
        .with_read_timeout_short(Duration::from_secs(2))
        .with_read_timeout_medium(Duration::from_secs(2))
}

/// `n` concurrent tasks, each putting then getting its own key.
async fn put_get_concurrently<P: Platform>(client: &tikv_driver::RawClient<P>, n: usize, round: u32)
where
    tikv_driver::RawClient<P>: Clone,
{
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let key = format!("k{i:04}");
                let value = format!("v{i}-{round}");
                client.put(key.clone(), value.clone()).await.expect("put");
                let got = client.get(key).await.expect("get");
                assert_eq!(got.as_deref(), Some(value.as_bytes()));
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
}

// Batching itself and recovery from a store outage are in the runtime-
// generic RawKV suite (`tikv_tests::raw`), which runs under both runtimes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unary_switch_keeps_every_request_off_the_stream() {
    let server = sim().await;
    let unary = tikv_driver::RawClient::<Unary>::connect_with_config(config(&server))
        .await
        .expect("connect");
    put_get_concurrently(&unary, 64, 1).await;
    assert_eq!(server.batch_stats().requests, 0);
    server.shutdown().await;
}

// ------------------------------------------------- a server that never answers

/// Answers the stream's probe (`Empty`) and swallows every other request.
struct Swallow;

#[tonic::async_trait]
impl Tikv for Swallow {
    async fn batch_commands(
        &self,
        request: GrpcRequest<Streaming<BatchCommandsRequest>>,
    ) -> Result<GrpcResponse<tonic::codegen::BoxStream<BatchCommandsResponse>>, Status> {
        let answers = request.into_inner().filter_map(|message| async move {
            let message = message.ok()?;
            let mut out = BatchCommandsResponse::default();
            for (entry, id) in message.requests.into_iter().zip(message.request_ids) {
                if let Some(ReqCmd::Empty(e)) = entry.cmd {
                    let cmd =
                        RespCmd::Empty(Box::new(BatchCommandsEmptyResponse { test_id: e.test_id }));
                    out.responses.push(RespEntry { cmd: Some(cmd) });
                    out.request_ids.push(id);
                }
            }
            (!out.request_ids.is_empty()).then_some(Ok(out))
        });
        Ok(GrpcResponse::new(Box::pin(answers)))
    }
}

fn start_swallow() -> (SocketAddr, tokio::runtime::Runtime) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let _ = tonic::transport::Server::builder()
            .add_service(TikvServer::new(Swallow))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    (addr, rt)
}

fn raw_get() -> Request {
    Request::Kv(KvRequest::RawGet(Box::new(RawGetRequest {
        key: b"k".to_vec().into(),
        ..Default::default()
    })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_fail_retryably_when_the_stream_breaks() {
    let (addr, server_rt) = start_swallow();
    let rt = TokioRuntime::new();
    let transport = Arc::new(GrpcTransport::new(TransportConfig::default()));
    let target = Target::Store { store_id: 1, addr: addr.to_string().into(), forwarded_host: None };
    let deadline = rt.now() + Duration::from_secs(10);
    let calls: Vec<_> =
        (0..8).map(|_| tokio::spawn(transport.call(&target, raw_get(), deadline))).collect();
    // The requests are on the stream, unanswered; the server dies.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server_rt.shutdown_background();
    for call in calls {
        match call.await.expect("task") {
            Err(RpcError::Unavailable(m)) => assert!(m.contains("batch stream broken"), "{m}"),
            other => panic!("expected a broken stream, got {other:?}"),
        }
    }
    // During the re-creation backoff, requests go unary (and find nobody).
    match transport.call(&target, raw_get(), rt.now() + Duration::from_secs(2)).await {
        Err(RpcError::Unavailable(_)) => {}
        other => panic!("expected unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_ends_at_its_deadline() {
    let (addr, server_rt) = start_swallow();
    let rt = TokioRuntime::new();
    let transport = GrpcTransport::new(TransportConfig::default());
    let target = Target::Store { store_id: 1, addr: addr.to_string().into(), forwarded_host: None };
    let started = std::time::Instant::now();
    let result = transport.call(&target, raw_get(), rt.now() + Duration::from_millis(300)).await;
    assert_eq!(result.map(|r| r.name()), Err(RpcError::DeadlineExceeded));
    assert!(started.elapsed() < Duration::from_secs(2));
    server_rt.shutdown_background();
}

/// The tokio platform whose streams are recycled after 500 ms idle.
struct QuickIdle;

impl Platform for QuickIdle {
    type Runtime = TokioRuntime;
    type Transport = GrpcTransport;

    fn build(_config: &Config) -> Result<(TokioRuntime, GrpcTransport), Error> {
        let config = TransportConfig::default().batch_idle_timeout(Duration::from_millis(500));
        Ok((TokioRuntime::new(), GrpcTransport::new(config)))
    }
}

/// client-go's idle recycling: a store's streams close after the idle
/// timeout and the next request opens new ones (and succeeds); streams
/// with steady traffic are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_are_recycled_and_busy_ones_kept() {
    let server = sim().await;
    let client = tikv_driver::RawClient::<QuickIdle>::connect_with_config(config(&server))
        .await
        .expect("connect");
    // The server sees a stream when its first message arrives; the put
    // rides whichever stream answered its probe first, so wait for all.
    let streams_reach = |n: u64| {
        let server = &server;
        async move {
            for _ in 0..200 {
                if server.batch_stats().streams >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            server.batch_stats().streams
        }
    };
    client.put("k1".to_owned(), "v1".to_owned()).await.expect("put");
    let opened = streams_reach(4).await;
    assert_eq!(opened, 4, "one store touched: its four streams");
    // Busy: a request every 50 ms for well over the timeout.
    for _ in 0..20 {
        assert!(client.get("k1".to_owned()).await.expect("get").is_some());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.batch_stats().streams, opened, "busy streams are kept");
    // Idle past the timeout: the next request reopens the streams.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(client.get("k1".to_owned()).await.expect("get").as_deref(), Some(&b"v1"[..]));
    assert_eq!(streams_reach(opened + 4).await, opened + 4, "recycled, then reopened");
}
