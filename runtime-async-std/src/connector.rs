//! [`AsyncStdConnector`]: hyper HTTP/2 connections on async-io, async-io's
//! timer and async-std's spawner for the shared
//! [`tikv_grpc::GrpcTransport`].

use std::future::Future;
use std::sync::Arc;

use tikv_core::rpc::RpcError;
use tikv_core::time::Instant;
use tikv_grpc::{Connector, TransportConfig};

use crate::clock;
use crate::conn::{Channel, Pool};
use crate::runtime::AsyncStdRuntime;

/// `tikv_driver::Transport` over gRPC on async-io: [`tikv_grpc::GrpcTransport`]
/// (see there for paths, deadlines and error rules) with the tonic stubs
/// running over hyper HTTP/2 client connections on async-io TCP streams. No
/// tokio runtime is involved.
///
/// Calls can be awaited on any executor (async-std, smol, a plain
/// `block_on`): connection tasks run on async-std's executor and I/O on
/// async-io's reactor. Dropping the last clone closes the connections.
pub type GrpcTransport = tikv_grpc::GrpcTransport<AsyncStdConnector>;

/// The async-io side of [`GrpcTransport`]: one hyper HTTP/2 connection per
/// address and connection number, dialled on first use (within
/// [`TransportConfig::connect_timeout`]) and shared by every concurrent
/// call, redialled after it breaks; async-io's timer; async-std's spawner.
#[derive(Debug, Default)]
pub struct AsyncStdConnector {
    pool: Pool,
    rt: AsyncStdRuntime,
}

impl Connector for AsyncStdConnector {
    type Channel = Channel;
    type Runtime = AsyncStdRuntime;
    type Sleep = async_io::Timer;

    fn runtime(&self) -> &AsyncStdRuntime {
        &self.rt
    }

    fn sleep_until(&self, deadline: Instant) -> async_io::Timer {
        match clock::to_std(deadline) {
            Some(at) => async_io::Timer::at(at),
            None => async_io::Timer::never(),
        }
    }

    fn channel(
        &self,
        addr: &Arc<str>,
        conn: usize,
        config: &TransportConfig,
    ) -> impl Future<Output = Result<Channel, RpcError>> + Send {
        self.pool.channel(addr, conn, config)
    }
}
