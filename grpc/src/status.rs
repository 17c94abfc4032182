//! gRPC statuses to [`RpcError`]s.

use std::error::Error as _;

use tikv_core::rpc::RpcError;
use tonic::{Code, Status};

/// The prefix of prost's `DecodeError` message, which tonic turns into an
/// `Internal` status without keeping the error itself.
const DECODE_PREFIX: &str = "failed to decode Protobuf message";

/// Maps a status from a tonic call to the core's error.
///
/// A status the server sent has no `source`; one that tonic made up from a
/// local failure (the connection was reset, refused or closed under the
/// call, hyper saw an HTTP/2 protocol error from a garbage peer) carries its
/// cause as the source. The latter are transport failures whatever code
/// tonic picked (it calls a connection closed mid-call `Cancelled` when its
/// hyper mapping is compiled in), so they become `Unavailable`: the core
/// treats them as "this store is unreachable", not as a server verdict;
/// except TLS failures, which are [`RpcError::Tls`].
pub fn to_rpc_error(status: Status) -> RpcError {
    let message = status.message();
    match status.code() {
        Code::DeadlineExceeded => RpcError::DeadlineExceeded,
        Code::Internal if message.starts_with(DECODE_PREFIX) => {
            RpcError::Decode(message.to_owned())
        }
        // A refused certificate or a TLS alert: retrying would be refused
        // the same way.
        _ if crate::tls::tls_failure(&status).is_some() => RpcError::Tls(describe(&status)),
        _ if status.source().is_some() => RpcError::Unavailable(describe(&status)),
        Code::Unavailable => RpcError::Unavailable(describe(&status)),
        Code::Cancelled => RpcError::Canceled,
        Code::Unimplemented => RpcError::Unimplemented(message.to_owned()),
        code => RpcError::Status { code: code as i32, message: message.to_owned() },
    }
}

/// The status message followed by its source chain, since the message for
/// local failures is often just the outermost layer's.
fn describe(status: &Status) -> String {
    let mut out = status.message().to_owned();
    let mut source = status.source();
    while let Some(err) = source {
        let text = err.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = err.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_statuses_keep_their_code() {
        assert_eq!(
            to_rpc_error(Status::unimplemented("nope")),
            RpcError::Unimplemented("nope".into())
        );
        assert_eq!(
            to_rpc_error(Status::internal("boom")),
            RpcError::Status { code: 13, message: "boom".into() }
        );
        assert_eq!(to_rpc_error(Status::deadline_exceeded("late")), RpcError::DeadlineExceeded);
        assert_eq!(to_rpc_error(Status::cancelled("x")), RpcError::Canceled);
        assert_eq!(to_rpc_error(Status::unavailable("down")), RpcError::Unavailable("down".into()));
    }

    #[test]
    fn decode_failures_are_decode_errors() {
        let status = Status::internal(format!("{DECODE_PREFIX}: invalid wire type"));
        assert!(matches!(to_rpc_error(status), RpcError::Decode(m) if m.contains("wire type")));
    }

    #[test]
    fn local_failures_are_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let status = Status::from_error(Box::new(io));
        match to_rpc_error(status) {
            RpcError::Unavailable(m) => assert!(m.contains("reset by peer"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Whatever code tonic gave it.
        let closed = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed early");
        let mut status = Status::cancelled("connection closed");
        status.set_source(std::sync::Arc::new(closed));
        match to_rpc_error(status) {
            RpcError::Unavailable(m) => assert!(m.contains("closed early"), "{m}"),
            other => panic!("{other:?}"),
        }
        let status = Status::cancelled("connection closed");
        assert_eq!(to_rpc_error(status), RpcError::Canceled, "no source: the server said so");
    }
}
