//! Acknowledgements in packet order, some waiting for a cluster commit.

use super::*;

/// An acknowledgement in the order MQTT requires (the order of the packets it answers).
pub(super) enum Pending {
    Ready(Box<Packet>),
    /// Waiting for a cluster commit; then `then` is sent.
    Wait(Commit, After),
    /// The deliveries of a PUBLISH that arrived while a QoS 2 message of this connection was
    /// being committed: made after that message's, so every subscriber gets this publisher's
    /// messages in the order it sent them (MQTT 4.6), whatever their QoS.
    Route(Vec<Deferred>),
}

pub(super) enum After {
    /// PUBACK / PUBREC for an inbound PUBLISH (QoS 2: awaiting PUBREL from then on).
    Publish {
        pkid: u16,
        qos: QoS,
        code: u8,
        /// A QoS 2 message's deliveries to connected sessions, made once its packet id is
        /// committed as received (and not if it was a resend).
        deferred: Vec<Deferred>,
    },
    /// SUBACK; `committed` are the positions whose subscriptions were proposed, `retained`
    /// what to send after it (filter, granted QoS, subscription id, only if new).
    SubAck {
        packet_id: u16,
        codes: Vec<u8>,
        committed: Vec<usize>,
        retained: Vec<(String, QoS, Option<u32>)>,
    },
    UnsubAck {
        packet_id: u16,
        codes: Vec<u8>,
        committed: Vec<usize>,
    },
    /// PUBREL for an outbound QoS 2 delivery, once its durable copy's removal is committed.
    PubRel {
        pkid: u16,
    },
    /// PUBCOMP for an inbound QoS 2 message, once its release is committed; `found`: this
    /// node's view held the packet id.
    PubComp {
        pkid: u16,
        found: bool,
    },
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Conn<R, W> {
    /// Send an acknowledgement: now, or behind those still waiting for a commit.
    pub(super) fn send(&mut self, live: &mut Live, p: Packet) {
        if live.pending.is_empty() {
            codec::encode(&p, live.protocol, &mut self.outbuf);
        } else {
            live.pending.push_back(Pending::Ready(Box::new(p)));
        }
    }

    /// A durable (cluster-queued) delivery was completed by the client: commit its ack.
    pub(super) fn durable_done(&self, live: &Live, seq: Option<u64>) {
        if let (Some(seq), Some(c)) = (seq, self.broker.replica()) {
            c.ack(&live.client_id, seq);
        }
    }

    /// The commit at the front of the pending queue finished: send its acknowledgement and
    /// everything ready behind it.
    pub(super) fn resolve_front(&mut self, live: &mut Live, r: Result<Vec<Outcome>, CommitError>) -> Option<Close> {
        let Some(Pending::Wait(_, after)) = live.pending.pop_front() else { return None };
        let failed = r.as_ref().err().cloned();
        match after {
            After::Publish { pkid, qos, code, deferred } => {
                if !deferred.is_empty() {
                    live.held -= 1;
                }
                if let Some(e) = failed {
                    // Not acknowledged: the client must resend it (to a node that can commit),
                    // and the replicated state (not this view) says whether it is a resend.
                    if qos == QoS::ExactlyOnce {
                        live.session.lock().awaiting_rel.remove(&pkid);
                    }
                    tracing::info!(peer = %self.peer, error = %e, "publish not committed");
                    return Some(Close::Server(reason::SERVER_UNAVAILABLE, "cluster unavailable"));
                }
                // A connected persistent subscriber's replicated queue past half its bound:
                // this publisher waits before reading on (flow control for a slow reader; an
                // offline session never congests, its queue bound drops instead).
                let mut resend = false;
                for o in r.into_iter().flatten() {
                    match o {
                        Outcome::Enqueued { congested: Some((cid, slow)) }
                            if live.throttle.is_none() && *cid != *live.client_id =>
                        {
                            live.throttle = Some(slow);
                        }
                        Outcome::Duplicate => resend = true,
                        _ => {}
                    }
                }
                if !resend {
                    self.route(live, deferred);
                }
                match qos {
                    QoS::AtLeastOnce => {
                        codec::encode(&Packet::PubAck(PubResp::new(pkid, code)), live.protocol, &mut self.outbuf)
                    }
                    _ => {
                        {
                            let mut st = live.session.lock();
                            st.awaiting_rel.insert(pkid);
                            st.dirty = true;
                        }
                        codec::encode(&Packet::PubRec(PubResp::new(pkid, code)), live.protocol, &mut self.outbuf);
                    }
                }
            }
            After::SubAck { packet_id, mut codes, committed, retained } => {
                if failed.is_some() {
                    for i in committed {
                        codes[i] = reason::UNSPECIFIED_ERROR;
                    }
                }
                let ack = SubAck { packet_id, codes, properties: Properties::default() };
                codec::encode(&Packet::SubAck(ack), live.protocol, &mut self.outbuf);
                if failed.is_none() {
                    for (inner, granted, sub_id) in retained {
                        for m in self.broker.retained_matching(&inner) {
                            let qos = m.qos.min(granted);
                            let d = Delivery {
                                msg: m,
                                qos,
                                retain: true,
                                sub_ids: sub_id.into_iter().collect(),
                                seq: None,
                            };
                            self.broker.offer(&live.session, d);
                        }
                    }
                }
            }
            After::PubRel { pkid } => {
                if let Some(e) = failed {
                    // Not released: the client keeps the packet id, and whichever node serves
                    // the session next sends the message again under it.
                    tracing::info!(peer = %self.peer, error = %e, "QoS 2 completion not committed");
                    return Some(Close::Server(reason::SERVER_UNAVAILABLE, "cluster unavailable"));
                }
                codec::encode(&Packet::PubRel(PubResp::new(pkid, reason::SUCCESS)), live.protocol, &mut self.outbuf);
            }
            After::PubComp { pkid, found } => {
                match failed {
                    Some(e) => {
                        // Not released: the client sends PUBREL again (to a node that can
                        // commit), the packet id still held.
                        tracing::info!(peer = %self.peer, error = %e, "QoS 2 release not committed");
                        return Some(Close::Server(reason::SERVER_UNAVAILABLE, "cluster unavailable"));
                    }
                    None => {
                        let held = found || !matches!(r.as_ref().map(|v| v.first()), Ok(Some(Outcome::Stale)));
                        let code = if held { reason::SUCCESS } else { reason::PACKET_IDENTIFIER_NOT_FOUND };
                        codec::encode(&Packet::PubComp(PubResp::new(pkid, code)), live.protocol, &mut self.outbuf);
                    }
                }
            }
            After::UnsubAck { packet_id, mut codes, committed } => {
                if failed.is_some() {
                    for i in committed {
                        codes[i] = reason::UNSPECIFIED_ERROR;
                    }
                }
                let ack = UnsubAck { packet_id, codes, properties: Properties::default() };
                codec::encode(&Packet::UnsubAck(ack), live.protocol, &mut self.outbuf);
            }
        }
        while !matches!(live.pending.front(), None | Some(Pending::Wait(..))) {
            match live.pending.pop_front() {
                Some(Pending::Ready(p)) => codec::encode(&p, live.protocol, &mut self.outbuf),
                Some(Pending::Route(deferred)) => {
                    live.held -= 1;
                    self.route(live, deferred);
                }
                _ => {}
            }
        }
        None
    }

    /// Make deliveries held back until now; the publisher waits on what they congest.
    pub(super) fn route(&mut self, live: &mut Live, deferred: Vec<Deferred>) {
        if deferred.is_empty() {
            return;
        }
        if let Some(slow) = self.broker.run_deferred(deferred) {
            if live.throttle.is_none() && !slow.is_session(&live.session) {
                live.throttle = Some(slow);
            }
        }
    }
}

/// The result of the commit at the front of the queue (never resolves if there is none).
pub(super) async fn front_commit(pending: &mut VecDeque<Pending>) -> Result<Vec<Outcome>, CommitError> {
    match pending.front_mut() {
        Some(Pending::Wait(commit, _)) => commit.await,
        _ => std::future::pending().await,
    }
}
