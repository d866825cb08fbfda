//! From the session queue to the socket: the inflight window, PUBLISH encoding, flushing.

use super::*;

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Conn<R, W> {
    /// Move messages from the session queue to the write buffer within the inflight window.
    pub(super) fn fill_outbound(&mut self, live: &Live) {
        let now = now_ms();
        let is_link = live.session.link.load(std::sync::atomic::Ordering::Relaxed);
        let hooks = self.broker.link_hooks().filter(|_| is_link).map(|h| &**h);
        let mut st = live.session.lock();
        if st.conn.as_ref().is_none_or(|c| c.conn_id != live.conn_id) {
            // Taken over (its kick is on the way): the queue is the new connection's now. A
            // message moved into the inflight window here would be written to this dying
            // socket after the new connection resent the window, and wait there until the
            // client's next reconnect.
            return;
        }
        while self.outbuf.len() < HIGH_WATER {
            let Some(front) = st.queue.front() else { break };
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= usize::from(st.window) {
                break;
            }
            let Some(d) = st.queue.pop_front() else { break };
            st.dirty = true;
            if st.queue.len() == self.broker.mqtt.max_mqueue_len / 4 {
                live.session.drained.notify_waiters();
            }
            if d.msg.is_expired(now) {
                inc(&self.broker.metrics.messages_expired);
                continue;
            }
            if !is_link && !self.broker.may_read(&live.client_id, live.username.as_deref(), &d.msg.topic) {
                // Read access is checked per message: discarded as if delivered.
                inc(&self.broker.metrics.messages_denied);
                if let (Some(seq), Some(c)) = (d.seq, self.broker.replica()) {
                    c.ack(&live.client_id, seq);
                }
                continue;
            }
            let pkid = if d.qos == QoS::AtMostOnce {
                0
            } else {
                match st.pkid_for(d.seq) {
                    Some(id) => id,
                    None => {
                        st.queue.push_front(d);
                        break;
                    }
                }
            };
            let before = self.outbuf.len();
            encode_delivery(&d, pkid, false, hooks, live.protocol, now, &mut self.outbuf);
            if self.outbuf.len() - before > live.max_out {
                // Too large for this client (MQTT-3.1.2-25): discarded as if delivered.
                self.outbuf.truncate(before);
                inc(&self.broker.metrics.messages_dropped);
                continue;
            }
            inc(&self.broker.metrics.messages_out[d.qos.as_u8() as usize]);
            if d.qos != QoS::AtMostOnce {
                st.inflight.insert(pkid, Inflight { delivery: d, released: false });
            }
        }
    }

    pub(super) async fn send_disconnect(&mut self, live: &Live, code: u8, why: Option<&'static str>) {
        if live.protocol.is_v5() {
            let mut d = Disconnect::new(code);
            if live.problem_info {
                d.properties.reason_string = why.map(str::to_string);
            }
            codec::encode(&Packet::Disconnect(d), live.protocol, &mut self.outbuf);
        }
        self.flush_now().await;
    }

    /// Write out the buffer, bounded to one second (the peer may not be reading).
    pub(super) async fn flush_now(&mut self) {
        let wr = &mut self.wr;
        let buf = &mut self.outbuf;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while !buf.is_empty() {
                match wr.write_buf(buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = wr.flush().await;
        })
        .await;
        self.outbuf.clear();
    }
}

/// Encode one delivery as PUBLISH. The common cases (3.1.1, or 5.0 without properties) are
/// written directly without building a `Publish`.
/// With `link` (the session of another cluster's link client: its hooks), a durable delivery
/// carries its sequence number and original QoS (the receiving cluster dedupes by them).
pub fn encode_delivery(
    d: &Delivery,
    pkid: u16,
    dup: bool,
    link: Option<&dyn LinkHooks>,
    protocol: Protocol,
    now: u64,
    out: &mut BytesMut,
) {
    let msg = &d.msg;
    let remaining_expiry = msg.remaining_secs(now);
    let stamp = d.seq.zip(link).filter(|_| protocol.is_v5());
    let plain_props = msg.properties == Properties::default()
        && d.sub_ids.is_empty()
        && remaining_expiry.is_none()
        && stamp.is_none();
    if !protocol.is_v5() || plain_props {
        let topic = msg.topic.as_bytes();
        let mut len = 2 + topic.len() + msg.payload.len();
        if d.qos != QoS::AtMostOnce {
            len += 2;
        }
        if protocol.is_v5() {
            len += 1;
        }
        let mut b0 = 0x30 | (d.qos.as_u8() << 1);
        if dup && d.qos != QoS::AtMostOnce {
            b0 |= 0x08;
        }
        if d.retain {
            b0 |= 0x01;
        }
        out.reserve(len + 5);
        out.put_u8(b0);
        codec::put_varint(out, len);
        out.put_u16(topic.len() as u16);
        out.put_slice(topic);
        if d.qos != QoS::AtMostOnce {
            out.put_u16(pkid);
        }
        if protocol.is_v5() {
            out.put_u8(0);
        }
        out.put_slice(&msg.payload);
        return;
    }
    let mut properties = msg.properties.clone();
    properties.subscription_identifiers = d.sub_ids.clone();
    properties.message_expiry_interval = remaining_expiry;
    if let Some((seq, hooks)) = stamp {
        hooks.stamp(seq, msg.qos, &mut properties);
    }
    let p = Publish {
        dup: dup && d.qos != QoS::AtMostOnce,
        qos: d.qos,
        retain: d.retain,
        topic: msg.topic.to_string(),
        packet_id: pkid,
        payload: msg.payload.clone(),
        properties,
    };
    codec::encode(&Packet::Publish(p), protocol, out);
}
