//! The `BatchCommands` stream's codec: prost's encoding, and a decoder that
//! sizes an answer message's vectors before decoding it.
//!
//! prost decodes a repeated message field by pushing into an empty `Vec`,
//! growing it by doubling; a `batch_commands_response::Response` is a
//! large enum, so the regrowth copies of one message of a few dozen
//! answers cost several percent of the client's instructions per raw get
//! under load. Counting the entries
//! first is one pass over the field keys.

use prost::Message;
use prost::bytes::Buf;
use prost::encoding::decode_varint;
use tikv_proto::tikvpb::{BatchCommandsRequest, BatchCommandsResponse};
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
    type Encoder = BatchCodec;
    type Decoder = BatchCodec;

    fn encoder(&mut self) -> BatchCodec {
        BatchCodec
    }

    fn decoder(&mut self) -> BatchCodec {
        BatchCodec
    }
}

impl Encoder for BatchCodec {
    type Item = BatchCommandsRequest;
    type Error = Status;

    fn encode(
        &mut self,
        item: BatchCommandsRequest,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), Status> {
        // `EncodeBuf` grows on demand, so prost's only error (no room) cannot
        // happen; report it rather than panic all the same.
        item.encode(dst).map_err(|e| Status::internal(format!("encoding BatchCommands: {e}")))
    }
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
        message.merge(src).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Some(message))
    }
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
                    cmd: Some(Cmd::RawGet(kvrpcpb::RawGetResponse {
                        value: vec![b'v'; i as usize].into(),
                        ..Default::default()
                    })),
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
