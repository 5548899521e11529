//! Byte-level framing: the NRI multiplexer frames and the ttrpc messages inside them.
//!
//! One unix socket (the *trunk*) carries several logical connections. Every mux frame is
//! `[conn id: u32 BE][payload length: u32 BE][payload]`. The payloads of one conn,
//! concatenated, form a byte stream of ttrpc messages: `[length: u32 BE][stream id: u32 BE]
//! [type: u8][flags: u8][protobuf]`. A ttrpc message may span several frames and a frame may
//! end in the middle of a ttrpc header, so both layers are decoded incrementally.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Logical connection on which the plugin serves and the runtime calls.
pub const PLUGIN_CONN: u32 = 1;
/// Logical connection on which the runtime serves and the plugin calls.
pub const RUNTIME_CONN: u32 = 2;

pub const MUX_HEADER_LEN: usize = 8;
pub const TTRPC_HEADER_LEN: usize = 10;
/// Largest ttrpc message body (ttrpc's own limit).
pub const TTRPC_MAX_MESSAGE: usize = 4 << 20;
/// Largest frame payload accepted from the peer (the runtime's own limit).
pub const MAX_FRAME_IN: usize = TTRPC_HEADER_LEN + TTRPC_MAX_MESSAGE;
/// Largest frame payload we send: the Go side reads a conn through a 4 KiB buffer.
pub const MAX_FRAME_OUT: usize = 4096;

pub const MSG_REQUEST: u8 = 1;
pub const MSG_RESPONSE: u8 = 2;

/// Framing errors: the peer broke the protocol and the trunk must be dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("mux frame of {0} bytes exceeds the limit of {MAX_FRAME_IN}")]
    FrameTooLarge(usize),
    #[error("ttrpc message of {0} bytes exceeds the limit of {TTRPC_MAX_MESSAGE}")]
    MessageTooLarge(usize),
    #[error("mux frame for reserved conn 0")]
    ReservedConn,
}

/// One ttrpc message, undecoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub stream_id: u32,
    pub kind: u8,
    pub flags: u8,
    pub body: Bytes,
}

/// Appends `msg` to `out` as frames of `conn`, none carrying more than `max_payload` bytes.
pub fn encode_frames(conn: u32, msg: &[u8], max_payload: usize, out: &mut Vec<u8>) {
    assert!(max_payload > 0, "frame payload limit must be positive");
    for chunk in msg.chunks(max_payload) {
        out.put_u32(conn);
        out.put_u32(chunk.len() as u32);
        out.extend_from_slice(chunk);
    }
}

/// Serialises one ttrpc message (header + body).
pub fn encode_message(
    stream_id: u32,
    kind: u8,
    flags: u8,
    body: &[u8],
) -> Result<Vec<u8>, WireError> {
    if body.len() > TTRPC_MAX_MESSAGE {
        return Err(WireError::MessageTooLarge(body.len()));
    }
    let mut v = Vec::with_capacity(TTRPC_HEADER_LEN + body.len());
    v.put_u32(body.len() as u32);
    v.put_u32(stream_id);
    v.put_u8(kind);
    v.put_u8(flags);
    v.extend_from_slice(body);
    Ok(v)
}

/// Splits the trunk's byte stream into `(conn, payload)` frames.
#[derive(Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<(u32, Bytes)>, WireError> {
        if self.buf.len() < MUX_HEADER_LEN {
            return Ok(None);
        }
        let conn = u32::from_be_bytes(self.buf[0..4].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(self.buf[4..8].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME_IN {
            return Err(WireError::FrameTooLarge(len));
        }
        if conn == 0 {
            return Err(WireError::ReservedConn);
        }
        if self.buf.len() < MUX_HEADER_LEN + len {
            self.buf.reserve(MUX_HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(MUX_HEADER_LEN);
        Ok(Some((conn, self.buf.split_to(len).freeze())))
    }
}

/// Reassembles the ttrpc messages of one logical connection from its frame payloads.
#[derive(Default)]
pub struct MessageDecoder {
    buf: BytesMut,
}

impl MessageDecoder {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        if self.buf.len() < TTRPC_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[0..4].try_into().expect("4 bytes")) as usize;
        if len > TTRPC_MAX_MESSAGE {
            return Err(WireError::MessageTooLarge(len));
        }
        if self.buf.len() < TTRPC_HEADER_LEN + len {
            return Ok(None);
        }
        let stream_id = u32::from_be_bytes(self.buf[4..8].try_into().expect("4 bytes"));
        let kind = self.buf[8];
        let flags = self.buf[9];
        self.buf.advance(TTRPC_HEADER_LEN);
        let body = self.buf.split_to(len).freeze();
        Ok(Some(Message {
            stream_id,
            kind,
            flags,
            body,
        }))
    }
}

/// ttrpc's envelope messages.
pub mod ttrpc {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Request {
        #[prost(string, tag = "1")]
        pub service: String,
        #[prost(string, tag = "2")]
        pub method: String,
        #[prost(bytes = "vec", tag = "3")]
        pub payload: Vec<u8>,
        #[prost(int64, tag = "4")]
        pub timeout_nano: i64,
        #[prost(message, repeated, tag = "5")]
        pub metadata: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Response {
        #[prost(message, optional, tag = "1")]
        pub status: Option<Status>,
        #[prost(bytes = "vec", tag = "2")]
        pub payload: Vec<u8>,
    }

    /// `google.rpc.Status` without details.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
    }
}

/// gRPC status codes used on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    Ok = 0,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    FailedPrecondition = 9,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(out: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut d = FrameDecoder::default();
        d.push(out);
        let mut v = Vec::new();
        while let Some((c, p)) = d.next_frame().unwrap() {
            v.push((c, p.to_vec()));
        }
        assert!(
            d.buffer_mut().is_empty(),
            "trailing bytes left in the decoder"
        );
        v
    }

    #[test]
    fn large_message_is_split_into_frames_of_at_most_4096_bytes() {
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let msg = encode_message(7, MSG_REQUEST, 0, &body).unwrap();
        let mut out = Vec::new();
        encode_frames(PLUGIN_CONN, &msg, MAX_FRAME_OUT, &mut out);
        let frames = frames_of(&out);
        assert_eq!(frames.len(), 3, "10 010 bytes need three 4 KiB frames");
        assert!(
            frames
                .iter()
                .all(|(c, p)| *c == PLUGIN_CONN && p.len() <= MAX_FRAME_OUT)
        );
        assert_eq!(frames[0].1.len(), 4096);
        assert_eq!(frames[2].1.len(), msg.len() - 2 * 4096);

        let mut md = MessageDecoder::default();
        for (_, p) in &frames[..2] {
            md.push(p);
            assert_eq!(
                md.next_message().unwrap(),
                None,
                "message completed too early"
            );
        }
        md.push(&frames[2].1);
        let m = md.next_message().unwrap().expect("complete message");
        assert_eq!((m.stream_id, m.kind, m.flags), (7, MSG_REQUEST, 0));
        assert_eq!(&m.body[..], &body[..]);
        assert_eq!(md.next_message().unwrap(), None);
    }

    #[test]
    fn decoders_survive_byte_by_byte_delivery_and_interleaved_conns() {
        let a = encode_message(1, MSG_REQUEST, 0, b"hello").unwrap();
        let b = encode_message(3, MSG_RESPONSE, 0, &[9u8; 300]).unwrap();
        let mut out = Vec::new();
        // Frames of 7 bytes split the ttrpc header itself; conns alternate.
        for (ca, cb) in a.chunks(7).zip(b.chunks(7)) {
            encode_frames(PLUGIN_CONN, ca, 7, &mut out);
            encode_frames(RUNTIME_CONN, cb, 7, &mut out);
        }
        for cb in b.chunks(7).skip(a.chunks(7).count()) {
            encode_frames(RUNTIME_CONN, cb, 7, &mut out);
        }
        let mut fd = FrameDecoder::default();
        let (mut m1, mut m2) = (MessageDecoder::default(), MessageDecoder::default());
        let mut got = Vec::new();
        for byte in out {
            fd.push(&[byte]);
            while let Some((conn, p)) = fd.next_frame().unwrap() {
                let md = if conn == PLUGIN_CONN {
                    &mut m1
                } else {
                    &mut m2
                };
                md.push(&p);
                while let Some(m) = md.next_message().unwrap() {
                    got.push((conn, m));
                }
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, PLUGIN_CONN);
        assert_eq!(&got[0].1.body[..], b"hello");
        assert_eq!(got[1].0, RUNTIME_CONN);
        assert_eq!((got[1].1.stream_id, got[1].1.body.len()), (3, 300));
    }

    #[test]
    fn oversized_and_reserved_frames_are_protocol_errors() {
        let mut d = FrameDecoder::default();
        d.push(&1u32.to_be_bytes());
        d.push(&((MAX_FRAME_IN + 1) as u32).to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(WireError::FrameTooLarge(MAX_FRAME_IN + 1))
        );

        let mut d = FrameDecoder::default();
        d.push(&[0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(d.next_frame(), Err(WireError::ReservedConn));

        let mut m = MessageDecoder::default();
        m.push(&((TTRPC_MAX_MESSAGE + 1) as u32).to_be_bytes());
        m.push(&[0; 6]);
        assert_eq!(
            m.next_message(),
            Err(WireError::MessageTooLarge(TTRPC_MAX_MESSAGE + 1))
        );
        assert_eq!(
            encode_message(1, MSG_REQUEST, 0, &vec![0; TTRPC_MAX_MESSAGE + 1]),
            Err(WireError::MessageTooLarge(TTRPC_MAX_MESSAGE + 1))
        );
    }

    #[test]
    fn empty_message_has_header_only() {
        let m = encode_message(5, MSG_RESPONSE, 0, b"").unwrap();
        assert_eq!(m, vec![0, 0, 0, 0, 0, 0, 0, 5, 2, 0]);
        let mut out = Vec::new();
        encode_frames(RUNTIME_CONN, &m, MAX_FRAME_OUT, &mut out);
        assert_eq!(frames_of(&out), vec![(RUNTIME_CONN, m)]);
    }
}
