//! Reconcile a set of objects in passes, without Kubernetes: what `plan -f` and `apply -f`,
//! the benchmark and the fault campaign run. Within a pass every object is reconciled once,
//! concurrently up to a bound; a team membership starts once the AtlasOrgUser objects of
//! its members (same organization, from the same set) are done, so a new user is invited
//! before being added to a team while other invitations go on (a team not Ready yet is
//! reconciled in steps as its members finish: its first member alone, then 10 at a time). Each pass starts from a fresh
//! listing of every organization; statuses carry over from pass to pass as they would in
//! the cluster.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::join_all;
use jiff::Timestamp;
use tokio::sync::{Semaphore, watch};

use super::OrgUserIndex;
use super::{
    EngineError, InMemory, Mode, OrgUserReport, TeamReport, TeamSurroundings, reconcile_org_user,
    reconcile_team_membership,
};
use crate::api::{AtlasOrgUser, AtlasTeamMembership};
use crate::atlas::{AtlasClient, AtlasError};
use crate::reconcile::{Claim, username_key};

/// The objects of one run, with the statuses of the last pass.
#[derive(Clone, Debug, Default)]
pub struct ObjectSet {
    pub org_users: Vec<AtlasOrgUser>,
    pub team_memberships: Vec<AtlasTeamMembership>,
}

/// Which object a report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectId {
    OrgUser(usize),
    TeamMembership(usize),
}

/// One object's reconcile in one pass.
// One per object and pass, moved once into the results: boxing the larger report would buy
// nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome {
    OrgUser(Result<OrgUserReport, AtlasError>),
    TeamMembership(Result<TeamReport, EngineError>),
}

impl Outcome {
    /// Another pass would change nothing for this object.
    pub fn is_settled(&self) -> bool {
        match self {
            Outcome::OrgUser(Ok(r)) => r.is_settled(),
            Outcome::TeamMembership(Ok(r)) => r.is_settled(),
            _ => false,
        }
    }

    /// A call failed, or nothing could be planned.
    pub fn is_failed(&self) -> bool {
        match self {
            Outcome::OrgUser(Ok(r)) => r.has_failures() || is_stalled(&r.status.conditions),
            Outcome::TeamMembership(Ok(r)) => r.has_failures() || is_stalled(&r.status.conditions),
            _ => true,
        }
    }
}

/// Stalled on something other than a pause (a paused object with changes waiting is Stalled for
/// kstatus, but pausing is a choice, not a failure of `apply`).
fn is_stalled(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> bool {
    crate::api::conditions::find(conditions, crate::api::conditions::STALLED)
        .is_some_and(|c| c.status == "True" && c.reason != crate::reconcile::reasons::PAUSED)
}

/// `namespace/name` of an object's metadata.
pub fn display_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!("{}/{}", meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or(""))
}

impl ObjectSet {
    /// For each org user: the other objects claiming the same (orgId, username).
    fn rivals(&self) -> Vec<Vec<Claim>> {
        let mut by_key: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (i, u) in self.org_users.iter().enumerate() {
            by_key.entry((u.spec.org_id.clone(), username_key(&u.spec.username))).or_default().push(i);
        }
        self.org_users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                by_key[&(u.spec.org_id.clone(), username_key(&u.spec.username))]
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| Claim::of(&self.org_users[j].metadata))
                    .collect()
            })
            .collect()
    }

    /// For each team membership: the org users (indices) it waits for in a pass.
    fn dependencies(&self) -> Vec<Vec<usize>> {
        let mut by_username: HashMap<(String, String), Vec<usize>> = HashMap::new();
        let mut by_name: HashMap<(String, String), usize> = HashMap::new();
        for (i, u) in self.org_users.iter().enumerate() {
            by_username.entry((u.spec.org_id.clone(), username_key(&u.spec.username))).or_default().push(i);
            let meta = &u.metadata;
            by_name.insert((meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default()), i);
        }
        self.team_memberships
            .iter()
            .map(|t| {
                let namespace = t.metadata.namespace.clone().unwrap_or_default();
                let mut deps: Vec<usize> = Vec::new();
                for m in &t.spec.members {
                    if let Some(username) = &m.username
                        && let Some(found) = by_username.get(&(t.spec.org_id.clone(), username_key(username)))
                    {
                        deps.extend(found);
                    }
                    if let Some(r) = &m.org_user_ref
                        && let Some(&i) = by_name.get(&(namespace.clone(), r.name.clone()))
                    {
                        deps.push(i);
                    }
                }
                deps.sort_unstable();
                deps.dedup();
                deps
            })
            .collect()
    }

    /// The organizations the objects name.
    pub fn org_ids(&self) -> Vec<String> {
        let mut orgs: Vec<String> = self
            .org_users
            .iter()
            .map(|u| u.spec.org_id.clone())
            .chain(self.team_memberships.iter().map(|t| t.spec.org_id.clone()))
            .collect();
        orgs.sort();
        orgs.dedup();
        orgs
    }

    pub fn len(&self) -> usize {
        self.org_users.len() + self.team_memberships.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A team membership waiting for many members is reconciled once its first member is done,
/// then each time this many more are. A step costs no Atlas read (the pass keeps the team's
/// member listing), so steps are small: the team's last additions wait for few invitations.
const TEAM_STEP: usize = 4;

/// Reconcile every object once. `on_done` sees each object's outcome as it finishes (for
/// progress); the outcomes are also returned, in object order (org users, then team
/// memberships). In [`Mode::Apply`] each object's status is replaced by the new one.
pub async fn run_pass(
    client: &AtlasClient,
    index: &OrgUserIndex,
    objects: &mut ObjectSet,
    mode: Mode,
    concurrency: usize,
    on_done: &(dyn Fn(ObjectId, &Outcome) + Sync),
) -> Vec<(ObjectId, Outcome)> {
    let _pass = index.begin_pass(objects.org_ids());
    let now = Timestamp::now();
    let permits = Semaphore::new(concurrency.max(1));
    // Team memberships have their own permits: queued behind every org user they would
    // start only once all invitations are done, instead of as soon as their members are.
    let team_permits = Semaphore::new(concurrency.max(1));
    let rivals = objects.rivals();
    let surroundings = TeamSurroundings::of_each(&objects.team_memberships, &objects.org_users);
    let deps = objects.dependencies();
    let (done_tx, done_rx): (Vec<_>, Vec<_>) = objects.org_users.iter().map(|_| watch::channel(false)).unzip();
    let done_tx = Arc::new(done_tx);
    // An org user's reconcile has begun (it holds a permit): its invitation is about to go.
    let (started_tx, started_rx): (Vec<_>, Vec<_>) = objects.org_users.iter().map(|_| watch::channel(false)).unzip();

    let org_user_runs = objects.org_users.iter().enumerate().map(|(i, object)| {
        let (permits, rivals, done_tx, started_tx) = (&permits, &rivals[i], done_tx.clone(), &started_tx[i]);
        async move {
            let outcome = {
                let _permit = permits.acquire().await.expect("never closed");
                let _ = started_tx.send(true);
                let mut result = reconcile_org_user(client, index, object, rivals, mode, now).await;
                if let Ok(report) = result.as_mut() {
                    let window = crate::reconcile::audit::DEFAULT_INVITATION_WARNING;
                    super::flag_expiring_invitation(report, object.status.as_ref(), now, window);
                }
                Outcome::OrgUser(result)
            };
            let _ = done_tx[i].send(true);
            on_done(ObjectId::OrgUser(i), &outcome);
            (ObjectId::OrgUser(i), outcome)
        }
    });
    let team_runs = objects.team_memberships.iter().enumerate().map(|(i, object)| {
        let (permits, deps, done_rx, started_rx, around) =
            (&team_permits, &deps[i], &done_rx, &started_rx, &surroundings[i]);
        async move {
            // Members are reconciled in steps as their AtlasOrgUser objects finish, so a big
            // team is not left with all of its additions until its last member is invited.
            let is_done = |d: &usize| *done_rx[*d].borrow();
            let was_ready = object
                .status
                .as_ref()
                .is_some_and(|s| crate::api::conditions::is_true(&s.conditions, crate::api::conditions::READY));
            let mut current = None::<AtlasTeamMembership>;
            let mut earlier_events = Vec::new();
            // The first step is the first member alone: the team's first addition goes as
            // soon as one member is invited, while the team's bucket still has its whole
            // burst (Atlas refills a full bucket for nothing); then steps of TEAM_STEP.
            let (first, rest) = deps.split_at(deps.len().min(1));
            let steps: Vec<&[usize]> =
                std::iter::once(first).filter(|s| !s.is_empty()).chain(rest.chunks(TEAM_STEP)).collect();
            // While that member is invited, the team is looked up and its members listed (the
            // pass keeps the listing): the first addition then goes one round trip after the
            // invitation is answered, not three. Not sooner: every team listing at once would
            // take the client's slots from the invitations that come first.
            if let Some(&first_member) = first.first()
                && !was_ready
                && !is_done(&first_member)
            {
                let _ = started_rx[first_member].clone().wait_for(|started| *started).await;
                let _permit = permits.acquire().await.expect("never closed");
                // A failure here is met, and reported, by the reconcile that follows.
                let _ = super::observe_pinned_team(client, index, object).await;
            }
            for (n, step) in steps.iter().enumerate() {
                for &d in *step {
                    let mut rx = done_rx[d].clone();
                    let _ = rx.wait_for(|done| *done).await;
                }
                let rest_done = steps[n + 1..].iter().all(|s| s.iter().all(is_done));
                // A team that matched last pass most likely has nothing to add: one reconcile.
                if rest_done || was_ready {
                    break;
                }
                let _permit = permits.acquire().await.expect("never closed");
                let this = current.as_ref().unwrap_or(object);
                if let Ok(report) = reconcile_team_membership(client, index, this, around, mode, now, &InMemory).await {
                    earlier_events.extend(report.events);
                    if mode == Mode::Apply {
                        current = Some(AtlasTeamMembership { status: Some(report.status), ..this.clone() });
                    }
                }
            }
            let outcome = {
                let _permit = permits.acquire().await.expect("never closed");
                let this = current.as_ref().unwrap_or(object);
                let mut result = reconcile_team_membership(client, index, this, around, mode, now, &InMemory).await;
                if let Ok(report) = result.as_mut() {
                    earlier_events.append(&mut report.events);
                    report.events = earlier_events;
                }
                Outcome::TeamMembership(result)
            };
            on_done(ObjectId::TeamMembership(i), &outcome);
            (ObjectId::TeamMembership(i), outcome)
        }
    });
    let (mut results, teams) = futures::join!(join_all(org_user_runs), join_all(team_runs));
    results.extend(teams);
    if mode == Mode::Apply {
        for (id, outcome) in &results {
            match (id, outcome) {
                (ObjectId::OrgUser(i), Outcome::OrgUser(Ok(r))) => {
                    objects.org_users[*i].status = Some(r.status.clone());
                }
                (ObjectId::TeamMembership(i), Outcome::TeamMembership(Ok(r))) => {
                    objects.team_memberships[*i].status = Some(r.status.clone());
                }
                _ => {}
            }
        }
    }
    results
}
