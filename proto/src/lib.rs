//! kvproto wire messages for the TiKV client.
//!
//! The `.proto` files under `proto/proto/` are our own trimmed copies of
//! `pingcap/kvproto` (commit `b6cdca19`): every message, field number, type and
//! enum value we declare is identical to upstream, checked against the upstream
//! table `kvproto-schema.tsv` by the `schema` test of `tikv-proto-gen`. Services
//! are trimmed to the methods a client calls.
//!
//! The Rust code under `src/generated/` is produced by `cargo run -p
//! tikv-proto-gen` (pure Rust: `protox` + `tonic-prost-build`, no system
//! `protoc`) and committed. Byte fields are [`bytes::Bytes`]. The tonic client
//! and server modules (`tikvpb::tikv_client`, `pdpb::pd_server`, ...) exist only
//! with the `grpc` feature, so the sans-IO core compiles without tonic.
//!
//! ```
//! use tikv_proto::kvrpcpb::RawGetRequest;
//! let req = RawGetRequest { key: "k".into(), cf: "default".into(), ..Default::default() };
//! assert_eq!(&req.key[..], b"k");
//! ```

#![allow(missing_docs, unreachable_pub, clippy::all)]

macro_rules! generated {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$attr])*
            pub mod $name {
                include!(concat!("generated/", stringify!($name), ".rs"));
            }
        )*
    };
}

generated!(
    /// `apipb`: keyspace identity (API V3).
    apipb,
    /// `encryptionpb`: encryption metadata referenced by `metapb`.
    encryptionpb,
    /// `metapb`: regions, peers, stores, epochs.
    metapb,
    /// `errorpb`: region errors returned by TiKV.
    errorpb,
    /// `deadlock`: wait-for entries carried by deadlock key errors.
    deadlock,
    /// `tracepb`: trace context carried in `kvrpcpb::Context`.
    tracepb,
    /// `resource_manager`: consumption reports carried by responses.
    resource_manager,
    /// `kvrpcpb`: every TiKV request and response.
    kvrpcpb,
    /// `coprocessor`: coprocessor passthrough (a `BatchCommands` variant).
    coprocessor,
    /// `tikvpb`: the `Tikv` service and `BatchCommands` envelopes.
    tikvpb,
    /// `eraftpb`: raft's conf-change kinds, named by PD's `ChangePeer` operators.
    eraftpb,
    /// `pdpb`: the `PD` service (a client's calls and a store's: bootstrap,
    /// heartbeats, splits).
    pdpb,
    /// `keyspacepb`: the `Keyspace` service.
    keyspacepb,
    /// `meta_storagepb`: PD's `MetaStorage` service (`Get`).
    meta_storagepb,
);

/// `grpc.health.v1`: gRPC's standard health checking service (not kvproto),
/// which TiKV serves next to `Tikv` and client-go probes after an RPC error.
pub mod health {
    include!("generated/grpc.health.v1.rs");
}
