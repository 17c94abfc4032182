//! Resolving a keyspace name with PD's `Keyspace.LoadKeyspace`.

use std::sync::Arc;

use tikv_proto::keyspacepb;

use crate::backoff::Backoffer;
use crate::error::Error;
use crate::op::Operation;
use crate::pd::{PdCall, PdState};
use crate::rpc::{PdRequest, PdResponse, Response, Rpc, RpcError, RpcId};
use crate::time::{Duration, Instant};

/// Loads a keyspace's metadata by name (client-go resolves the keyspace
/// this way before building the API V2 codec; an empty name means
/// `DEFAULT`).
#[derive(Debug)]
pub struct LoadKeyspace {
    name: String,
    call: PdCall,
    result: Option<Result<keyspacepb::KeyspaceMeta, Error>>,
}

impl LoadKeyspace {
    /// Loads `name`.
    pub fn new(pd: Arc<PdState>, name: &str, timeout: Duration, backoffer: Backoffer) -> Self {
        let name = if name.is_empty() { "DEFAULT".to_string() } else { name.to_string() };
        let request = PdRequest::LoadKeyspace(Box::new(keyspacepb::LoadKeyspaceRequest {
            name: name.clone(),
            ..Default::default()
        }));
        LoadKeyspace { name, call: PdCall::new(pd, request, timeout, backoffer), result: None }
    }

    fn check(&mut self) {
        if let Some(outcome) = self.call.poll_result() {
            self.result = Some(match outcome {
                Ok(PdResponse::LoadKeyspace(r)) => r.keyspace.ok_or_else(|| Error::Keyspace {
                    name: self.name.clone(),
                    reason: "PD returned no keyspace".into(),
                }),
                Ok(other) => Err(Error::malformed(format!("unexpected {}", other.name()))),
                Err(Error::Pd { message, .. }) => {
                    Err(Error::Keyspace { name: self.name.clone(), reason: message })
                }
                Err(e) => Err(e),
            });
        }
    }
}

impl Operation for LoadKeyspace {
    type Output = keyspacepb::KeyspaceMeta;

    fn start(&mut self, now: Instant) {
        self.call.start(now);
        self.check();
    }
    fn poll_rpc(&mut self) -> Option<Rpc> {
        self.call.poll_rpc()
    }
    fn on_response(&mut self, id: RpcId, response: Result<Response, RpcError>, now: Instant) {
        self.call.on_response(id, response, now);
        self.check();
    }
    fn on_timeout(&mut self, now: Instant) {
        self.call.on_timeout(now);
        self.check();
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.call.poll_timeout()
    }
    fn poll_result(&mut self) -> Option<Result<keyspacepb::KeyspaceMeta, Error>> {
        self.result.take()
    }
}
