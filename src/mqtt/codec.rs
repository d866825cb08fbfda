//! Strict MQTT 3.1.1 / 5.0 codec for the server side (and the client packets it must parse
//! and emit, so every packet type round-trips).
//!
//! Called by the connection task only. `decode` consumes exactly one packet from the front of
//! the read buffer once all of it is there; payloads are zero-copy `Bytes` slices of it.
//! Validation is strict: reserved flags, UTF-8 (no U+0000), property placement and duplicates,
//! lengths. Errors map to 5.0 reason codes through `CodecError::reason_code`:
//! Malformed → 0x81, Protocol → 0x82, TooLarge → 0x95, TooMany (more than
//! [`MAX_USER_PROPERTIES`] user properties) → 0x95, TopicNameInvalid → 0x90 (wildcard in a
//! PUBLISH topic), UnsupportedProtocol → 0x84, BadProtocolName → 0x81.
//!
//! Choices where the spec leaves room: DUP on a QoS 0 PUBLISH and QoS 3 are Malformed in both
//! versions; an empty PUBLISH topic is Malformed in 3.1.1 and a Protocol error in 5.0 unless a
//! Topic Alias is present; SUBSCRIBE option QoS 3 is Malformed in 3.1.1 and a Protocol error in
//! 5.0 (reserved option bits are Malformed in both). Topic *filter* syntax is not checked here
//! (the broker answers bad filters per filter in SUBACK); CONNECT is only the first packet
//! rule (a second CONNECT is the connection's business), and which direction a packet travels
//! is not checked (the codec also serves the cluster link client).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::packet::*;

mod decode;
mod encode;

use decode::*;
pub use encode::*;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("packet too large: {size} bytes (maximum {max})")]
    TooLarge { size: usize, max: usize },
    #[error("unsupported protocol version {0}")]
    UnsupportedProtocol(u8),
    #[error("invalid protocol name")]
    BadProtocolName,
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(&'static str),
    /// More of something than a packet may carry here (a bound on what one packet can make the
    /// server allocate: a 1 MB packet of empty user properties is 12 MB in memory).
    #[error("too many {0} in one packet")]
    TooMany(&'static str),
}

impl CodecError {
    pub fn reason_code(&self) -> u8 {
        match self {
            CodecError::Malformed(_) | CodecError::BadProtocolName => reason::MALFORMED_PACKET,
            CodecError::Protocol(_) => reason::PROTOCOL_ERROR,
            CodecError::TooLarge { .. } | CodecError::TooMany(_) => reason::PACKET_TOO_LARGE,
            CodecError::UnsupportedProtocol(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
            CodecError::TopicNameInvalid(_) => reason::TOPIC_NAME_INVALID,
        }
    }
}

pub(super) type R<T> = Result<T, CodecError>;
pub(super) const MAX_REMAINING: usize = 268_435_455;
/// User properties one packet may carry by default (each costs ~50 bytes in memory for 4 on
/// the wire); `mqtt.max_user_properties` sets it per broker ([`decode_limited`]).
pub const MAX_USER_PROPERTIES: usize = 1024;
/// Most `decode` reserves at once while waiting for the rest of a packet.
pub(super) const RESERVE_STEP: usize = 64 * 1024;

/// Decode one packet from the front of `buf` (Ok(None): need more bytes, nothing consumed).
pub fn decode(buf: &mut BytesMut, protocol: Option<Protocol>, max_size: usize) -> R<Option<Packet>> {
    decode_limited(buf, protocol, max_size, MAX_USER_PROPERTIES)
}

/// [`decode`] with a bound on the user properties of one packet.
pub fn decode_limited(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_size: usize,
    max_user_properties: usize,
) -> R<Option<Packet>> {
    if buf.is_empty() {
        return Ok(None);
    }
    let b0 = buf[0];
    if protocol.is_none() && b0 >> 4 != 1 {
        return Err(CodecError::Protocol("first packet is not CONNECT"));
    }
    let mut remaining = 0usize;
    let mut header_len = 1;
    let mut shift = 0;
    loop {
        let Some(&b) = buf.get(header_len) else { return Ok(None) };
        header_len += 1;
        remaining |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if header_len > 4 {
            return Err(CodecError::Malformed("remaining length longer than 4 bytes"));
        }
    }
    let total = header_len + remaining;
    if total > max_size {
        return Err(CodecError::TooLarge { size: total, max: max_size });
    }
    if buf.len() < total {
        // Grow towards the declared size in steps: a client announcing a large packet and then
        // stalling costs at most one step of memory, not `max_size`.
        buf.reserve((total - buf.len()).min(RESERVE_STEP));
        return Ok(None);
    }
    let mut pkt = buf.split_to(total).freeze();
    pkt.advance(header_len);
    let ptype = b0 >> 4;
    let flags = b0 & 0x0f;
    // Without a protocol only CONNECT gets here (checked above); it carries its own level.
    let proto = protocol.unwrap_or(Protocol::V311);
    let mut r = Reader { b: pkt, max_props: max_user_properties };
    let p = match ptype {
        1 => {
            need_flags(flags, 0)?;
            Packet::Connect(Box::new(decode_connect(&mut r)?))
        }
        2 => {
            need_flags(flags, 0)?;
            decode_connack(&mut r, proto)?
        }
        3 => Packet::Publish(decode_publish(&mut r, flags, proto)?),
        4 | 5 | 7 => {
            need_flags(flags, 0)?;
            let resp = decode_pubresp(&mut r, proto, ptype)?;
            match ptype {
                4 => Packet::PubAck(resp),
                5 => Packet::PubRec(resp),
                _ => Packet::PubComp(resp),
            }
        }
        6 => {
            need_flags(flags, 2)?;
            Packet::PubRel(decode_pubresp(&mut r, proto, ptype)?)
        }
        8 => {
            need_flags(flags, 2)?;
            Packet::Subscribe(decode_subscribe(&mut r, proto)?)
        }
        9 => {
            need_flags(flags, 0)?;
            decode_suback(&mut r, proto, false)?
        }
        10 => {
            need_flags(flags, 2)?;
            Packet::Unsubscribe(decode_unsubscribe(&mut r, proto)?)
        }
        11 => {
            need_flags(flags, 0)?;
            decode_suback(&mut r, proto, true)?
        }
        12 | 13 => {
            need_flags(flags, 0)?;
            if !r.b.is_empty() {
                return Err(CodecError::Malformed("PINGREQ/PINGRESP with a body"));
            }
            if ptype == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        14 => {
            need_flags(flags, 0)?;
            let (code, properties) = decode_reason_props(&mut r, proto, Kind::Disconnect)?;
            Packet::Disconnect(Disconnect { code, properties })
        }
        15 => {
            need_flags(flags, 0)?;
            if !proto.is_v5() {
                return Err(CodecError::Malformed("AUTH in MQTT 3.1.1"));
            }
            let (code, properties) = decode_reason_props(&mut r, proto, Kind::Auth)?;
            Packet::Auth(Auth { code, properties })
        }
        _ => return Err(CodecError::Malformed("reserved packet type 0")),
    };
    Ok(Some(p))
}

pub(super) fn need_flags(flags: u8, want: u8) -> R<()> {
    if flags == want {
        Ok(())
    } else {
        Err(CodecError::Malformed("invalid fixed header flags"))
    }
}

pub(super) struct Reader {
    pub(super) b: Bytes,
    /// user properties a property list may carry
    pub(super) max_props: usize,
}

impl Reader {
    pub(super) fn u8(&mut self) -> R<u8> {
        if self.b.is_empty() {
            return Err(CodecError::Malformed("packet truncated"));
        }
        Ok(self.b.get_u8())
    }
    pub(super) fn u16(&mut self) -> R<u16> {
        if self.b.len() < 2 {
            return Err(CodecError::Malformed("packet truncated"));
        }
        Ok(self.b.get_u16())
    }
    pub(super) fn u32(&mut self) -> R<u32> {
        if self.b.len() < 4 {
            return Err(CodecError::Malformed("packet truncated"));
        }
        Ok(self.b.get_u32())
    }
    pub(super) fn take(&mut self, n: usize) -> R<Bytes> {
        if self.b.len() < n {
            return Err(CodecError::Malformed("packet truncated"));
        }
        Ok(self.b.split_to(n))
    }
    pub(super) fn binary(&mut self) -> R<Bytes> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    pub(super) fn string(&mut self) -> R<String> {
        let raw = self.binary()?;
        utf8(&raw)
    }
    pub(super) fn varint(&mut self) -> R<u32> {
        let mut v: u32 = 0;
        for i in 0..4 {
            let b = self.u8()?;
            v |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Malformed("variable byte integer longer than 4 bytes"))
    }
    pub(super) fn done(&self) -> R<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Malformed("unexpected bytes after the packet's fields"))
        }
    }
}

pub(super) fn utf8(raw: &[u8]) -> R<String> {
    let s = std::str::from_utf8(raw).map_err(|_| CodecError::Malformed("invalid UTF-8 string"))?;
    if s.contains('\0') {
        return Err(CodecError::Malformed("U+0000 in a UTF-8 string"));
    }
    Ok(s.to_string())
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// Which packet kinds may carry property `id` (MQTT 5.0 §2.2.2.2).
pub(super) fn allowed(id: u8, k: Kind) -> bool {
    use Kind::*;
    match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(k, Publish | Will),
        0x0B => matches!(k, Publish | Subscribe),
        0x11 => matches!(k, Connect | ConnAck | Disconnect),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => k == ConnAck,
        0x15 | 0x16 => matches!(k, Connect | ConnAck | Auth),
        0x17 | 0x19 => k == Connect,
        0x18 => k == Will,
        0x1C => matches!(k, ConnAck | Disconnect),
        0x1F => matches!(k, ConnAck | PubResp | SubAck | UnsubAck | Disconnect | Auth),
        0x21 | 0x22 | 0x27 => matches!(k, Connect | ConnAck),
        0x23 => k == Publish,
        0x26 => true,
        _ => false,
    }
}

pub(super) fn set<T>(slot: &mut Option<T>, v: T) -> R<()> {
    if slot.is_some() {
        return Err(CodecError::Protocol("duplicate property"));
    }
    *slot = Some(v);
    Ok(())
}

pub(super) fn flag(v: u8) -> R<u8> {
    if v > 1 {
        Err(CodecError::Protocol("property value must be 0 or 1"))
    } else {
        Ok(v)
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
