//! Arbitrary bytes decoded as TiKV responses and pushed through the response
//! path: the region-error table and the API V2 codec. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tikv_core::codec::{ApiCodec, Mode};
use tikv_core::rpc::KvResponse;
use tikv_core::rpc::region_error::classify;
use tikv_proto::kvrpcpb;

macro_rules! decoders {
    ($(($variant:ident, $method:ident, $req:ident, $resp:ident)),* $(,)?) => {
        /// Decodes `data` as the `which`-th response type, if it parses.
        fn decode(which: u8, data: &[u8]) -> Option<KvResponse> {
            let decoders: &[fn(&[u8]) -> Option<KvResponse>] = &[
                $(|d| kvrpcpb::$resp::decode(d).ok().map(KvResponse::from),)*
            ];
            decoders.get(usize::from(which) % decoders.len()).and_then(|f| f(data))
        }
    };
}
tikv_core::for_each_kv_rpc!(decoders);

fuzz_target!(|input: &[u8]| {
    let Some((&which, data)) = input.split_first() else {
        return;
    };
    let Some(mut resp) = decode(which, data) else {
        return;
    };
    if let Some(err) = resp.region_error() {
        let _ = classify(err);
    }
    for codec in [
        ApiCodec::v1(Mode::Raw),
        ApiCodec::v1(Mode::Txn),
        ApiCodec::v2(Mode::Raw, 7).expect("valid keyspace id"),
        ApiCodec::v2(Mode::Txn, 0xFF_FFFF).expect("valid keyspace id"),
    ] {
        let mut copy = resp.clone();
        let _ = codec.decode_response(&mut copy);
    }
    let _ = resp.take_region_error();
});
