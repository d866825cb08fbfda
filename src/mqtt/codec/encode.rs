//! Encoding packets (the server's and, for round trips, the client's).

use super::*;

pub(super) fn varint_len(n: usize) -> usize {
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

pub(super) fn cut_str(s: &str) -> &str {
    let mut n = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    s.get(..n).unwrap_or_default()
}

pub(super) fn cut_bin(b: &[u8]) -> &[u8] {
    b.get(..usize::from(u16::MAX)).unwrap_or(b)
}

/// Encoded length of a UTF-8 string field (length prefix included).
pub(super) fn str_len(s: &str) -> usize {
    2 + cut_str(s).len()
}

/// Encoded length of a binary data field (length prefix included).
pub(super) fn bin_len(b: &[u8]) -> usize {
    2 + cut_bin(b).len()
}

pub(super) fn put_str(out: &mut BytesMut, s: &str) {
    let s = cut_str(s);
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

pub(super) fn put_bin(out: &mut BytesMut, b: &[u8]) {
    let b = cut_bin(b);
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

/// Subscription identifiers are variable byte integers; out-of-range values are clamped.
pub(super) fn sub_id(v: u32) -> usize {
    (v as usize).min(MAX_REMAINING)
}

/// Encoded length of the property block's contents (without its length prefix).
pub(super) fn props_len(p: &Properties) -> usize {
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

pub(super) fn put_props(out: &mut BytesMut, p: &Properties) {
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

pub(super) fn props_block_len(p: &Properties) -> usize {
    let n = props_len(p);
    varint_len(n) + n
}

/// Protocol a packet is encoded with: CONNECT declares its own version (`Connect::protocol`)
/// so that the level byte and the presence of properties always agree; everything else uses
/// the connection's.
pub(super) fn wire_protocol(packet: &Packet, proto: Protocol) -> Protocol {
    match packet {
        Packet::Connect(c) => c.protocol,
        _ => proto,
    }
}

/// (first byte, remaining length) of `packet`, or None when it is not sent for `proto`.
pub(super) fn header(packet: &Packet, proto: Protocol) -> Option<(u8, usize)> {
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
