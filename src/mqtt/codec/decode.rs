//! Decoding each packet type's variable header, properties and payload.

use super::*;

pub(super) fn decode_props(r: &mut Reader, k: Kind) -> R<Properties> {
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

pub(super) fn decode_connect(r: &mut Reader) -> R<Connect> {
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

pub(super) fn decode_connack(r: &mut Reader, proto: Protocol) -> R<Packet> {
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

pub(super) fn decode_publish(r: &mut Reader, flags: u8, proto: Protocol) -> R<Publish> {
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

pub(super) fn decode_pubresp(r: &mut Reader, proto: Protocol, _ptype: u8) -> R<PubResp> {
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

pub(super) fn decode_subscribe(r: &mut Reader, proto: Protocol) -> R<Subscribe> {
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

pub(super) fn decode_unsubscribe(r: &mut Reader, proto: Protocol) -> R<Unsubscribe> {
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

pub(super) fn decode_suback(r: &mut Reader, proto: Protocol, unsub: bool) -> R<Packet> {
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

pub(super) fn decode_reason_props(r: &mut Reader, proto: Protocol, k: Kind) -> R<(u8, Properties)> {
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
