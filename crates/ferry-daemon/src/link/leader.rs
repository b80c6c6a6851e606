//! Leader election among the daemons. The leader turns host deaths (membership keys that
//! vanished) into lost VMs and runs the planner; every change it makes is guarded by its
//! leadership, so a deposed leader changes nothing even before it notices.

use std::sync::Arc;
use std::time::Duration;

use ferry_store::cluster::{ClusterStore, HostName, HostState, MemberEvent};
use ferry_store::{AnyStore, Election, Leadership, LeaseId};

use super::{describe, ClusterLink};
use crate::daemon::Daemon;
use crate::planner::PlannerState;

/// What this host knows about leadership, and on the leader its planner's state.
#[derive(Default)]
pub struct LeaderState {
    /// Whether this host leads now.
    pub leading: bool,
    /// Terms this host has led (for tests and logs).
    pub terms: u32,
    /// Host deaths this host applied as leader, with what they did.
    pub deaths: Vec<(String, Vec<String>, Vec<String>)>,
    /// The planner (on the leader).
    pub planner: PlannerState,
    /// The leadership condition, while leading (every planner change carries it).
    pub guard: Option<ferry_store::Condition>,
}

impl Daemon {
    /// Campaigns for leadership on this host's membership lease; while leading, buries dead
    /// hosts and plans. Returns when the lease is gone (the membership loop rejoins and
    /// starts it again).
    pub(crate) async fn lead(self: Arc<Self>, link: Arc<ClusterLink>, lease: LeaseId) {
        let election = Election::new(
            link.store.store().clone(),
            link.store.keys().planner_leader(),
        );
        loop {
            let leadership = match election.campaign(link.host.as_str(), lease).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::info!(error = %e, "no longer campaigning (membership lease gone)");
                    return;
                }
            };
            {
                let mut s = link.leader_state();
                s.leading = true;
                s.terms += 1;
                s.guard = Some(leadership.condition());
            }
            tracing::info!(host = %link.host, term = ?leadership.revision(), "this host leads the planner");
            self.clone().term(&link, &leadership).await;
            {
                let mut s = link.leader_state();
                s.leading = false;
                s.guard = None;
            }
            tracing::warn!(host = %link.host, "leadership ended");
        }
    }

    /// One term: until leadership is lost.
    async fn term(self: Arc<Self>, link: &Arc<ClusterLink>, leadership: &Leadership<AnyStore>) {
        let guarded = link.store.guarded_by(leadership.condition());
        let members = match link.store.members().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %describe(&e), "leader cannot list members");
                return;
            }
        };
        // Hosts that died while nobody led.
        if let Ok(hosts) = link.store.hosts().await {
            for h in hosts.items {
                let alive = members.items.iter().any(|m| m.host == h.record.name);
                if !alive && h.record.state != HostState::Failed {
                    bury(link, &guarded, &h.record.name).await;
                }
            }
        }
        let mut watch = match link
            .store
            .watch_members(Some(members.revision.next()))
            .await
        {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %describe(&e), "leader cannot watch members");
                return;
            }
        };
        let period = Duration::from_secs(self.cfg.cluster.plan_every_secs);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost = leadership.lost();
        tokio::pin!(lost);
        loop {
            tokio::select! {
                _ = &mut lost => return,
                ev = watch.next() => match ev {
                    Some(Ok(MemberEvent::Down { host, .. })) => bury(link, &guarded, &host).await,
                    Some(Ok(MemberEvent::Up(_))) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %describe(&e), "membership watch failed; restarting the term");
                        return;
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    if let Err(e) = self.clone().plan_round(link, &guarded, false).await {
                        tracing::warn!(error = %e, "planning round failed");
                    }
                }
            }
        }
    }
}

/// Applies a host's death as leader: its VMs become lost, migrations to it are aborted.
async fn bury(link: &ClusterLink, guarded: &ClusterStore<AnyStore>, host: &HostName) {
    match guarded.host_died(host).await {
        Ok(r) => {
            let lost: Vec<String> = r.lost.iter().map(|v| v.to_string()).collect();
            let aborted: Vec<String> = r.aborted.iter().map(|v| v.to_string()).collect();
            tracing::warn!(host = %host, lost = ?lost, aborted = ?aborted, "host died (its lease expired): its VMs are lost until it comes back");
            link.leader_state()
                .deaths
                .push((host.to_string(), lost, aborted));
        }
        Err(e) => tracing::info!(host = %host, error = %describe(&e), "host death not applied"),
    }
}
