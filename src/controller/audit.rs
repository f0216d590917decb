//! The audit of every organization the cluster's objects name, as metrics: computed from the
//! listings the reconciles already made (the engine's index), never from a call of its own.
//! One series per organization and figure, so cardinality is bounded by the organizations.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::reflector::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::{AtlasOrgUser, AtlasTeamMembership};
use crate::engine::OrgUserIndex;
use crate::reconcile::audit::{OrgAudit, audit_org};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrgLabels {
    pub org_id: String,
}

/// Per-organization audit gauges.
#[derive(Clone, Default)]
pub struct AuditMetrics {
    pub users: Family<OrgLabels, Gauge>,
    pub unmanaged_users: Family<OrgLabels, Gauge>,
    pub declared_absent_users: Family<OrgLabels, Gauge>,
    pub pending_invitations: Family<OrgLabels, Gauge>,
    pub invitations_expiring: Family<OrgLabels, Gauge>,
}

impl AuditMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "atlas_access_org_users",
            "Users (PENDING or ACTIVE) in the organization",
            metrics.users.clone(),
        );
        registry.register(
            "atlas_access_org_unmanaged_users",
            "Users in the organization that no AtlasOrgUser declares",
            metrics.unmanaged_users.clone(),
        );
        registry.register(
            "atlas_access_org_declared_absent_users",
            "AtlasOrgUser objects whose user is not in the organization",
            metrics.declared_absent_users.clone(),
        );
        registry.register(
            "atlas_access_org_pending_invitations",
            "Pending invitations in the organization",
            metrics.pending_invitations.clone(),
        );
        registry.register(
            "atlas_access_org_invitations_expiring",
            "Pending invitations that expire within the warning window",
            metrics.invitations_expiring.clone(),
        );
        metrics
    }

    fn publish(&self, audit: &OrgAudit) {
        let labels = OrgLabels { org_id: audit.org_id.clone() };
        let set = |family: &Family<OrgLabels, Gauge>, value: usize| {
            family.get_or_create(&labels).set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.users, audit.users);
        set(&self.unmanaged_users, audit.unmanaged.count);
        set(&self.declared_absent_users, audit.declared_absent.count);
        set(&self.pending_invitations, audit.pending.count);
        set(&self.invitations_expiring, audit.expiring_count);
    }
}

/// The organizations the objects name, with the usernames AtlasOrgUser objects declare there.
pub fn declared_by_org(
    org_users: &[Arc<AtlasOrgUser>],
    teams: &[Arc<AtlasTeamMembership>],
) -> BTreeMap<String, Vec<String>> {
    let mut declared: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in org_users.iter().filter(|o| o.metadata.deletion_timestamp.is_none()) {
        declared.entry(o.spec.org_id.clone()).or_default().push(o.spec.username.clone());
    }
    for t in teams {
        declared.entry(t.spec.org_id.clone()).or_default();
    }
    declared
}

/// Audit every organization whose listing the index holds.
pub fn audit_all(
    index: &OrgUserIndex,
    org_users: &Store<AtlasOrgUser>,
    teams: &Store<AtlasTeamMembership>,
    now: Timestamp,
    window: Duration,
) -> Vec<OrgAudit> {
    declared_by_org(&org_users.state(), &teams.state())
        .into_iter()
        .filter_map(|(org_id, usernames)| {
            let directory = index.cached(&org_id)?;
            Some(audit_org(&org_id, &directory, usernames.iter().map(String::as_str), now, window))
        })
        .collect()
}

/// Refresh the gauges every `every` until the process ends.
pub async fn publish_forever(
    metrics: AuditMetrics,
    ctx: Arc<super::Context>,
    teams: Store<AtlasTeamMembership>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for audit in audit_all(&ctx.index, &ctx.org_users, &teams, Timestamp::now(), ctx.invitation_warning) {
            metrics.publish(&audit);
        }
    }
}
