//! The framing of one netlink datagram, done once for every reader: a datagram carries
//! several messages, each behind its `nlmsghdr` (length first) and padded to 4 bytes.

use std::io;

use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;

/// `sizeof(struct nlmsghdr)`: no message is shorter.
const HEADER_LEN: usize = 16;

/// The messages of one received datagram, in order.
///
/// Yields an error for a message that does not parse and carries on with the next; a
/// length that runs past the datagram (a truncated read) yields one error and ends the
/// iteration, since nothing after it can be framed. Readers that only watch for one event
/// skip both with `.flatten()`; request/response readers stop at the first.
pub struct Frames<'a> {
    rest: &'a [u8],
}

/// Frames `datagram` (the bytes one `recv` returned).
pub fn frames(datagram: &[u8]) -> Frames<'_> {
    Frames { rest: datagram }
}

impl Iterator for Frames<'_> {
    type Item = io::Result<NetlinkMessage<RouteNetlinkMessage>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < HEADER_LEN {
            return None;
        }
        let len = u32::from_ne_bytes(self.rest[..4].try_into().expect("4 bytes")) as usize;
        if len < HEADER_LEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            )));
        }
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.rest[..len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
        let padded = (len + 3) & !3;
        self.rest = self.rest.get(padded..).unwrap_or(&[]);
        Some(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::{NetlinkHeader, NetlinkPayload};
    use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};

    /// A serialized GetLink for `name` (odd lengths exercise the padding).
    fn get_link(name: &str, seq: u32) -> Vec<u8> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(m)),
        );
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        buf.resize((buf.len() + 3) & !3, 0);
        buf
    }

    #[test]
    fn every_message_of_a_datagram_is_yielded_in_order() {
        let mut datagram = get_link("a", 1);
        datagram.extend(get_link("bridge0", 2));
        datagram.extend(get_link("eth12", 3));
        let seqs: Vec<u32> = frames(&datagram)
            .map(|m| m.unwrap().header.sequence_number)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[test]
    fn a_truncated_message_is_one_error_and_the_end() {
        let mut datagram = get_link("a", 1);
        let second = get_link("b", 2);
        datagram.extend(&second[..second.len() - 4]);
        let mut it = frames(&datagram);
        assert_eq!(it.next().unwrap().unwrap().header.sequence_number, 1);
        let err = it.next().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), "truncated netlink message");
        assert!(it.next().is_none());
    }

    #[test]
    fn bytes_shorter_than_a_header_are_no_message() {
        assert!(frames(&[0; HEADER_LEN - 1]).next().is_none());
        assert!(frames(&[]).next().is_none());
    }
}
