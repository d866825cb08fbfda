//! The links in force (config file, overridden by API changes) and their status.

use super::*;

/// The links in force: the config file's, overridden by the API's changes (committed through
/// Raft, or stored in sled on a single node), and their status.
pub struct Registry {
    me: String,
    file: Vec<LinkConfig>,
    inner: Mutex<RegistryState>,
    pub(super) changed: watch::Sender<u64>,
    /// Serialises API changes on a single node.
    api: Mutex<()>,
    /// Without a cluster: the node's store (link changes, sequence number blocks).
    storage: Option<Storage>,
    /// Without a cluster: the next sequence number for a delivery to a link session, and the
    /// end of the block reserved on disk (numbers never repeat across restarts).
    link_seq: Mutex<(u64, u64)>,
}

#[derive(Default)]
pub(super) struct RegistryState {
    pub(super) overrides: BTreeMap<String, Option<String>>,
    pub(super) effective: Arc<Vec<LinkConfig>>,
    pub(super) statuses: BTreeMap<String, Arc<LinkStatus>>,
    /// Without a cluster: the remote sequence numbers seen per link (in memory).
    pub(super) seen: BTreeMap<String, Seen>,
}

impl Registry {
    /// The config file's links; on a single node (`storage`) with the API's changes stored there.
    pub fn new(cfg: &Config, storage: Option<Storage>) -> Result<Registry, StorageError> {
        let state = RegistryState { effective: Arc::new(cfg.cluster.links.clone()), ..Default::default() };
        let limit = match &storage {
            Some(s) => s.link_seq_limit()?,
            None => 0,
        };
        let overrides = match &storage {
            Some(s) => s.load_links()?,
            None => BTreeMap::new(),
        };
        let r = Registry {
            me: cfg.cluster.name.clone(),
            file: cfg.cluster.links.clone(),
            inner: Mutex::new(state),
            changed: watch::Sender::new(0),
            api: Mutex::new(()),
            storage,
            link_seq: Mutex::new((limit, limit)),
        };
        r.set_overrides(overrides);
        Ok(r)
    }

    /// Without a cluster: apply (and store) one API change of a link; with `drop_sessions`
    /// end the session of that cluster's link client here (and so its routes).
    /// `expect`: whether the link must exist (false when it did not hold: nothing changed).
    pub fn set_local(
        &self,
        broker: &Broker,
        name: &str,
        spec: Option<String>,
        drop_sessions: bool,
        expect: bool,
    ) -> Result<bool, StorageError> {
        // One change at a time: the check, the store and the in-memory set belong together.
        let _one = self.api.lock().unwrap_or_else(|e| e.into_inner());
        if self.get(name).is_some() != expect {
            return Ok(false);
        }
        if let Some(storage) = &self.storage {
            storage.put_link(name, spec.as_deref())?;
        }
        self.set_override(name, spec);
        if drop_sessions {
            for s in broker.sessions() {
                if s.link_remote().as_deref() == Some(name) && broker.end_session(&s.client_id, Kick::Admin) {
                    tracing::info!(client_id = %s.client_id, link = name, "link session ended: the link was deleted or disabled");
                }
            }
        }
        Ok(true)
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, RegistryState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The API's changes, all of them (from the replicated state or sled).
    pub fn set_overrides(&self, overrides: BTreeMap<String, Option<String>>) {
        if self.lock().overrides == overrides {
            return;
        }
        let mut eff = self.file.clone();
        for (name, spec) in &overrides {
            let parsed = spec.as_ref().map(|s| {
                serde_json::from_str::<serde_json::Value>(s)
                    .map_err(|e| e.to_string())
                    .and_then(|v| link_from_json(&v, &self.me))
            });
            match parsed {
                None => eff.retain(|l| &l.name != name),
                Some(Ok((l, _))) => match eff.iter_mut().find(|x| &x.name == name) {
                    Some(x) => *x = l,
                    None => eff.push(l),
                },
                Some(Err(e)) => tracing::error!(link = %name, "a stored link change is invalid, ignored: {e}"),
            }
        }
        let mut st = self.lock();
        st.overrides = overrides;
        st.effective = Arc::new(eff);
        drop(st);
        self.changed.send_modify(|v| *v += 1);
    }

    /// One API change applied to the current overrides (single node).
    fn set_override(&self, name: &str, spec: Option<String>) {
        let mut all = self.lock().overrides.clone();
        all.insert(name.to_string(), spec);
        self.set_overrides(all);
    }

    /// Whether this node's config file has a link named `name`.
    pub fn in_file(&self, name: &str) -> bool {
        self.file.iter().any(|l| l.name == name)
    }

    /// This cluster's name.
    pub fn cluster_name(&self) -> &str {
        &self.me
    }

    pub fn effective(&self) -> Arc<Vec<LinkConfig>> {
        self.lock().effective.clone()
    }

    pub fn get(&self, name: &str) -> Option<LinkConfig> {
        self.lock().effective.iter().find(|l| l.name == name).cloned()
    }

    /// The outbox bound of link `name` (`max_outbox`, `max_outbox_bytes`) without copying the
    /// link's configuration (read for every message queued for a link client).
    pub fn outbox_of(&self, name: &str) -> Option<(usize, u64)> {
        self.lock().effective.iter().find(|l| l.name == name).map(|l| (l.max_outbox, l.max_outbox_bytes))
    }

    /// Whether cluster `remote`'s link client may connect: a link to it is configured and
    /// enabled here.
    pub fn accepts(&self, remote: &str) -> bool {
        self.configured(remote) == Some(true)
    }

    /// Whether a link to cluster `remote` is configured here (Some), and enabled (Some(true)).
    pub fn configured(&self, remote: &str) -> Option<bool> {
        self.lock().effective.iter().find(|l| l.name == remote).map(|l| l.enable)
    }

    /// The status of every link in force, in configuration order.
    pub fn statuses(&self) -> Vec<Arc<LinkStatus>> {
        let st = self.lock();
        st.effective
            .iter()
            .map(|l| {
                st.statuses
                    .get(&l.name)
                    .filter(|s| s.config == *l)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(LinkStatus::new(l)))
            })
            .collect()
    }

    pub(super) fn set_statuses(&self, statuses: BTreeMap<String, Arc<LinkStatus>>) {
        self.lock().statuses = statuses;
    }

    /// Without a cluster: record `seq` of `link`; false if seen before.
    pub(super) fn seen_insert(&self, link: &str, seq: u64) -> bool {
        self.lock().seen.entry(link.to_string()).or_default().insert(seq)
    }

    pub(super) fn seen_reset(&self, link: &str) {
        self.lock().seen.remove(link);
    }

    /// Without a cluster: the next sequence number of a delivery to a link session; None
    /// (no number, at least once) if the block cannot be reserved on disk.
    pub(super) fn next_local_seq(&self) -> Option<u64> {
        const BLOCK: u64 = 100_000;
        let mut g = self.link_seq.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 >= g.1 {
            let limit = g.0 + BLOCK;
            if let Some(storage) = &self.storage {
                if let Err(e) = storage.set_link_seq_limit(limit) {
                    tracing::warn!(error = %e, "storage: cannot reserve link sequence numbers");
                    return None;
                }
            }
            g.1 = limit;
        }
        let seq = g.0;
        g.0 += 1;
        Some(seq)
    }
}
