//! The routes one link holds at the remote, kept exact at any number of routes.
//!
//! A route is the intersection of a local filter (any session of this cluster, shared groups by
//! their inner filter) with one of the link's `topics`: `#` subscribed here with
//! `topics = ["linked/#"]` is the route `linked/#`, not `#`. The set follows the broker's route
//! table incrementally (filters that appeared or went, with reference counts), never by walking
//! the sessions. Changes go to the remote in SUBSCRIBEs of up to [`BATCH`] filters that fit its
//! maximum packet size, with at most [`OUTSTANDING`] unacknowledged; what the remote refuses
//! (a SUBACK code ≥ 0x80: a commit that timed out there, a minority node) is kept with its reason,
//! shown in the link status, and retried.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule, SubscribeReasonCode, UnsubAckReason};
use rumqttc::v5::mqttbytes::QoS as RQoS;
use rumqttc::v5::AsyncClient;
use tokio::time::Instant;

use crate::broker::router::{RouteChanges, Router};
use crate::mqtt::topic;

/// Filters per SUBSCRIBE at most (EMQX replicates routes in batches of this order).
pub const BATCH: usize = 4000;
/// Route requests (SUBSCRIBE/UNSUBSCRIBE) sent and not yet acknowledged, at most: each is one
/// commit at the remote; more in flight would only queue there.
pub(super) const OUTSTANDING: usize = 8;
/// Bytes of a SUBSCRIBE besides its filters.
const PACKET_OVERHEAD: usize = 64;

pub struct RouteSync {
    topics: Vec<String>,
    /// The route table version this set reflects (None: not read yet).
    version: Option<u64>,
    /// route → how many local filters produce it
    wanted: HashMap<String, u32>,
    /// What the remote holds: its CONNACK list, then what it acknowledged.
    held: BTreeSet<String>,
    /// Routes whose state at the remote may differ from what is wanted.
    dirty: BTreeSet<String>,
    /// Routes with a request in flight.
    busy: HashSet<String>,
    /// Requests written, in order, waiting for the packet id rumqttc gives them.
    sent_subs: VecDeque<Vec<String>>,
    sent_unsubs: VecDeque<String>,
    subs: HashMap<u16, Vec<String>>,
    unsubs: HashMap<u16, String>,
    /// Refused by the remote: route → why. Retried at `retry_at`.
    refused: BTreeMap<String, String>,
    retry_at: Option<Instant>,
    retry_every: Duration,
    /// Largest SUBSCRIBE the remote takes.
    max_packet: usize,
}

impl RouteSync {
    pub fn new(topics: &[String], retry_every: Duration) -> RouteSync {
        RouteSync {
            topics: topics.to_vec(),
            version: None,
            wanted: HashMap::new(),
            held: BTreeSet::new(),
            dirty: BTreeSet::new(),
            busy: HashSet::new(),
            sent_subs: VecDeque::new(),
            sent_unsubs: VecDeque::new(),
            subs: HashMap::new(),
            unsubs: HashMap::new(),
            refused: BTreeMap::new(),
            retry_at: None,
            retry_every,
            max_packet: 1024 * 1024,
        }
    }

    /// A new connection: the remote holds `held` (its CONNACK list) and takes packets up to
    /// `max_packet` bytes. Everything is compared again.
    pub fn connected(&mut self, held: BTreeSet<String>, max_packet: Option<u32>) {
        self.held = held;
        self.max_packet = max_packet.map_or(usize::MAX, |m| m as usize).clamp(4096, 16 * 1024 * 1024);
        self.busy.clear();
        self.sent_subs.clear();
        self.sent_unsubs.clear();
        self.subs.clear();
        self.unsubs.clear();
        self.refused.clear();
        self.retry_at = None;
        self.dirty = self.held.iter().chain(self.wanted.keys()).cloned().collect();
    }

    /// Take in the route table's changes since last time.
    pub fn follow(&mut self, router: &Router) {
        match router.route_changes(self.version) {
            RouteChanges::Delta(v, changes) => {
                self.version = Some(v);
                for (filter, present) in changes {
                    self.local_filter(&filter, present);
                }
            }
            RouteChanges::Full(v, filters) => {
                self.version = Some(v);
                let old: Vec<String> = self.wanted.keys().cloned().collect();
                self.wanted.clear();
                for f in filters {
                    self.local_filter(&f, true);
                }
                self.dirty.extend(old);
            }
        }
    }

    fn local_filter(&mut self, filter: &str, present: bool) {
        for t in &self.topics {
            let Some(route) = topic::intersection(filter, t) else { continue };
            if present {
                let n = self.wanted.entry(route.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    self.dirty.insert(route);
                }
            } else if let Some(n) = self.wanted.get_mut(&route) {
                *n -= 1;
                if *n == 0 {
                    self.wanted.remove(&route);
                    self.dirty.insert(route);
                }
            }
        }
    }

    /// Whether `send` has something to do now.
    pub fn has_work(&self) -> bool {
        self.outstanding() < OUTSTANDING
            && self.dirty.iter().any(|r| !self.busy.contains(r) && !self.refused.contains_key(r))
    }

    /// When refused routes are due to be tried again.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Refused routes become due again.
    pub fn retry(&mut self) {
        self.retry_at = None;
        let again: Vec<String> = std::mem::take(&mut self.refused).into_keys().collect();
        self.dirty.extend(again);
    }

    /// Send what differs, within the in-flight bound. Err: the client's queue is gone.
    pub fn send(&mut self, client: &AsyncClient) -> Result<(), String> {
        let mut add: Vec<String> = Vec::new();
        let mut add_bytes = PACKET_OVERHEAD;
        // Walk the dirty routes in order from a cursor (one lookup each): what is left when the
        // in-flight bound is reached stays for the next call.
        let mut cursor: Option<String> = None;
        loop {
            let next = match &cursor {
                None => self.dirty.iter().find(|r| !self.busy.contains(*r) && !self.refused.contains_key(*r)),
                Some(c) => self
                    .dirty
                    .range::<String, _>((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                    .find(|r| !self.busy.contains(*r) && !self.refused.contains_key(*r)),
            };
            let Some(r) = next.cloned() else { break };
            cursor = Some(r.clone());
            let want = self.wanted.contains_key(&r);
            if want == self.held.contains(&r) {
                self.dirty.remove(&r);
                continue;
            }
            let outstanding = self.outstanding() + usize::from(!add.is_empty());
            if want {
                let cost = r.len() + 3;
                if !add.is_empty() && (add.len() >= BATCH || add_bytes + cost > self.max_packet) {
                    if outstanding >= OUTSTANDING {
                        break;
                    }
                    self.subscribe(client, std::mem::take(&mut add))?;
                    add_bytes = PACKET_OVERHEAD;
                }
                add_bytes += cost;
                add.push(r);
            } else {
                if outstanding >= OUTSTANDING {
                    break;
                }
                client.try_unsubscribe(r.clone()).map_err(|e| format!("unsubscribe: {e}"))?;
                tracing::info!(route = %r, "link: unsubscribing");
                self.dirty.remove(&r);
                self.busy.insert(r.clone());
                self.sent_unsubs.push_back(r);
            }
        }
        self.subscribe(client, add)
    }

    fn outstanding(&self) -> usize {
        self.sent_subs.len() + self.sent_unsubs.len() + self.subs.len() + self.unsubs.len()
    }

    fn subscribe(&mut self, client: &AsyncClient, routes: Vec<String>) -> Result<(), String> {
        match routes.as_slice() {
            [one] => tracing::info!(route = %one, "link: subscribing"),
            [first, ..] => tracing::info!(routes = routes.len(), first = %first, "link: subscribing"),
            [] => return Ok(()),
        }
        let filters: Vec<Filter> = routes
            .iter()
            .map(|f| Filter {
                path: f.clone(),
                qos: RQoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::Never,
            })
            .collect();
        client.try_subscribe_many(filters).map_err(|e| format!("subscribe: {e}"))?;
        for r in &routes {
            self.busy.insert(r.clone());
            self.dirty.remove(r);
        }
        self.sent_subs.push_back(routes);
        Ok(())
    }

    /// rumqttc wrote a SUBSCRIBE (in the order they were sent) with this packet id.
    pub fn subscribe_sent(&mut self, pkid: u16) {
        if let Some(routes) = self.sent_subs.pop_front() {
            self.subs.insert(pkid, routes);
        }
    }

    pub fn unsubscribe_sent(&mut self, pkid: u16) {
        if let Some(route) = self.sent_unsubs.pop_front() {
            self.unsubs.insert(pkid, route);
        }
    }

    /// The remote's SUBACK: held, or refused with a reason (retried later).
    pub fn suback(&mut self, pkid: u16, codes: &[SubscribeReasonCode], reason: Option<&str>) {
        let Some(routes) = self.subs.remove(&pkid) else { return };
        let mut refused = 0;
        for (i, r) in routes.into_iter().enumerate() {
            self.busy.remove(&r);
            match codes.get(i) {
                Some(SubscribeReasonCode::Success(_)) => {
                    if !self.wanted.contains_key(&r) {
                        // Gone here while it was on its way.
                        self.dirty.insert(r.clone());
                    }
                    self.held.insert(r);
                }
                other => {
                    refused += 1;
                    let why = match (other, reason) {
                        (Some(code), Some(why)) => format!("{code:?}: {why}"),
                        (Some(code), None) => format!("{code:?}"),
                        (None, _) => "no reason code".to_string(),
                    };
                    self.refused.insert(r, why);
                }
            }
        }
        if refused > 0 {
            tracing::warn!(refused, "link: the remote refused routes; retrying in {:?}", self.retry_every);
            self.retry_at.get_or_insert_with(|| Instant::now() + self.retry_every);
        }
    }

    pub fn unsuback(&mut self, pkid: u16, codes: &[UnsubAckReason]) {
        let Some(r) = self.unsubs.remove(&pkid) else { return };
        self.busy.remove(&r);
        match codes.first() {
            Some(UnsubAckReason::Success | UnsubAckReason::NoSubscriptionExisted) => {
                self.held.remove(&r);
                if self.wanted.contains_key(&r) {
                    // Wanted again while it was on its way.
                    self.dirty.insert(r);
                }
            }
            other => {
                tracing::warn!(route = %r, "link: the remote refused to remove a route ({other:?}); retrying");
                self.refused.insert(r, format!("unsubscribe: {other:?}"));
                self.retry_at.get_or_insert_with(|| Instant::now() + self.retry_every);
            }
        }
    }

    /// What the remote holds.
    pub fn held(&self) -> &BTreeSet<String> {
        &self.held
    }

    /// Routes wanted here.
    pub fn wanted_len(&self) -> usize {
        self.wanted.len()
    }

    /// Routes the remote refused, with why.
    pub fn refused(&self) -> &BTreeMap<String, String> {
        &self.refused
    }

    /// Routes not yet as wanted at the remote (to send, or sent and not acknowledged).
    pub fn pending(&self) -> usize {
        self.dirty.len() + self.busy.len()
    }
}
