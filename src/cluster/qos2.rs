//! Inbound QoS 2 in the replicated state: the packet ids a session received and has not had
//! released, kept per session incarnation (a clean start begins a new set).

use super::*;

impl ClusterState {
    /// An inbound QoS 2 message sent on the connection of `epoch` (None: not known, format 4):
    /// `cmds` apply unless the session already holds `pkid`. Recorded only in the session the
    /// connection belonged to; with no such session (ended, or replaced by a clean start) it
    /// is applied and nothing is recorded (its client will not resend it).
    pub(super) fn received(
        &mut self,
        client_id: &str,
        epoch: Option<u64>,
        pkid: u16,
        cmds: Vec<Command>,
        mut out: Vec<Change>,
    ) -> (Outcome, Vec<Change>) {
        if let Some(e) = self.s.sessions.get_mut(client_id) {
            if epoch.is_none_or(|ep| ep >= e.created) && !e.received.insert(pkid) {
                return (Outcome::Duplicate, out);
            }
        }
        let mut outcome = Outcome::Done;
        for c in cmds {
            let (o, mut ch) = self.apply_one(c);
            out.append(&mut ch);
            if matches!(o, Outcome::Enqueued { .. }) {
                outcome = o;
            }
        }
        (outcome, out)
    }
}

/// PUBREL of `pkid` on the connection of `epoch` (None: not known): the session it belonged to
/// forgets the id.
pub(super) fn released(s: &mut Snapshot, client_id: &str, epoch: Option<u64>, pkid: u16) -> Outcome {
    let Some(e) = s.sessions.get_mut(client_id) else { return Outcome::Stale };
    if epoch.is_none_or(|ep| ep >= e.created) && e.received.remove(&pkid) {
        Outcome::Done
    } else {
        Outcome::Stale
    }
}
