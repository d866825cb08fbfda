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

type R<T> = Result<T, CodecError>;
const MAX_REMAINING: usize = 268_435_455;
/// User properties one packet may carry by default (each costs ~50 bytes in memory for 4 on
/// the wire); `mqtt.max_user_properties` sets it per broker ([`decode_limited`]).
pub const MAX_USER_PROPERTIES: usize = 1024;
/// Most `decode` reserves at once while waiting for the rest of a packet.
const RESERVE_STEP: usize = 64 * 1024;

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

fn need_flags(flags: u8, want: u8) -> R<()> {
    if flags == want {
        Ok(())
    } else {
        Err(CodecError::Malformed("invalid fixed header flags"))
    }
}

struct Reader {
    b: Bytes,
    /// user properties a property list may carry
    max_props: usize,
}

impl Reader {
    fn u8(&mut self) -> R<u8> {
        if self.b.is_empty() {
            return Err(CodecError::Malformed("packet truncated"));
        }
        Ok(self.b.get_u8())
    }
    fn u16(&mut self) -> R<u16> {
        if self.b.len() < 2 {
            return Err(CodecError::Malformed("packet truncated"));
        }
        Ok(self.b.get_u16())
    }
    fn u32(&mut self) -> R<u32> {
        if self.b.len() < 4 {
            return Err(CodecError::Malformed("packet truncated"));
        }
        Ok(self.b.get_u32())
    }
    fn take(&mut self, n: usize) -> R<Bytes> {
        if self.b.len() < n {
            return Err(CodecError::Malformed("packet truncated"));
        }
        Ok(self.b.split_to(n))
    }
    fn binary(&mut self) -> R<Bytes> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn string(&mut self) -> R<String> {
        let raw = self.binary()?;
        utf8(&raw)
    }
    fn varint(&mut self) -> R<u32> {
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
    fn done(&self) -> R<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Malformed("unexpected bytes after the packet's fields"))
        }
    }
}

fn utf8(raw: &[u8]) -> R<String> {
    let s = std::str::from_utf8(raw).map_err(|_| CodecError::Malformed("invalid UTF-8 string"))?;
    if s.contains('\0') {
        return Err(CodecError::Malformed("U+0000 in a UTF-8 string"));
    }
    Ok(s.to_string())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
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
fn allowed(id: u8, k: Kind) -> bool {
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

fn set<T>(slot: &mut Option<T>, v: T) -> R<()> {
    if slot.is_some() {
        return Err(CodecError::Protocol("duplicate property"));
    }
    *slot = Some(v);
    Ok(())
}

fn flag(v: u8) -> R<u8> {
    if v > 1 {
        Err(CodecError::Protocol("property value must be 0 or 1"))
    } else {
        Ok(v)
    }
}

fn decode_props(r: &mut Reader, k: Kind) -> R<Properties> {
    let len = r.varint()? as usize;
    let mut pr = Reader { b: r.take(len)?, max_props: r.max_props };
    let mut p = Properties::default();
    while !pr.b.is_empty() {
        let id = pr.varint()?;
        let id = u8::try_from(id).map_err(|_| CodecError::Malformed("unknown property"))?;
        if !matches!(id, 0x01..=0x03 | 0x08 | 0x09 | 0x0B | 0x11..=0x13 | 0x15..=0x19 | 0x1A | 0x1C | 0x1F | 0x21..=0x2A)
        {
            return Err(CodecError::Malformed("unknown property"));
        }
        if !allowed(id, k) {
            return Err(CodecError::Protocol("property not allowed on this packet"));
        }
        match id {
            0x01 => set(&mut p.payload_format_indicator, flag(pr.u8()?)?)?,
            0x02 => set(&mut p.message_expiry_interval, pr.u32()?)?,
            0x03 => set(&mut p.content_type, pr.string()?)?,
            0x08 => set(&mut p.response_topic, pr.string()?)?,
            0x09 => set(&mut p.correlation_data, pr.binary()?)?,
            0x0B => {
                let v = pr.varint()?;
                if v == 0 {
                    return Err(CodecError::Protocol("subscription identifier 0"));
                }
                if k == Kind::Subscribe && !p.subscription_identifiers.is_empty() {
                    return Err(CodecError::Protocol("duplicate property"));
                }
                p.subscription_identifiers.push(v);
            }
            0x11 => set(&mut p.session_expiry_interval, pr.u32()?)?,
            0x12 => set(&mut p.assigned_client_identifier, pr.string()?)?,
            0x13 => set(&mut p.server_keep_alive, pr.u16()?)?,
            0x15 => set(&mut p.authentication_method, pr.string()?)?,
            0x16 => set(&mut p.authentication_data, pr.binary()?)?,
            0x17 => set(&mut p.request_problem_information, flag(pr.u8()?)?)?,
            0x18 => set(&mut p.will_delay_interval, pr.u32()?)?,
            0x19 => set(&mut p.request_response_information, flag(pr.u8()?)?)?,
            0x1A => set(&mut p.response_information, pr.string()?)?,
            0x1C => set(&mut p.server_reference, pr.string()?)?,
            0x1F => set(&mut p.reason_string, pr.string()?)?,
            0x21 => {
                let v = pr.u16()?;
                if v == 0 {
                    return Err(CodecError::Protocol("receive maximum 0"));
                }
                set(&mut p.receive_maximum, v)?
            }
            0x22 => set(&mut p.topic_alias_maximum, pr.u16()?)?,
            0x23 => {
                let v = pr.u16()?;
                if v == 0 {
                    return Err(CodecError::Protocol("topic alias 0"));
                }
                set(&mut p.topic_alias, v)?
            }
            0x24 => set(&mut p.maximum_qos, flag(pr.u8()?)?)?,
            0x25 => set(&mut p.retain_available, flag(pr.u8()?)?)?,
            0x26 => {
                let k = pr.string()?;
                let v = pr.string()?;
                if p.user_properties.len() >= pr.max_props {
                    return Err(CodecError::TooMany("user properties"));
                }
                p.user_properties.push((k, v));
            }
            0x27 => {
                let v = pr.u32()?;
                if v == 0 {
                    return Err(CodecError::Protocol("maximum packet size 0"));
                }
                set(&mut p.maximum_packet_size, v)?
            }
            0x28 => set(&mut p.wildcard_subscription_available, flag(pr.u8()?)?)?,
            0x29 => set(&mut p.subscription_identifier_available, flag(pr.u8()?)?)?,
            _ => set(&mut p.shared_subscription_available, flag(pr.u8()?)?)?,
        }
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(CodecError::Protocol("authentication data without authentication method"));
    }
    Ok(p)
}

fn decode_connect(r: &mut Reader) -> R<Connect> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQIsdp", 3) => Protocol::V31,
        (b"MQTT", l) | (b"MQIsdp", l) => return Err(CodecError::UnsupportedProtocol(l)),
        _ => return Err(CodecError::BadProtocolName),
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(CodecError::Malformed("reserved CONNECT flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_user = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(CodecError::Malformed("will QoS/retain without will flag"));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(CodecError::Malformed("will QoS 3"))?;
    if has_password && !has_user && !protocol.is_v5() {
        return Err(CodecError::Malformed("password without user name"));
    }
    let keep_alive = r.u16()?;
    let properties = if protocol.is_v5() { decode_props(r, Kind::Connect)? } else { Properties::default() };
    let client_id = r.string()?;
    let will = if will_flag {
        let wp = if protocol.is_v5() { decode_props(r, Kind::Will)? } else { Properties::default() };
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties: wp })
    } else {
        None
    };
    let username = if has_user { Some(r.string()?) } else { None };
    let password = if has_password { Some(r.binary()?) } else { None };
    r.done()?;
    Ok(Connect { protocol, clean_start, keep_alive, client_id, will, username, password, properties })
}

fn decode_connack(r: &mut Reader, proto: Protocol) -> R<Packet> {
    let ack = r.u8()?;
    if ack & 0xfe != 0 {
        return Err(CodecError::Malformed("reserved CONNACK flags"));
    }
    let code = r.u8()?;
    let code = if proto.is_v5() {
        code
    } else {
        // 3.1.1 return code → the 5.0 reason code `ConnAck::code` holds (inverse of the encoder).
        match code {
            0 => reason::SUCCESS,
            1 => reason::UNSUPPORTED_PROTOCOL_VERSION,
            2 => reason::CLIENT_IDENTIFIER_NOT_VALID,
            3 => reason::SERVER_UNAVAILABLE,
            4 => reason::BAD_USER_NAME_OR_PASSWORD,
            5 => reason::NOT_AUTHORIZED,
            _ => return Err(CodecError::Malformed("invalid CONNACK return code")),
        }
    };
    let properties = if proto.is_v5() { decode_props(r, Kind::ConnAck)? } else { Properties::default() };
    r.done()?;
    Ok(Packet::ConnAck(ConnAck { session_present: ack & 1 == 1, code, properties }))
}

fn decode_publish(r: &mut Reader, flags: u8, proto: Protocol) -> R<Publish> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(CodecError::Malformed("PUBLISH QoS 3"))?;
    let retain = flags & 0x01 != 0;
    if qos == QoS::AtMostOnce && dup {
        return Err(CodecError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = r.string()?;
    if topic.contains(['+', '#']) {
        return Err(CodecError::TopicNameInvalid("wildcard in a topic name"));
    }
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        let id = r.u16()?;
        if id == 0 {
            return Err(CodecError::Malformed("packet identifier 0"));
        }
        id
    };
    let properties = if proto.is_v5() { decode_props(r, Kind::Publish)? } else { Properties::default() };
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(if proto.is_v5() {
            CodecError::Protocol("empty topic name without topic alias")
        } else {
            CodecError::Malformed("empty topic name")
        });
    }
    let payload = std::mem::take(&mut r.b);
    Ok(Publish { dup, qos, retain, topic, packet_id, payload, properties })
}

fn decode_pubresp(r: &mut Reader, proto: Protocol, _ptype: u8) -> R<PubResp> {
    let packet_id = r.u16()?;
    if packet_id == 0 {
        return Err(CodecError::Malformed("packet identifier 0"));
    }
    let (code, properties) = if proto.is_v5() && !r.b.is_empty() {
        let code = r.u8()?;
        let props = if r.b.is_empty() { Properties::default() } else { decode_props(r, Kind::PubResp)? };
        (code, props)
    } else {
        (reason::SUCCESS, Properties::default())
    };
    r.done()?;
    Ok(PubResp { packet_id, code, properties })
}

fn decode_subscribe(r: &mut Reader, proto: Protocol) -> R<Subscribe> {
    let packet_id = r.u16()?;
    if packet_id == 0 {
        return Err(CodecError::Malformed("packet identifier 0"));
    }
    let properties = if proto.is_v5() { decode_props(r, Kind::Subscribe)? } else { Properties::default() };
    let mut filters = Vec::new();
    while !r.b.is_empty() {
        let filter = r.string()?;
        let o = r.u8()?;
        let options = if proto.is_v5() {
            if o & 0xc0 != 0 {
                return Err(CodecError::Malformed("reserved subscription option bits"));
            }
            let qos = QoS::from_u8(o & 0x03).ok_or(CodecError::Protocol("subscription QoS 3"))?;
            let rh = (o >> 4) & 0x03;
            if rh == 3 {
                return Err(CodecError::Protocol("retain handling 3"));
            }
            SubOptions { qos, no_local: o & 0x04 != 0, retain_as_published: o & 0x08 != 0, retain_handling: rh }
        } else {
            if o & 0xfc != 0 {
                return Err(CodecError::Malformed("reserved subscription option bits"));
            }
            let qos = QoS::from_u8(o).ok_or(CodecError::Malformed("subscription QoS 3"))?;
            SubOptions { qos, ..SubOptions::default() }
        };
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        return Err(CodecError::Protocol("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe { packet_id, filters, properties })
}

fn decode_unsubscribe(r: &mut Reader, proto: Protocol) -> R<Unsubscribe> {
    let packet_id = r.u16()?;
    if packet_id == 0 {
        return Err(CodecError::Malformed("packet identifier 0"));
    }
    let properties = if proto.is_v5() { decode_props(r, Kind::Unsubscribe)? } else { Properties::default() };
    let mut filters = Vec::new();
    while !r.b.is_empty() {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(CodecError::Protocol("UNSUBSCRIBE without topic filters"));
    }
    Ok(Unsubscribe { packet_id, filters, properties })
}

fn decode_suback(r: &mut Reader, proto: Protocol, unsub: bool) -> R<Packet> {
    let packet_id = r.u16()?;
    let kind = if unsub { Kind::UnsubAck } else { Kind::SubAck };
    let properties = if proto.is_v5() { decode_props(r, kind)? } else { Properties::default() };
    if !proto.is_v5() {
        if unsub {
            r.done()?; // 3.1.1 UNSUBACK has no payload
        } else if r.b.iter().any(|c| !matches!(c, 0 | 1 | 2 | 0x80)) {
            return Err(CodecError::Malformed("invalid SUBACK return code"));
        }
    }
    if r.b.is_empty() && (!unsub || proto.is_v5()) {
        return Err(CodecError::Protocol("SUBACK/UNSUBACK without reason codes"));
    }
    let codes = r.b.to_vec();
    r.b.clear();
    Ok(if unsub {
        Packet::UnsubAck(UnsubAck { packet_id, codes, properties })
    } else {
        Packet::SubAck(SubAck { packet_id, codes, properties })
    })
}

fn decode_reason_props(r: &mut Reader, proto: Protocol, k: Kind) -> R<(u8, Properties)> {
    if !proto.is_v5() {
        r.done()?;
        return Ok((reason::SUCCESS, Properties::default()));
    }
    if r.b.is_empty() {
        return Ok((reason::SUCCESS, Properties::default()));
    }
    let code = r.u8()?;
    let props = if r.b.is_empty() { Properties::default() } else { decode_props(r, k)? };
    r.done()?;
    Ok((code, props))
}

// ---------------------------------------------------------------- encoding

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Append `n` as an MQTT variable byte integer.
pub(crate) fn put_varint(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

// Strings and binary data longer than 65_535 bytes cannot be encoded; `encode` has no error
// path, so they are cut (strings at a char boundary) and `*_len` agree with what is written.
// The broker never builds such values from decoded input (everything it echoes was decoded
// from a u16-length field or is validated by the connection).

fn cut_str(s: &str) -> &str {
    let mut n = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    s.get(..n).unwrap_or_default()
}

fn cut_bin(b: &[u8]) -> &[u8] {
    b.get(..usize::from(u16::MAX)).unwrap_or(b)
}

/// Encoded length of a UTF-8 string field (length prefix included).
fn str_len(s: &str) -> usize {
    2 + cut_str(s).len()
}

/// Encoded length of a binary data field (length prefix included).
fn bin_len(b: &[u8]) -> usize {
    2 + cut_bin(b).len()
}

fn put_str(out: &mut BytesMut, s: &str) {
    let s = cut_str(s);
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn put_bin(out: &mut BytesMut, b: &[u8]) {
    let b = cut_bin(b);
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

/// Subscription identifiers are variable byte integers; out-of-range values are clamped.
fn sub_id(v: u32) -> usize {
    (v as usize).min(MAX_REMAINING)
}

/// Encoded length of the property block's contents (without its length prefix).
fn props_len(p: &Properties) -> usize {
    let s = |o: &Option<String>| o.as_ref().map_or(0, |v| 1 + str_len(v));
    let b = |o: &Option<Bytes>| o.as_ref().map_or(0, |v| 1 + bin_len(v));
    let n1 = |o: &Option<u8>| o.map_or(0, |_| 2);
    let n2 = |o: &Option<u16>| o.map_or(0, |_| 3);
    let n4 = |o: &Option<u32>| o.map_or(0, |_| 5);
    n1(&p.payload_format_indicator)
        + n4(&p.message_expiry_interval)
        + s(&p.content_type)
        + s(&p.response_topic)
        + b(&p.correlation_data)
        + p.subscription_identifiers.iter().map(|v| 1 + varint_len(sub_id(*v))).sum::<usize>()
        + n4(&p.session_expiry_interval)
        + s(&p.assigned_client_identifier)
        + n2(&p.server_keep_alive)
        + s(&p.authentication_method)
        + b(&p.authentication_data)
        + n1(&p.request_problem_information)
        + n4(&p.will_delay_interval)
        + n1(&p.request_response_information)
        + s(&p.response_information)
        + s(&p.server_reference)
        + s(&p.reason_string)
        + n2(&p.receive_maximum)
        + n2(&p.topic_alias_maximum)
        + n2(&p.topic_alias)
        + n1(&p.maximum_qos)
        + n1(&p.retain_available)
        + p.user_properties.iter().map(|(k, v)| 1 + str_len(k) + str_len(v)).sum::<usize>()
        + n4(&p.maximum_packet_size)
        + n1(&p.wildcard_subscription_available)
        + n1(&p.subscription_identifier_available)
        + n1(&p.shared_subscription_available)
}

fn put_props(out: &mut BytesMut, p: &Properties) {
    put_varint(out, props_len(p));
    macro_rules! put {
        ($field:expr, $id:expr, $w:ident) => {
            if let Some(v) = &$field {
                out.put_u8($id);
                put!(@ $w, v);
            }
        };
        (@ u8, $v:expr) => { out.put_u8(*$v) };
        (@ u16, $v:expr) => { out.put_u16(*$v) };
        (@ u32, $v:expr) => { out.put_u32(*$v) };
        (@ str, $v:expr) => { put_str(out, $v) };
        (@ bin, $v:expr) => { put_bin(out, $v) };
    }
    put!(p.payload_format_indicator, 0x01, u8);
    put!(p.message_expiry_interval, 0x02, u32);
    put!(p.content_type, 0x03, str);
    put!(p.response_topic, 0x08, str);
    put!(p.correlation_data, 0x09, bin);
    for id in &p.subscription_identifiers {
        out.put_u8(0x0B);
        put_varint(out, sub_id(*id));
    }
    put!(p.session_expiry_interval, 0x11, u32);
    put!(p.assigned_client_identifier, 0x12, str);
    put!(p.server_keep_alive, 0x13, u16);
    put!(p.authentication_method, 0x15, str);
    put!(p.authentication_data, 0x16, bin);
    put!(p.request_problem_information, 0x17, u8);
    put!(p.will_delay_interval, 0x18, u32);
    put!(p.request_response_information, 0x19, u8);
    put!(p.response_information, 0x1A, str);
    put!(p.server_reference, 0x1C, str);
    put!(p.reason_string, 0x1F, str);
    put!(p.receive_maximum, 0x21, u16);
    put!(p.topic_alias_maximum, 0x22, u16);
    put!(p.topic_alias, 0x23, u16);
    put!(p.maximum_qos, 0x24, u8);
    put!(p.retain_available, 0x25, u8);
    for (k, v) in &p.user_properties {
        out.put_u8(0x26);
        put_str(out, k);
        put_str(out, v);
    }
    put!(p.maximum_packet_size, 0x27, u32);
    put!(p.wildcard_subscription_available, 0x28, u8);
    put!(p.subscription_identifier_available, 0x29, u8);
    put!(p.shared_subscription_available, 0x2A, u8);
}

fn props_block_len(p: &Properties) -> usize {
    let n = props_len(p);
    varint_len(n) + n
}

/// Protocol a packet is encoded with: CONNECT declares its own version (`Connect::protocol`)
/// so that the level byte and the presence of properties always agree; everything else uses
/// the connection's.
fn wire_protocol(packet: &Packet, proto: Protocol) -> Protocol {
    match packet {
        Packet::Connect(c) => c.protocol,
        _ => proto,
    }
}

/// (first byte, remaining length) of `packet`, or None when it is not sent for `proto`.
fn header(packet: &Packet, proto: Protocol) -> Option<(u8, usize)> {
    let v5 = proto.is_v5();
    let pl = |p: &Properties| if v5 { props_block_len(p) } else { 0 };
    Some(match packet {
        Packet::Connect(c) => {
            let name = if c.protocol == Protocol::V31 { 6 } else { 4 };
            let mut n = 2 + name + 1 + 1 + 2 + pl(&c.properties) + str_len(&c.client_id);
            if let Some(w) = &c.will {
                n += pl(&w.properties) + str_len(&w.topic) + bin_len(&w.payload);
            }
            n += c.username.as_deref().map_or(0, str_len);
            n += c.password.as_deref().map_or(0, bin_len);
            (0x10, n)
        }
        Packet::ConnAck(a) => (0x20, 2 + pl(&a.properties)),
        Packet::Publish(p) => {
            let mut b0 = 0x30 | (p.qos.as_u8() << 1);
            if p.dup && p.qos != QoS::AtMostOnce {
                b0 |= 0x08; // DUP is never sent on QoS 0 (the decoder rejects it)
            }
            if p.retain {
                b0 |= 0x01;
            }
            let id = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
            (b0, str_len(&p.topic) + id + pl(&p.properties) + p.payload.len())
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            let b0 = match packet {
                Packet::PubAck(_) => 0x40,
                Packet::PubRec(_) => 0x50,
                Packet::PubRel(_) => 0x62,
                _ => 0x70,
            };
            let n = if !v5 || (r.code == 0 && r.properties == Properties::default()) {
                2
            } else if r.properties == Properties::default() {
                3
            } else {
                3 + props_block_len(&r.properties)
            };
            (b0, n)
        }
        Packet::Subscribe(s) => {
            (0x82, 2 + pl(&s.properties) + s.filters.iter().map(|f| str_len(&f.filter) + 1).sum::<usize>())
        }
        Packet::SubAck(s) => (0x90, 2 + pl(&s.properties) + s.codes.len()),
        Packet::Unsubscribe(u) => (0xA2, 2 + pl(&u.properties) + u.filters.iter().map(|f| str_len(f)).sum::<usize>()),
        Packet::UnsubAck(u) => (0xB0, 2 + if v5 { props_block_len(&u.properties) + u.codes.len() } else { 0 }),
        Packet::PingReq => (0xC0, 0),
        Packet::PingResp => (0xD0, 0),
        Packet::Disconnect(d) => {
            let n = if !v5 || (d.code == 0 && d.properties == Properties::default()) {
                0
            } else {
                1 + props_block_len(&d.properties)
            };
            (0xE0, n)
        }
        Packet::Auth(a) => {
            if !v5 {
                return None;
            }
            let n = if a.code == 0 && a.properties == Properties::default() {
                0
            } else {
                1 + props_block_len(&a.properties)
            };
            (0xF0, n)
        }
    })
}

/// Length `encode` would write (0 for AUTH to 3.1.1). For a packet too large for MQTT at all
/// (remaining length > 268_435_455) this is its nominal size, larger than any Maximum Packet
/// Size, and `encode` writes nothing.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    let protocol = wire_protocol(packet, protocol);
    header(packet, protocol).map_or(0, |(_, n)| 1 + varint_len(n) + n)
}

/// Append the encoding of `packet` for `protocol` to `out`. 3.1.1 (and 3.1): no properties or
/// reason codes; CONNACK codes map through `reason::v3_connack_code`; SUBACK failures become
/// 0x80; AUTH writes nothing. CONNECT is encoded for its own `Connect::protocol`.
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) {
    let protocol = wire_protocol(packet, protocol);
    let Some((b0, len)) = header(packet, protocol) else { return };
    if len > MAX_REMAINING {
        return;
    }
    let v5 = protocol.is_v5();
    out.reserve(1 + varint_len(len) + len);
    out.put_u8(b0);
    put_varint(out, len);
    match packet {
        Packet::Connect(c) => {
            if c.protocol == Protocol::V31 {
                put_str(out, "MQIsdp");
            } else {
                put_str(out, "MQTT");
            }
            out.put_u8(c.protocol.level());
            let mut f = 0u8;
            if c.clean_start {
                f |= 0x02;
            }
            if let Some(w) = &c.will {
                f |= 0x04 | (w.qos.as_u8() << 3);
                if w.retain {
                    f |= 0x20;
                }
            }
            if c.password.is_some() {
                f |= 0x40;
            }
            if c.username.is_some() {
                f |= 0x80;
            }
            out.put_u8(f);
            out.put_u16(c.keep_alive);
            if v5 {
                put_props(out, &c.properties);
            }
            put_str(out, &c.client_id);
            if let Some(w) = &c.will {
                if v5 {
                    put_props(out, &w.properties);
                }
                put_str(out, &w.topic);
                put_bin(out, &w.payload);
            }
            if let Some(u) = &c.username {
                put_str(out, u);
            }
            if let Some(p) = &c.password {
                put_bin(out, p);
            }
        }
        Packet::ConnAck(a) => {
            out.put_u8(u8::from(a.session_present));
            out.put_u8(if v5 { a.code } else { reason::v3_connack_code(a.code) });
            if v5 {
                put_props(out, &a.properties);
            }
        }
        Packet::Publish(p) => {
            put_str(out, &p.topic);
            if p.qos != QoS::AtMostOnce {
                out.put_u16(p.packet_id);
            }
            if v5 {
                put_props(out, &p.properties);
            }
            out.put_slice(&p.payload);
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            out.put_u16(r.packet_id);
            if len >= 3 {
                out.put_u8(r.code);
            }
            if len > 3 {
                put_props(out, &r.properties);
            }
        }
        Packet::Subscribe(s) => {
            out.put_u16(s.packet_id);
            if v5 {
                put_props(out, &s.properties);
            }
            for f in &s.filters {
                put_str(out, &f.filter);
                let o = &f.options;
                let mut b = o.qos.as_u8();
                if v5 {
                    b |=
                        u8::from(o.no_local) << 2 | u8::from(o.retain_as_published) << 3 | (o.retain_handling & 3) << 4;
                }
                out.put_u8(b);
            }
        }
        Packet::SubAck(s) => {
            out.put_u16(s.packet_id);
            if v5 {
                put_props(out, &s.properties);
                out.put_slice(&s.codes);
            } else {
                for c in &s.codes {
                    out.put_u8(if *c >= 0x80 { 0x80 } else { *c });
                }
            }
        }
        Packet::Unsubscribe(u) => {
            out.put_u16(u.packet_id);
            if v5 {
                put_props(out, &u.properties);
            }
            for f in &u.filters {
                put_str(out, f);
            }
        }
        Packet::UnsubAck(u) => {
            out.put_u16(u.packet_id);
            if v5 {
                put_props(out, &u.properties);
                out.put_slice(&u.codes);
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(Disconnect { code, properties }) | Packet::Auth(Auth { code, properties }) => {
            if len > 0 {
                out.put_u8(*code);
                put_props(out, properties);
            }
        }
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
