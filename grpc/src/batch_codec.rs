//! The `BatchCommands` stream's codec: prost's wire format, with the
//! hot stream's costs taken out.
//!
//! - **Encoding** goes through a plain byte slice sized beforehand, then
//!   into tonic's buffer in one copy: prost writes every varint one byte at
//!   a time through `BufMut::put_u8`, which on tonic's `EncodeBuf` (a
//!   `BytesMut`) is a capacity check and a `memcpy` call per byte, and on a
//!   slice a single store. The message's top two levels are written here,
//!   so each request's length is computed once (`encode_batch`).
//! - **Decoding** sizes an answer message's vectors before decoding it:
//!   prost decodes a repeated message field by pushing into an empty
//!   `Vec`, growing it by doubling, and a
//!   `batch_commands_response::Response` is a large enum (the size of its
//!   largest case, 2.4 KB), so the regrowth copies of one message of a few
//!   dozen answers cost several percent of the client's instructions per
//!   raw get under load. Counting the entries first is one pass over the
//!   field keys. Each answer is then decoded in its slot of the vector
//!   rather than on the stack and moved in, which saves copying the whole
//!   enum once per answer.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    DecodeContext, WireType, decode_key, decode_varint, encode_key, encode_varint,
    encoded_len_varint, key_len, uint64,
};
use prost::{DecodeError, Message};
use tikv_proto::tikvpb::batch_commands_response::Response;
use tikv_proto::tikvpb::{BatchCommandsRequest, BatchCommandsResponse, batch_commands_request};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// At most this many entries are reserved ahead, whatever the message
/// claims (client-go's largest batch is 128 requests; TiKV answers in
/// batches no larger).
const MAX_RESERVED: usize = 1024;

/// [`Codec`] of the `BatchCommands` call.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct BatchCodec;

impl Codec for BatchCodec {
    type Encode = BatchCommandsRequest;
    type Decode = BatchCommandsResponse;
    type Encoder = BatchEncoder;
    type Decoder = BatchCodec;

    fn encoder(&mut self) -> BatchEncoder {
        BatchEncoder::default()
    }

    fn decoder(&mut self) -> BatchCodec {
        BatchCodec
    }
}

/// The `BatchCommands` encoder of one stream: it keeps the buffers a
/// message is encoded through (module docs), reused message after message.
#[derive(Debug, Default)]
pub(crate) struct BatchEncoder {
    scratch: Vec<u8>,
    lens: Vec<usize>,
}

impl Encoder for BatchEncoder {
    type Item = BatchCommandsRequest;
    type Error = Status;

    fn encode(
        &mut self,
        item: BatchCommandsRequest,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), Status> {
        encode_batch(&item, &mut self.lens, &mut self.scratch)?;
        dst.put_slice(&self.scratch);
        Ok(())
    }
}

/// prost's encoding of `message` into `scratch` (resized to exactly its
/// length), byte for byte, computing each entry's length once: prost's
/// own path asks every nested message for its length at each level it is
/// nested in (the message's length first, then the entry's, the
/// command's, ...), so a request's `Context` is measured four times, here
/// three.
fn encode_batch(
    message: &BatchCommandsRequest,
    lens: &mut Vec<usize>,
    scratch: &mut Vec<u8>,
) -> Result<(), Status> {
    const REQUESTS: u32 = 1;
    const REQUEST_IDS: u32 = 2;
    const CLIENT_SEND_TIME_NS: u32 = 3;
    // Named field by field, so a field kvproto adds to the message fails
    // to compile here instead of being left out of the frame.
    let BatchCommandsRequest { requests, request_ids, client_send_time_ns } = message;
    fn cmd(r: &batch_commands_request::Request) -> Option<&batch_commands_request::request::Cmd> {
        let batch_commands_request::Request { cmd } = r;
        cmd.as_ref()
    }
    lens.clear();
    lens.extend(requests.iter().map(|r| cmd(r).map_or(0, |c| c.encoded_len())));
    let entries: usize =
        lens.iter().map(|&len| key_len(REQUESTS) + encoded_len_varint(len as u64) + len).sum();
    let ids = uint64::encoded_len_packed(REQUEST_IDS, request_ids);
    let sent = if *client_send_time_ns == 0 {
        0
    } else {
        uint64::encoded_len(CLIENT_SEND_TIME_NS, client_send_time_ns)
    };
    scratch.clear();
    scratch.resize(entries + ids + sent, 0);
    let mut window = scratch.as_mut_slice();
    for (request, &len) in requests.iter().zip(lens.iter()) {
        encode_key(REQUESTS, WireType::LengthDelimited, &mut window);
        encode_varint(len as u64, &mut window);
        if let Some(c) = cmd(request) {
            c.encode(&mut window);
        }
    }
    uint64::encode_packed(REQUEST_IDS, request_ids, &mut window);
    if *client_send_time_ns != 0 {
        uint64::encode(CLIENT_SEND_TIME_NS, client_send_time_ns, &mut window);
    }
    // The lengths above are prost's own, so the window is exactly filled
    // (a shorter one would have panicked); checked all the same rather than
    // sending a frame with a zeroed tail.
    if !window.is_empty() {
        return Err(Status::internal("encoding BatchCommands: length mismatch"));
    }
    Ok(())
}

impl Decoder for BatchCodec {
    type Item = BatchCommandsResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<BatchCommandsResponse>, Status> {
        // The answers and their ids come in pairs.
        let answers = count_answers(src.chunk()).min(MAX_RESERVED);
        let mut message = BatchCommandsResponse {
            responses: Vec::with_capacity(answers),
            request_ids: Vec::with_capacity(answers),
            ..Default::default()
        };
        // As prost's own decoder does: the rest of the frame is the message.
        merge_in_place(&mut message, src).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Some(message))
    }
}

/// prost's `Message::merge` of a `BatchCommandsResponse`, except that each
/// `responses` entry is decoded in the vector's slot (module docs). Same
/// results, same errors, on every input.
fn merge_in_place(
    message: &mut BatchCommandsResponse,
    buf: &mut impl Buf,
) -> Result<(), DecodeError> {
    const RESPONSES: u32 = 1;
    let ctx = DecodeContext::default();
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(buf)?;
        if tag != RESPONSES || wire_type != WireType::LengthDelimited {
            message.merge_field(tag, wire_type, buf, ctx.clone())?;
            continue;
        }
        message.responses.push(Response::default());
        let Some(entry) = message.responses.last_mut() else { continue };
        prost::encoding::message::merge(wire_type, entry, buf, ctx.clone()).map_err(|mut e| {
            // prost's own path names the field the same way.
            e.push("BatchCommandsResponse", "responses");
            e
        })?;
    }
    Ok(())
}

/// Counts the `responses` entries (field 1) of an encoded
/// `BatchCommandsResponse`. Stops at the end of `buf` or at the first
/// malformed key (the decoder then reports the error); the count is only
/// a capacity hint.
fn count_answers(mut buf: &[u8]) -> usize {
    const RESPONSES: u64 = 1;
    let mut answers = 0;
    while !buf.is_empty() {
        let Ok(key) = decode_varint(&mut buf) else {
            break;
        };
        let skip = match key & 0b111 {
            // varint
            0 => match decode_varint(&mut buf) {
                Ok(_) => 0,
                Err(_) => break,
            },
            // fixed64, fixed32
            1 => 8,
            5 => 4,
            // length-delimited
            2 => {
                let Ok(len) = decode_varint(&mut buf) else {
                    break;
                };
                if key >> 3 == RESPONSES {
                    answers += 1;
                }
                usize::try_from(len).unwrap_or(usize::MAX)
            }
            _ => break,
        };
        if skip > buf.len() {
            break;
        }
        buf = &buf[skip..];
    }
    answers
}

#[cfg(test)]
mod tests {
    use tikv_proto::kvrpcpb;
    use tikv_proto::tikvpb::batch_commands_response::Response;
    use tikv_proto::tikvpb::batch_commands_response::response::Cmd;

    use super::*;

    fn message(answers: u64) -> BatchCommandsResponse {
        BatchCommandsResponse {
            responses: (0..answers)
                .map(|i| Response {
                    cmd: Some(Cmd::RawGet(Box::new(kvrpcpb::RawGetResponse {
                        value: vec![b'v'; i as usize].into(),
                        ..Default::default()
                    }))),
                })
                .collect(),
            request_ids: (0..answers).collect(),
            transport_layer_load: 3,
            tikv_send_time_ns: 1 << 40,
            ..Default::default()
        }
    }

    #[test]
    fn counts_every_answer_of_a_message() {
        for n in [0, 1, 2, 64, 300] {
            assert_eq!(count_answers(&message(n).encode_to_vec()), n as usize);
        }
    }

    /// The encoder's bytes are prost's, for an empty message, a batch of
    /// requests with contexts, a probe and an entry with no command, through
    /// reused buffers.
    #[test]
    fn encoding_is_prosts() {
        use tikv_proto::tikvpb::batch_commands_request::Request;
        use tikv_proto::tikvpb::batch_commands_request::request::Cmd as ReqCmd;

        let get = |i: u64| Request {
            cmd: Some(ReqCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
                context: Some(kvrpcpb::Context {
                    region_id: 1000 + i,
                    region_epoch: Some(tikv_proto::metapb::RegionEpoch { conf_ver: 5, version: i }),
                    peer: Some(tikv_proto::metapb::Peer {
                        id: 7,
                        store_id: 3,
                        ..Default::default()
                    }),
                    request_source: "external_bench".into(),
                    ..Default::default()
                }),
                key: vec![b'k'; 24 + i as usize].into(),
                cf: "default".into(),
            }))),
        };
        let batch = BatchCommandsRequest {
            requests: (0..40).map(get).collect(),
            request_ids: (1..=40).map(|i| i << 20).collect(),
            client_send_time_ns: 1 << 50,
        };
        let probe = BatchCommandsRequest {
            requests: vec![Request {
                cmd: Some(ReqCmd::Empty(Box::new(tikv_proto::tikvpb::BatchCommandsEmptyRequest {
                    test_id: 9,
                    delay_time: 0,
                }))),
            }],
            request_ids: vec![9],
            client_send_time_ns: 0,
        };
        let mut unset = probe.clone();
        unset.requests.push(Request { cmd: None });
        unset.request_ids.push(10);
        let (mut lens, mut scratch) = (Vec::new(), Vec::new());
        for message in [BatchCommandsRequest::default(), batch, probe, unset] {
            encode_batch(&message, &mut lens, &mut scratch).expect("encodes");
            assert_eq!(scratch, message.encode_to_vec());
        }
    }

    /// Decoding in place gives prost's message on valid input, and fails
    /// where prost fails (with the same error) on every cut of it and on
    /// a response entry with the wrong wire type.
    #[test]
    fn decoding_is_prosts() {
        let mut full = message(30);
        full.health_feedback =
            Some(kvrpcpb::HealthFeedback { store_id: 4, feedback_seq_no: 2, slow_score: 80 });
        let bytes = full.encode_to_vec();
        let ours = |bytes: &[u8]| {
            let mut decoded = BatchCommandsResponse::default();
            merge_in_place(&mut decoded, &mut &bytes[..]).map(|()| decoded)
        };
        assert_eq!(ours(&bytes), Ok(full));
        for cut in 0..bytes.len() {
            let theirs = BatchCommandsResponse::decode(&bytes[..cut]);
            assert_eq!(ours(&bytes[..cut]), theirs, "cut at {cut}");
        }
        // Field 1 as a varint: prost refuses it with its wire-type error.
        let wrong = [0x08, 0x01];
        assert!(ours(&wrong).is_err());
        assert_eq!(ours(&wrong), BatchCommandsResponse::decode(&wrong[..]));
    }

    /// Truncated or garbled input stops the count early and never panics.
    #[test]
    fn malformed_input_is_only_a_smaller_hint() {
        let bytes = message(20).encode_to_vec();
        for cut in 0..bytes.len() {
            assert!(count_answers(&bytes[..cut]) <= 20);
        }
        assert_eq!(count_answers(&[0xff; 16]), 0);
        assert_eq!(count_answers(&[0x0b, 0x01]), 0, "wire type 3 (group) stops the scan");
        assert_eq!(count_answers(&[0x0a, 0x7f]), 1, "an entry longer than the buffer");
    }
}
