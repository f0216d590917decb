//! Table-driven tests of the pure planners in `reconcile`: each case is a named input (spec,
//! what Atlas reports, the object's situation) and the expected calls, in order, as the
//! `plan` CLI prints them (ids replaced by short names), plus the expected hold and status.

use std::collections::BTreeMap;

use atlas_access_operator::api::conditions::{self, find};
use atlas_access_operator::api::{
    AddedMember, AdoptedDeletionPolicy, AtlasOrgUserSpec, AtlasOrgUserStatus, AtlasTeamMembershipSpec,
    AtlasTeamMembershipStatus, DeletionEffect, DeletionPolicy, GrantedAccess, MemberState, MembershipMode,
    ObservedProjectRoles, OrgRole, OrgUserRef, ProjectRole, ProjectRoleAssignment, ReinvitePolicy, TeamMember, TeamRef,
    UnlistedAccess,
};
use atlas_access_operator::atlas::models::{GroupRoleAssignment, MembershipStatus, OrgUser, OrgUserRoles, Team, codes};
use atlas_access_operator::reconcile::{
    Action, ActionError, ActionOutcome, Claim, ErrorClass, ObservedTeam, OrgUserDirectory, OrgUserInput, Plan,
    TeamInput, TeamWriter, WriterKind, org_user_status, plan_org_user, plan_team_membership, team_intent,
    team_membership_status,
};
use jiff::Timestamp;

const ORG: &str = "5f1b2c3d4e5f60718293a4b5";
const P1: &str = "6a1b2c3d4e5f60718293a4b1";
const P2: &str = "6a1b2c3d4e5f60718293a4b2";
const T1: &str = "6b00000000000000000000a1";
const T2: &str = "6b00000000000000000000a2";
const ALICE: &str = "6c0000000000000000000001";
const BOB: &str = "6c0000000000000000000002";
const CAROL: &str = "6c0000000000000000000003";
const DAVE: &str = "6c0000000000000000000004";
const STRANGER: &str = "6c0000000000000000000009";

fn now() -> Timestamp {
    "2025-06-01T00:00:00Z".parse().unwrap()
}

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// Replace ids by names so expected plans read like the CLI output.
fn redact(s: String) -> String {
    [
        (ORG, "ORG"),
        (P1, "P1"),
        (P2, "P2"),
        (T1, "T1"),
        (T2, "T2"),
        (ALICE, "ALICE"),
        (BOB, "BOB"),
        (CAROL, "CAROL"),
        (DAVE, "DAVE"),
        (STRANGER, "STRANGER"),
    ]
    .iter()
    .fold(s, |s, (id, name)| s.replace(id, name))
}

fn shown(plan: &Plan) -> Vec<String> {
    plan.actions.iter().map(|a| redact(a.to_string())).collect()
}

fn user(id: &str, username: &str, status: MembershipStatus, org_roles: &[&str]) -> OrgUser {
    let pending = status != MembershipStatus::Active;
    OrgUser {
        id: id.into(),
        username: username.into(),
        org_membership_status: status,
        roles: OrgUserRoles {
            org_roles: org_roles.iter().map(|r| r.to_string()).collect(),
            group_role_assignments: Vec::new(),
        },
        team_ids: Vec::new(),
        invitation_created_at: pending.then(|| "2025-05-20T00:00:00Z".into()),
        invitation_expires_at: pending.then(|| "2025-06-19T00:00:00Z".into()),
        inviter_username: pending.then(|| "admin@example.com".into()),
        created_at: (!pending).then(|| "2024-01-01T00:00:00Z".into()),
        first_name: None,
        last_name: None,
        last_auth: None,
        country: None,
        mobile_number: None,
    }
}

fn invited_at(mut user: OrgUser, when: &str) -> OrgUser {
    user.invitation_created_at = Some(when.into());
    user
}

fn alice(status: MembershipStatus, org_roles: &[&str]) -> OrgUser {
    user(ALICE, "alice@example.com", status, org_roles)
}

fn spec(roles: &[OrgRole]) -> AtlasOrgUserSpec {
    AtlasOrgUserSpec {
        org_id: ORG.into(),
        username: "alice@example.com".into(),
        org_roles: roles.to_vec(),
        project_roles: Vec::new(),
        team_ids: Vec::new(),
        credentials_secret_ref: None,
        deletion_policy: Some(DeletionPolicy::Delete),
        adopted_deletion_policy: AdoptedDeletionPolicy::Orphan,
        unlisted_access: UnlistedAccess::Keep,
        reinvite: ReinvitePolicy::OnExpiry,
    }
}

fn with_reinvite(policy: ReinvitePolicy) -> AtlasOrgUserSpec {
    AtlasOrgUserSpec { reinvite: policy, ..spec(&[OrgRole::OrgMember]) }
}

fn me() -> Claim {
    Claim::new("team-a", "alice", Some(at("2025-05-01T00:00:00Z")))
}

// ---------------------------------------------------------------------------------------
// AtlasOrgUser planner
// ---------------------------------------------------------------------------------------

struct OrgUserCase {
    name: &'static str,
    spec: AtlasOrgUserSpec,
    observed: Option<OrgUser>,
    rivals: Vec<Claim>,
    paused: bool,
    deleting: bool,
    previous_adopted: Option<bool>,
    actions: Vec<&'static str>,
    hold: Option<&'static str>,
    adopted: Option<bool>,
}

fn case(name: &'static str, spec: AtlasOrgUserSpec, observed: Option<OrgUser>) -> OrgUserCase {
    OrgUserCase {
        name,
        spec,
        observed,
        rivals: Vec::new(),
        paused: false,
        deleting: false,
        previous_adopted: None,
        actions: Vec::new(),
        hold: None,
        adopted: None,
    }
}

impl OrgUserCase {
    fn expect(mut self, actions: &[&'static str], adopted: Option<bool>) -> Self {
        self.actions = actions.to_vec();
        self.adopted = adopted;
        self
    }
    fn held(mut self, reason: &'static str) -> Self {
        self.hold = Some(reason);
        self
    }
    fn rivals(mut self, rivals: Vec<Claim>) -> Self {
        self.rivals = rivals;
        self
    }
    fn paused(mut self) -> Self {
        self.paused = true;
        self
    }
    fn deleting(mut self) -> Self {
        self.deleting = true;
        self
    }
    fn previously_adopted(mut self, adopted: bool) -> Self {
        self.previous_adopted = Some(adopted);
        self
    }
}

fn org_user_cases() -> Vec<OrgUserCase> {
    use MembershipStatus::*;
    use OrgRole::*;
    let mut full = spec(&[OrgMember]);
    full.project_roles = vec![ProjectRoleAssignment { project_id: P1.into(), roles: vec![ProjectRole::GroupReadOnly] }];
    full.team_ids = vec![T1.into()];
    let lapsed = {
        let mut u = alice(Pending, &["ORG_MEMBER"]);
        u.invitation_expires_at = Some("2025-05-31T00:00:00Z".into());
        u
    };
    let with_projects = |assignments: Vec<(&str, &[&str])>| {
        let mut u = alice(Active, &["ORG_MEMBER"]);
        u.roles.group_role_assignments = assignments
            .into_iter()
            .map(|(p, roles)| GroupRoleAssignment {
                group_id: Some(p.into()),
                group_roles: roles.iter().map(|r| r.to_string()).collect(),
            })
            .collect();
        u
    };
    let in_teams = |teams: &[&str]| {
        let mut u = alice(Active, &["ORG_MEMBER"]);
        u.team_ids = teams.iter().map(|t| t.to_string()).collect();
        u
    };
    let projects_spec = {
        let mut s = spec(&[OrgMember]);
        s.project_roles = vec![ProjectRoleAssignment {
            project_id: P1.into(),
            roles: vec![ProjectRole::GroupOwner, ProjectRole::GroupReadOnly],
        }];
        s
    };
    let teams_spec = AtlasOrgUserSpec { team_ids: vec![T1.into(), T2.into()], ..spec(&[OrgMember]) };
    let orphan = AtlasOrgUserSpec { deletion_policy: Some(DeletionPolicy::Orphan), ..spec(&[OrgMember]) };
    let older = Claim::new("team-b", "alice-too", Some(at("2025-04-01T00:00:00Z")));
    let younger = Claim::new("team-b", "alice-too", Some(at("2025-05-02T00:00:00Z")));
    let same_time_smaller_name = Claim::new("team-a", "alic", Some(at("2025-05-01T00:00:00Z")));

    vec![
        case("absent: invite with org roles, project roles and teams", full, None).expect(
            &["invite alice@example.com to org ORG with ORG_MEMBER, project P1: GROUP_READ_ONLY, teams T1"],
            Some(false),
        ),
        case("already ACTIVE with the same roles: adopt, no invite", spec(&[OrgMember]), Some(alice(Active, &["ORG_MEMBER"])))
            .expect(&[], Some(true)),
        case("already PENDING (someone else invited): adopt, no second invite", spec(&[OrgMember]), Some(invited_at(alice(Pending, &["ORG_MEMBER"]), "2025-04-20T00:00:00Z")))
            .expect(&[], Some(true)),
        case("PENDING since after this object was created, status lost: our own invitation, not adopted", spec(&[OrgMember]), Some(alice(Pending, &["ORG_MEMBER"])))
            .expect(&[], Some(false)),
        case("our own invitation still PENDING: nothing, adoption stays false", spec(&[OrgMember]), Some(alice(Pending, &["ORG_MEMBER"])))
            .previously_adopted(false)
            .expect(&[], Some(false)),
        case("roles swap ORG_OWNER -> ORG_MEMBER: add first, then remove", spec(&[OrgMember]), Some(alice(Active, &["ORG_OWNER"])))
            .expect(
                &[
                    "add org role ORG_MEMBER to alice@example.com (ALICE) in org ORG",
                    "remove org role ORG_OWNER from alice@example.com (ALICE) in org ORG",
                ],
                Some(true),
            ),
        case(
            "several removals: ORG_OWNER is removed last",
            spec(&[OrgMember]),
            Some(alice(Active, &["ORG_OWNER", "ORG_READ_ONLY"])),
        )
        .expect(
            &[
                "add org role ORG_MEMBER to alice@example.com (ALICE) in org ORG",
                "remove org role ORG_READ_ONLY from alice@example.com (ALICE) in org ORG",
                "remove org role ORG_OWNER from alice@example.com (ALICE) in org ORG",
            ],
            Some(true),
        ),
        case("an added role only", spec(&[OrgMember, OrgBillingAdmin]), Some(alice(Active, &["ORG_MEMBER"]))).expect(
            &["add org role ORG_BILLING_ADMIN to alice@example.com (ALICE) in org ORG"],
            Some(true),
        ),
        case("PENDING but past its expiry: cancel, then re-invite", spec(&[OrgMember]), Some(lapsed.clone())).expect(
            &[
                "cancel the expired invitation of alice@example.com (ALICE) in org ORG (Atlas still lists it as PENDING)",
                "re-invite alice@example.com to org ORG (invitation expired) with ORG_MEMBER",
            ],
            Some(false),
        ),
        case("PENDING past expiry, reinvite Never: held", with_reinvite(ReinvitePolicy::Never), Some(lapsed))
            .held("InvitationExpired"),
        case("INVITATION_EXPIRED, OnExpiry: re-invite", with_reinvite(ReinvitePolicy::OnExpiry), Some(alice(InvitationExpired, &["ORG_MEMBER"])))
            .expect(&["re-invite alice@example.com to org ORG (invitation expired) with ORG_MEMBER"], Some(false)),
        case(
            "INVITATION_EXPIRED, OnExpiryOrRejection: re-invite",
            with_reinvite(ReinvitePolicy::OnExpiryOrRejection),
            Some(alice(InvitationExpired, &["ORG_MEMBER"])),
        )
        .expect(&["re-invite alice@example.com to org ORG (invitation expired) with ORG_MEMBER"], Some(false)),
        case("INVITATION_EXPIRED, Never: held, no call", with_reinvite(ReinvitePolicy::Never), Some(alice(InvitationExpired, &["ORG_MEMBER"])))
            .held("InvitationExpired"),
        case("INVITATION_REJECTED, Never: held", with_reinvite(ReinvitePolicy::Never), Some(alice(InvitationRejected, &["ORG_MEMBER"])))
            .held("InvitationRejected"),
        case("INVITATION_REJECTED, OnExpiry: held", with_reinvite(ReinvitePolicy::OnExpiry), Some(alice(InvitationRejected, &["ORG_MEMBER"])))
            .held("InvitationRejected"),
        case(
            "INVITATION_REJECTED, OnExpiryOrRejection: re-invite",
            with_reinvite(ReinvitePolicy::OnExpiryOrRejection),
            Some(alice(InvitationRejected, &["ORG_MEMBER"])),
        )
        .expect(&["re-invite alice@example.com to org ORG (invitation rejected) with ORG_MEMBER"], Some(false)),
        case("project roles differ: one :addRole, unlisted project untouched", projects_spec.clone(), Some(with_projects(vec![(P1, &["GROUP_READ_ONLY"]), (P2, &["GROUP_OWNER"])])))
            .expect(
                &["add project role GROUP_OWNER to alice@example.com (ALICE) in project P1 of org ORG"],
                Some(true),
            ),
        case("project roles match (order aside); unlisted project left alone", projects_spec.clone(), Some(with_projects(vec![(P1, &["GROUP_READ_ONLY", "GROUP_OWNER"]), (P2, &["GROUP_OWNER"])])))
            .expect(&[], Some(true)),
        case("listed project missing entirely: one :addRole per role", projects_spec, Some(with_projects(vec![]))).expect(
            &[
                "add project role GROUP_OWNER to alice@example.com (ALICE) in project P1 of org ORG",
                "add project role GROUP_READ_ONLY to alice@example.com (ALICE) in project P1 of org ORG",
            ],
            Some(true),
        ),
        case("missing team: :addUser; other teams never removed", teams_spec.clone(), Some(in_teams(&[T1, "6b00000000000000000000ff"])))
            .expect(&["add alice@example.com (ALICE) to team T2 in org ORG"], Some(true)),
        case("all listed teams present: nothing", teams_spec, Some(in_teams(&[T2, T1]))).expect(&[], Some(true)),
        case("conflict: an older object owns it", spec(&[OrgMember]), None).rivals(vec![older.clone()]).held("Conflict"),
        case("conflict: a younger rival does not stop the owner", spec(&[OrgMember]), None)
            .rivals(vec![younger.clone()])
            .expect(&["invite alice@example.com to org ORG with ORG_MEMBER"], Some(false)),
        case("conflict: same creation time, namespace/name breaks the tie", spec(&[OrgMember]), None)
            .rivals(vec![same_time_smaller_name])
            .held("Conflict"),
        case("paused: no call, even with drift", spec(&[OrgMember]), Some(alice(Active, &["ORG_OWNER"]))).paused().held("Paused"),
        case("delete, Delete, ACTIVE user this object invited: remove the user", spec(&[OrgMember]), Some(alice(Active, &["ORG_MEMBER"])))
            .previously_adopted(false)
            .deleting()
            .expect(&["remove alice@example.com (ALICE) from org ORG"], None),
        case("case 4: delete, Delete, adopted ACTIVE user: left in the organization", spec(&[OrgMember]), Some(alice(Active, &["ORG_OWNER"])))
            .previously_adopted(true)
            .deleting()
            .expect(&[], None),
        case("delete, Delete, adoption never recorded, ACTIVE since before the object: left", spec(&[OrgMember]), Some(alice(Active, &["ORG_MEMBER"])))
            .deleting()
            .expect(&[], None),
        case("delete, Delete, adopted, adoptedDeletionPolicy Delete: removed", AtlasOrgUserSpec { adopted_deletion_policy: AdoptedDeletionPolicy::Delete, ..spec(&[OrgMember]) }, Some(alice(Active, &["ORG_MEMBER"])))
            .previously_adopted(true)
            .deleting()
            .expect(&["remove alice@example.com (ALICE) from org ORG"], None),
        case("delete, Delete, PENDING: cancel the invitation", spec(&[OrgMember]), Some(alice(Pending, &["ORG_MEMBER"])))
            .deleting()
            .expect(&["cancel the invitation of alice@example.com (ALICE) to org ORG"], None),
        case("delete, Delete, not in Atlas: nothing", spec(&[OrgMember]), None).deleting().expect(&[], None),
        case("delete, Delete, invitation expired: nothing", spec(&[OrgMember]), Some(alice(InvitationExpired, &["ORG_MEMBER"])))
            .deleting()
            .expect(&[], None),
        case("delete, Orphan: no call", orphan, Some(alice(Active, &["ORG_MEMBER"]))).deleting().expect(&[], None),
        case("delete, conflict loser: leaves the owner's user alone", spec(&[OrgMember]), Some(alice(Active, &["ORG_MEMBER"])))
            .rivals(vec![older])
            .deleting()
            .expect(&[], None),
        case("delete, owner with a younger rival: hand over, no call", spec(&[OrgMember]), Some(alice(Active, &["ORG_MEMBER"])))
            .rivals(vec![younger])
            .deleting()
            .expect(&[], None),
        case("delete while paused: no call", spec(&[OrgMember]), Some(alice(Active, &["ORG_MEMBER"])))
            .paused()
            .deleting()
            .held("Paused"),
        case("empty orgRoles (admission bypassed): held", spec(&[]), Some(alice(Active, &["ORG_MEMBER"]))).held("InvalidSpec"),
    ]
}

fn previous_with_adopted(adopted: Option<bool>) -> AtlasOrgUserStatus {
    AtlasOrgUserStatus { adopted, ..Default::default() }
}

fn org_input<'a>(
    spec: &'a AtlasOrgUserSpec,
    previous: &'a AtlasOrgUserStatus,
    observed: Option<&'a OrgUser>,
    rivals: &'a [Claim],
) -> OrgUserInput<'a> {
    OrgUserInput {
        claim: me(),
        generation: Some(3),
        spec,
        previous: Some(previous),
        paused: false,
        deleting: false,
        observed,
        rivals,
        now: now(),
        observed_fresh: false,
    }
}

#[test]
fn org_user_plans() {
    let mut failures = Vec::new();
    for c in org_user_cases() {
        let previous = previous_with_adopted(c.previous_adopted);
        let input = OrgUserInput {
            paused: c.paused,
            deleting: c.deleting,
            ..org_input(&c.spec, &previous, c.observed.as_ref(), &c.rivals)
        };
        let plan = plan_org_user(&input);
        let actions = shown(&plan.plan);
        let hold = plan.plan.hold.as_ref().map(|h| h.reason());
        let expected_adopted = if c.hold.is_some() { c.previous_adopted } else { c.adopted };
        let adopted = if c.deleting { None } else { plan.adopted };
        if actions != c.actions || hold != c.hold || (!c.deleting && adopted != expected_adopted) {
            failures.push(format!(
                "{}:\n  actions {actions:?}\n  expected {:?}\n  hold {hold:?} (expected {:?}), adopted {adopted:?} (expected {expected_adopted:?})",
                c.name, c.actions, c.hold
            ));
        }
        if c.hold.is_some() {
            assert!(plan.plan.actions.is_empty(), "{}: a held plan makes no call", c.name);
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// Case 3: project roles change one role at a time (`:addRole` before `:removeRole`), never by
/// a whole-roles PATCH rebuilt from the listing, so a project another party granted in the
/// meantime cannot be revoked by this object's change.
#[test]
fn project_roles_change_atomically_add_before_remove_and_never_patch() {
    let mut s = spec(&[OrgRole::OrgMember]);
    s.project_roles = vec![ProjectRoleAssignment { project_id: P1.into(), roles: vec![ProjectRole::GroupOwner] }];
    let mut u = alice(MembershipStatus::Active, &["ORG_OWNER"]);
    u.roles.group_role_assignments = vec![
        GroupRoleAssignment { group_id: Some(P2.into()), group_roles: vec!["GROUP_READ_ONLY".into()] },
        GroupRoleAssignment { group_id: Some(P1.into()), group_roles: vec!["GROUP_READ_ONLY".into()] },
    ];
    let previous = AtlasOrgUserStatus::default();
    let plan = plan_org_user(&org_input(&s, &previous, Some(&u), &[])).plan;
    assert_eq!(
        shown(&plan),
        vec![
            "add org role ORG_MEMBER to alice@example.com (ALICE) in org ORG",
            "remove org role ORG_OWNER from alice@example.com (ALICE) in org ORG",
            "add project role GROUP_OWNER to alice@example.com (ALICE) in project P1 of org ORG",
            "remove project role GROUP_READ_ONLY from alice@example.com (ALICE) in project P1 of org ORG",
        ]
    );
    let json = serde_json::to_value(&plan.actions).unwrap();
    assert!(json.as_array().unwrap().iter().all(|a| a["op"] != "updateOrgUser"), "no PATCH: {json}");
    assert_eq!(json[2]["op"], "addProjectRole");
    assert_eq!(json[2]["projectId"], P1);
    assert_eq!(json[2]["role"], "GROUP_OWNER");
    // P2 is not this object's: no call names it.
    assert!(!plan.actions.iter().any(|a| a.to_string().contains(P2)), "{plan}");
}

#[test]
fn invitation_request_uses_spec_names() {
    let mut s = spec(&[OrgRole::OrgMember, OrgRole::OrgMember]);
    s.team_ids = vec![T1.into(), T1.into()];
    let previous = AtlasOrgUserStatus::default();
    let plan = plan_org_user(&org_input(&s, &previous, None, &[])).plan;
    let json = serde_json::to_value(&plan.actions).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{
            "op": "createOrgUser",
            "orgId": ORG,
            "request": {"username": "alice@example.com", "roles": {"orgRoles": ["ORG_MEMBER"]}, "teamIds": [T1]},
        }])
    );
}

// ---------------------------------------------------------------------------------------
// AtlasOrgUser status
// ---------------------------------------------------------------------------------------

/// Executes a plan the way the executor will: one outcome per action, stopping where the plan
/// says, each outcome applied to the directory (and team) so the status sees Atlas's answers.
fn execute(
    plan: &Plan,
    directory: &mut OrgUserDirectory,
    mut team: Option<&mut ObservedTeam>,
    mut atlas: impl FnMut(&Action, &OrgUserDirectory) -> ActionOutcome,
) -> Vec<ActionOutcome> {
    let mut outcomes = Vec::new();
    let mut stopped = false;
    for action in &plan.actions {
        let outcome = if stopped { ActionOutcome::Skipped } else { atlas(action, directory) };
        if let ActionOutcome::Failed(e) = &outcome {
            stopped |= !plan.continue_after(e);
        }
        directory.apply(action, &outcome);
        if let Some(team) = team.as_deref_mut() {
            team.apply(action, &outcome);
        }
        outcomes.push(outcome);
    }
    outcomes
}

/// A well-behaved Atlas for the org-user calls: answers with the user as it becomes.
fn obliging_atlas(action: &Action, directory: &OrgUserDirectory) -> ActionOutcome {
    let current = |id: &str| directory.get_by_id(id).cloned().expect("action on a known user");
    match action {
        Action::CreateOrgUser { request, .. } => {
            let mut u = alice(MembershipStatus::Pending, &[]);
            u.roles = request.roles.clone();
            u.team_ids = request.team_ids.clone();
            ActionOutcome::user(u)
        }
        Action::RemoveOrgUser { .. } => ActionOutcome::Done(None),
        Action::AddOrgRole { user_id, role, .. } => {
            let mut u = current(user_id);
            u.roles.org_roles.push(role.clone());
            ActionOutcome::user(u)
        }
        Action::RemoveOrgRole { user_id, role, .. } => {
            let mut u = current(user_id);
            u.roles.org_roles.retain(|r| r != role);
            ActionOutcome::user(u)
        }
        // Project-role calls answer with the project view; the directory applies their effect.
        Action::AddProjectRole { .. } | Action::RemoveProjectRole { .. } | Action::RemoveProjectUser { .. } => {
            ActionOutcome::Done(None)
        }
        Action::AddTeamUser { user_id, team_id, .. } => {
            let mut u = current(user_id);
            u.team_ids.push(team_id.clone());
            ActionOutcome::user(u)
        }
        Action::RemoveTeamUser { user_id, team_id, .. } => {
            let mut u = current(user_id);
            u.team_ids.retain(|t| t != team_id);
            ActionOutcome::user(u)
        }
    }
}

fn condition(status: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition], type_: &str) -> (String, String) {
    let c = find(status, type_).unwrap_or_else(|| panic!("no {type_} condition in {status:?}"));
    (c.status.clone(), c.reason.clone())
}

#[test]
fn invite_then_ready_without_waiting_for_acceptance() {
    let s = spec(&[OrgRole::OrgMember]);
    let previous = AtlasOrgUserStatus::default();
    let mut directory = OrgUserDirectory::default();
    let input = org_input(&s, &previous, None, &[]);
    let plan = plan_org_user(&input);
    let outcomes = execute(&plan.plan, &mut directory, None, obliging_atlas);
    let status = org_user_status(&input, &plan, &outcomes, directory.get(&s.username));
    assert_eq!(status.user_id.as_deref(), Some(ALICE));
    assert_eq!(status.membership_status.as_deref(), Some("PENDING"));
    assert_eq!(status.adopted, Some(false));
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(status.invitation_expires_at.as_deref(), Some("2025-06-19T00:00:00Z"));
    assert_eq!(condition(&status.conditions, conditions::READY), ("True".into(), "Synced".into()));
    assert_eq!(
        condition(&status.conditions, conditions::INVITATION_ACCEPTED),
        ("False".into(), "InvitationPending".into())
    );
    assert!(find(&status.conditions, conditions::RECONCILING).is_none());
    assert!(find(&status.conditions, conditions::STALLED).is_none());
}

#[test]
fn role_swap_executes_in_order_and_ends_ready() {
    let s = spec(&[OrgRole::OrgMember]);
    let previous = previous_with_adopted(Some(true));
    let mut directory = OrgUserDirectory::new([alice(MembershipStatus::Active, &["ORG_OWNER"])]);
    let observed = directory.get(&s.username).cloned();
    let input = org_input(&s, &previous, observed.as_ref(), &[]);
    let plan = plan_org_user(&input);
    let outcomes = execute(&plan.plan, &mut directory, None, obliging_atlas);
    let status = org_user_status(&input, &plan, &outcomes, directory.get(&s.username));
    assert_eq!(status.org_roles, vec!["ORG_MEMBER".to_string()]);
    assert_eq!(condition(&status.conditions, conditions::READY), ("True".into(), "Synced".into()));
    assert_eq!(condition(&status.conditions, conditions::INVITATION_ACCEPTED), ("True".into(), "Accepted".into()));
}

struct StatusCase {
    name: &'static str,
    spec: AtlasOrgUserSpec,
    observed: Option<OrgUser>,
    rivals: Vec<Claim>,
    paused: bool,
    /// Atlas's answer to the action at this index (the others succeed).
    failure: Option<(usize, ActionError)>,
    ready: (&'static str, &'static str),
    /// Reconciling or Stalled, with its reason; None: neither.
    kstatus: Option<(&'static str, &'static str)>,
    message_has: &'static str,
}

fn last_owner_refusal() -> ActionError {
    ActionError::atlas(
        ErrorClass::Permanent,
        400,
        codes::CANNOT_REMOVE_LAST_ORG_OWNER,
        "The organization must have at least one owner.",
    )
}

fn rate_limited() -> ActionError {
    ActionError {
        retry_after_secs: Some(30),
        ..ActionError::atlas(ErrorClass::RateLimited, 429, codes::RATE_LIMITED_TOKEN_BUCKET, "Too many requests.")
    }
}

#[test]
fn org_user_status_conditions() {
    use MembershipStatus::*;
    let base = |name, spec, observed| StatusCase {
        name,
        spec,
        observed,
        rivals: Vec::new(),
        paused: false,
        failure: None,
        ready: ("True", "Synced"),
        kstatus: None,
        message_has: "",
    };
    let cases = vec![
        StatusCase {
            message_has: "awaits acceptance",
            ..base("pending counts as ready", spec(&[OrgRole::OrgMember]), Some(alice(Pending, &["ORG_MEMBER"])))
        },
        StatusCase {
            ready: ("False", "InvitationExpired"),
            kstatus: Some(("Stalled", "InvitationExpired")),
            message_has: "reinvite is Never",
            ..base(
                "expired, Never: stalled",
                with_reinvite(ReinvitePolicy::Never),
                Some(alice(InvitationExpired, &["ORG_MEMBER"])),
            )
        },
        StatusCase {
            ready: ("False", "InvitationRejected"),
            kstatus: Some(("Stalled", "InvitationRejected")),
            message_has: "OnExpiryOrRejection",
            ..base(
                "rejected, OnExpiry: stalled",
                with_reinvite(ReinvitePolicy::OnExpiry),
                Some(alice(InvitationRejected, &["ORG_MEMBER"])),
            )
        },
        StatusCase {
            rivals: vec![Claim::new("team-a", "older", Some(at("2025-01-01T00:00:00Z")))],
            ready: ("False", "Conflict"),
            kstatus: Some(("Stalled", "Conflict")),
            message_has: "team-a/older",
            ..base(
                "conflict names an owner in the same namespace",
                spec(&[OrgRole::OrgMember]),
                Some(alice(Active, &["ORG_MEMBER"])),
            )
        },
        StatusCase {
            rivals: vec![Claim::new("team-b", "older", Some(at("2025-01-01T00:00:00Z")))],
            ready: ("False", "Conflict"),
            kstatus: Some(("Stalled", "Conflict")),
            message_has: "an object in another namespace (older) already manages",
            ..base(
                "conflict never names an object in another namespace",
                spec(&[OrgRole::OrgMember]),
                Some(alice(Active, &["ORG_MEMBER"])),
            )
        },
        StatusCase {
            failure: Some((1, last_owner_refusal())),
            ready: ("False", "AtlasError"),
            kstatus: Some(("Stalled", "AtlasError")),
            message_has: "remove org role ORG_OWNER from alice@example.com",
            ..base("Atlas refuses the owner removal", spec(&[OrgRole::OrgMember]), Some(alice(Active, &["ORG_OWNER"])))
        },
        StatusCase {
            failure: Some((0, rate_limited())),
            ready: ("False", "RateLimited"),
            kstatus: Some(("Reconciling", "RateLimited")),
            message_has: "HTTP 429 RATE_LIMITED_TOKEN_BUCKET: Too many requests. (retry after 30s)",
            ..base("rate limited", spec(&[OrgRole::OrgMember]), None)
        },
        StatusCase {
            failure: Some((
                0,
                ActionError::atlas(ErrorClass::Conflict, 409, codes::USER_ALREADY_IN_ORG, "already in org"),
            )),
            ready: ("False", "AlreadyInOrg"),
            kstatus: Some(("Reconciling", "AlreadyInOrg")),
            message_has: "adopting it on the next pass",
            ..base("invitation answered 409: adopt next", spec(&[OrgRole::OrgMember]), None)
        },
        StatusCase {
            failure: Some((
                0,
                ActionError::atlas(ErrorClass::Auth, 401, codes::UNAUTHORIZED, "You are not authorized."),
            )),
            ready: ("False", "AtlasUnauthorized"),
            kstatus: Some(("Stalled", "AtlasUnauthorized")),
            message_has: "HTTP 401 UNAUTHORIZED",
            ..base("bad credentials", spec(&[OrgRole::OrgMember]), None)
        },
        StatusCase {
            paused: true,
            ready: ("False", "Paused"),
            kstatus: Some(("Stalled", "Paused")),
            message_has: "1 change(s) waiting, first: add org role ORG_MEMBER",
            ..base(
                "paused with drift",
                spec(&[OrgRole::OrgMember, OrgRole::OrgOwner]),
                Some(alice(Active, &["ORG_OWNER"])),
            )
        },
        StatusCase {
            paused: true,
            ready: ("True", "Paused"),
            message_has: "paused by the annotation",
            ..base("paused without drift", spec(&[OrgRole::OrgMember]), Some(alice(Active, &["ORG_MEMBER"])))
        },
    ];
    let mut failures = Vec::new();
    for c in cases {
        let previous = AtlasOrgUserStatus::default();
        let mut directory = OrgUserDirectory::new(c.observed.clone());
        let input = OrgUserInput { paused: c.paused, ..org_input(&c.spec, &previous, c.observed.as_ref(), &c.rivals) };
        let plan = plan_org_user(&input);
        let failure = c.failure.clone();
        let mut index = 0;
        let outcomes = execute(&plan.plan, &mut directory, None, |a, d| {
            let i = index;
            index += 1;
            match &failure {
                Some((at, e)) if *at == i => ActionOutcome::Failed(e.clone()),
                _ => obliging_atlas(a, d),
            }
        });
        let status = org_user_status(&input, &plan, &outcomes, directory.get(&c.spec.username));
        let ready = find(&status.conditions, conditions::READY).unwrap();
        let got_ready = (ready.status.as_str(), ready.reason.as_str());
        let kstatus = [conditions::RECONCILING, conditions::STALLED]
            .into_iter()
            .find_map(|t| find(&status.conditions, t).map(|k| (t, k.reason.as_str())));
        if got_ready != c.ready || kstatus != c.kstatus || !ready.message.contains(c.message_has) {
            failures.push(format!(
                "{}: Ready {got_ready:?} {:?} (expected {:?} containing {:?}), kstatus {kstatus:?} (expected {:?})",
                c.name, ready.message, c.ready, c.message_has, c.kstatus
            ));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_failure_skips_the_rest_and_the_status_shows_what_was_done() {
    // ORG_OWNER -> ORG_MEMBER plus a project role: the add works, the removal is refused, the
    // PATCH is never sent.
    let mut s = spec(&[OrgRole::OrgMember]);
    s.project_roles = vec![ProjectRoleAssignment { project_id: P1.into(), roles: vec![ProjectRole::GroupOwner] }];
    let previous = previous_with_adopted(Some(true));
    let mut directory = OrgUserDirectory::new([alice(MembershipStatus::Active, &["ORG_OWNER"])]);
    let observed = directory.get(&s.username).cloned();
    let input = org_input(&s, &previous, observed.as_ref(), &[]);
    let plan = plan_org_user(&input);
    assert_eq!(plan.plan.actions.len(), 3);
    let outcomes = execute(&plan.plan, &mut directory, None, |a, d| match a {
        Action::RemoveOrgRole { .. } => ActionOutcome::Failed(last_owner_refusal()),
        _ => obliging_atlas(a, d),
    });
    assert_eq!(outcomes[2], ActionOutcome::Skipped);
    let status = org_user_status(&input, &plan, &outcomes, directory.get(&s.username));
    let mut roles = status.org_roles.clone();
    roles.sort();
    assert_eq!(roles, vec!["ORG_MEMBER".to_string(), "ORG_OWNER".to_string()], "the add happened, the removal not");
    assert_eq!(status.project_roles[0].roles, Vec::<String>::new());
    let ready = find(&status.conditions, conditions::READY).unwrap();
    assert!(ready.message.contains("CANNOT_REMOVE_LAST_ORG_OWNER: The organization must have at least one owner."));
}

#[test]
fn last_transition_time_moves_only_on_flips() {
    let s = spec(&[OrgRole::OrgMember]);
    // Invited by someone else before this object existed.
    let u = invited_at(alice(MembershipStatus::Pending, &["ORG_MEMBER"]), "2025-04-20T00:00:00Z");
    let directory = OrgUserDirectory::new([u.clone()]);
    let first = {
        let previous = AtlasOrgUserStatus::default();
        let input = org_input(&s, &previous, Some(&u), &[]);
        let plan = plan_org_user(&input);
        org_user_status(&input, &plan, &[], directory.get(&s.username))
    };
    let ready_time = |st: &AtlasOrgUserStatus, t| find(&st.conditions, t).unwrap().last_transition_time.0;
    assert_eq!(ready_time(&first, conditions::READY), now());

    // An hour later, same state, new generation: times stay, observedGeneration moves.
    let later = at("2025-06-01T01:00:00Z");
    let second = {
        let input = OrgUserInput { now: later, generation: Some(4), ..org_input(&s, &first, Some(&u), &[]) };
        let plan = plan_org_user(&input);
        org_user_status(&input, &plan, &[], Some(&u))
    };
    assert_eq!(ready_time(&second, conditions::READY), now());
    assert_eq!(ready_time(&second, conditions::INVITATION_ACCEPTED), now());
    assert_eq!(second.observed_generation, Some(4));
    assert!(second.conditions.iter().all(|c| c.observed_generation == Some(4)));

    // Accepted two hours later: InvitationAccepted flips (time moves), Ready does not.
    let accepted = alice(MembershipStatus::Active, &["ORG_MEMBER"]);
    let third_time = at("2025-06-01T02:00:00Z");
    let third = {
        let input = OrgUserInput { now: third_time, ..org_input(&s, &second, Some(&accepted), &[]) };
        let plan = plan_org_user(&input);
        org_user_status(&input, &plan, &[], Some(&accepted))
    };
    assert_eq!(ready_time(&third, conditions::READY), now());
    assert_eq!(ready_time(&third, conditions::INVITATION_ACCEPTED), third_time);
    // Found PENDING on the first pass without having invited: adopted, and that sticks.
    assert_eq!((first.adopted, third.adopted), (Some(true), Some(true)));
}

#[test]
fn deletion_and_the_finalizer() {
    use MembershipStatus::*;
    let s = spec(&[OrgRole::OrgMember]);
    let orphan = AtlasOrgUserSpec { deletion_policy: Some(DeletionPolicy::Orphan), ..spec(&[OrgRole::OrgMember]) };
    // The object invited alice: deletion under Delete removes her.
    let previous = previous_with_adopted(Some(false));
    let gone = ActionError::atlas(ErrorClass::NotFound, 404, codes::RESOURCE_NOT_FOUND, "No user.");
    // (name, spec, paused, Atlas's answer to the removal, finalizer may go)
    let cases: Vec<(&str, &AtlasOrgUserSpec, bool, Option<ActionOutcome>, bool)> = vec![
        ("removed", &s, false, Some(ActionOutcome::Done(None)), true),
        ("already gone (404) counts as removed", &s, false, Some(ActionOutcome::Failed(gone)), true),
        ("last owner refusal keeps the finalizer", &s, false, Some(ActionOutcome::Failed(last_owner_refusal())), false),
        ("orphan makes no call and lets go", &orphan, false, None, true),
        ("paused keeps the finalizer", &s, true, None, false),
    ];
    for (name, spec, paused, answer, may_remove) in cases {
        let u = alice(Active, &["ORG_MEMBER"]);
        let mut directory = OrgUserDirectory::new([u.clone()]);
        let input = OrgUserInput { deleting: true, paused, ..org_input(spec, &previous, Some(&u), &[]) };
        let plan = plan_org_user(&input);
        let mut calls = 0;
        let outcomes = execute(&plan.plan, &mut directory, None, |_, _| {
            calls += 1;
            answer.clone().expect("no call expected")
        });
        assert_eq!(calls, usize::from(answer.is_some()), "{name}");
        assert_eq!(plan.plan.finalizer_may_be_removed(&outcomes), may_remove, "{name}");
        if !may_remove && !paused {
            let status = org_user_status(&input, &plan, &outcomes, directory.get(&spec.username));
            assert_eq!(
                condition(&status.conditions, conditions::STALLED),
                ("True".into(), "AtlasError".into()),
                "{name}"
            );
        }
        if may_remove && answer.is_some() {
            assert!(directory.get(&spec.username).is_none(), "{name}: the directory forgets the removed user");
        }
    }
}

// ---------------------------------------------------------------------------------------
// AtlasTeamMembership
// ---------------------------------------------------------------------------------------

fn by_name(username: &str) -> TeamMember {
    TeamMember { username: Some(username.into()), org_user_ref: None }
}

fn by_ref(name: &str) -> TeamMember {
    TeamMember { username: None, org_user_ref: Some(OrgUserRef { name: name.into() }) }
}

fn team_spec(mode: MembershipMode, members: Vec<TeamMember>) -> AtlasTeamMembershipSpec {
    AtlasTeamMembershipSpec {
        org_id: ORG.into(),
        team: TeamRef { id: Some(T1.into()), name: None },
        members,
        mode,
        credentials_secret_ref: None,
        deletion_policy: Some(DeletionPolicy::Delete),
    }
}

/// alice ACTIVE (in the team), bob ACTIVE, carol PENDING, dave INVITATION_EXPIRED, and a
/// stranger ACTIVE (in the team).
fn org_directory() -> OrgUserDirectory {
    use MembershipStatus::*;
    OrgUserDirectory::new([
        alice(Active, &["ORG_MEMBER"]),
        user(BOB, "bob@example.com", Active, &["ORG_MEMBER"]),
        user(CAROL, "carol@example.com", Pending, &["ORG_MEMBER"]),
        user(DAVE, "dave@example.com", InvitationExpired, &["ORG_MEMBER"]),
        user(STRANGER, "stranger@example.com", Active, &["ORG_MEMBER"]),
    ])
}

fn observed_team(member_ids: &[&str]) -> ObservedTeam {
    let directory = org_directory();
    ObservedTeam::new(
        Team { id: T1.into(), name: "platform-admins".into(), links: Vec::new() },
        member_ids.iter().map(|id| directory.get_by_id(id).cloned().unwrap()),
    )
}

fn added(entries: &[(&str, &str)]) -> AtlasTeamMembershipStatus {
    AtlasTeamMembershipStatus {
        added_members: entries
            .iter()
            .map(|(id, name)| AddedMember { user_id: id.to_string(), username: name.to_string() })
            .collect(),
        ..Default::default()
    }
}

struct TeamCase {
    name: &'static str,
    spec: AtlasTeamMembershipSpec,
    in_team: Vec<&'static str>,
    previous: AtlasTeamMembershipStatus,
    deleting: bool,
    paused: bool,
    team_missing: bool,
    actions: Vec<&'static str>,
    hold: Option<&'static str>,
}

fn team_case(name: &'static str, spec: AtlasTeamMembershipSpec, in_team: &[&'static str]) -> TeamCase {
    TeamCase {
        name,
        spec,
        in_team: in_team.to_vec(),
        previous: AtlasTeamMembershipStatus::default(),
        deleting: false,
        paused: false,
        team_missing: false,
        actions: Vec::new(),
        hold: None,
    }
}

fn refs() -> BTreeMap<String, String> {
    BTreeMap::from([("bob".to_string(), "Bob@Example.com".to_string())])
}

fn team_input<'a>(
    spec: &'a AtlasTeamMembershipSpec,
    previous: &'a AtlasTeamMembershipStatus,
    team: Option<&'a ObservedTeam>,
    directory: &'a OrgUserDirectory,
    refs: &'a BTreeMap<String, String>,
) -> TeamInput<'a> {
    TeamInput {
        claim: Claim::new("team-a", "admins", Some(at("2025-05-01T00:00:00Z"))),
        generation: Some(2),
        spec,
        previous: Some(previous),
        paused: false,
        deleting: false,
        team,
        directory,
        org_user_refs: refs,
        direct_reads: &NO_READS,
        writers: &[],
        now: now(),
    }
}

/// No recorded user needed a direct read.
static NO_READS: BTreeMap<String, bool> = BTreeMap::new();

#[test]
fn team_plans() {
    use MembershipMode::*;
    let listed = || vec![by_name("alice@example.com"), by_name("bob@example.com")];
    let too_many: Vec<TeamMember> = (0..251).map(|i| by_name(&format!("user{i}@example.com"))).collect();
    let cases = vec![
        TeamCase {
            actions: vec!["add bob@example.com (BOB) to team T1 in org ORG"],
            ..team_case(
                "Additive adds the missing member and never removes a stranger",
                team_spec(Additive, listed()),
                &[ALICE, STRANGER],
            )
        },
        TeamCase {
            previous: added(&[(CAROL, "carol@example.com")]),
            actions: vec![
                "remove carol@example.com (CAROL) from team T1 in org ORG",
                "add bob@example.com (BOB) to team T1 in org ORG",
            ],
            ..team_case(
                "Additive removes a user it added and no longer lists",
                team_spec(Additive, listed()),
                &[ALICE, CAROL, STRANGER],
            )
        },
        TeamCase {
            previous: added(&[(BOB, "bob@example.com")]),
            ..team_case("Additive keeps a listed user it added", team_spec(Additive, listed()), &[ALICE, BOB, STRANGER])
        },
        TeamCase {
            previous: added(&[(CAROL, "carol@example.com")]),
            ..team_case(
                "Additive: an added user already gone needs no call",
                team_spec(Additive, listed()),
                &[ALICE, BOB],
            )
        },
        TeamCase {
            actions: vec![
                "remove stranger@example.com (STRANGER) from team T1 in org ORG",
                "add bob@example.com (BOB) to team T1 in org ORG",
            ],
            ..team_case(
                "Exclusive removes strangers (first) and adds the missing",
                team_spec(Exclusive, listed()),
                &[ALICE, STRANGER],
            )
        },
        TeamCase {
            actions: vec!["add carol@example.com (CAROL) to team T1 in org ORG"],
            ..team_case(
                "a PENDING org user can be added; NotInOrg ones get no call",
                team_spec(
                    Additive,
                    vec![by_name("carol@example.com"), by_name("dave@example.com"), by_name("nobody@example.com")],
                ),
                &[],
            )
        },
        TeamCase {
            actions: vec!["add bob@example.com (BOB) to team T1 in org ORG"],
            ..team_case(
                "orgUserRef resolves through the AtlasOrgUser's username (any case)",
                team_spec(Additive, vec![by_ref("bob")]),
                &[],
            )
        },
        TeamCase {
            actions: vec!["add bob@example.com (BOB) to team T1 in org ORG"],
            ..team_case(
                "a user listed twice (name and ref) is added once",
                team_spec(Additive, vec![by_name("BOB@example.com"), by_ref("bob")]),
                &[],
            )
        },
        team_case(
            "Exclusive with an unresolved orgUserRef removes nobody",
            team_spec(Exclusive, vec![by_name("alice@example.com"), by_ref("missing")]),
            &[ALICE, STRANGER],
        ),
        TeamCase {
            hold: Some("TooManyMembers"),
            ..team_case("251 members refused before any call", team_spec(Exclusive, too_many), &[STRANGER])
        },
        TeamCase {
            team_missing: true,
            hold: Some("TeamNotFound"),
            ..team_case("team not found", team_spec(Additive, listed()), &[])
        },
        TeamCase {
            paused: true,
            hold: Some("Paused"),
            ..team_case("paused: no call", team_spec(Exclusive, listed()), &[STRANGER])
        },
        TeamCase {
            deleting: true,
            previous: added(&[(BOB, "bob@example.com"), (CAROL, "carol@example.com")]),
            actions: vec!["remove bob@example.com (BOB) from team T1 in org ORG"],
            ..team_case(
                "delete, Additive: only added members still in the team",
                team_spec(Additive, listed()),
                &[ALICE, BOB, STRANGER],
            )
        },
        TeamCase {
            deleting: true,
            previous: added(&[(BOB, "bob@example.com")]),
            actions: vec![
                "remove alice@example.com (ALICE) from team T1 in org ORG",
                "remove bob@example.com (BOB) from team T1 in org ORG",
            ],
            ..team_case(
                "delete, Exclusive: listed and added members, not strangers",
                team_spec(Exclusive, listed()),
                &[ALICE, BOB, STRANGER],
            )
        },
        TeamCase {
            deleting: true,
            previous: added(&[(BOB, "bob@example.com")]),
            ..team_case(
                "delete, Orphan: no call",
                AtlasTeamMembershipSpec {
                    deletion_policy: Some(DeletionPolicy::Orphan),
                    ..team_spec(Additive, listed())
                },
                &[ALICE, BOB],
            )
        },
    ];
    let directory = org_directory();
    let refs = refs();
    let mut failures = Vec::new();
    for c in cases {
        let team = observed_team(&c.in_team);
        let input = TeamInput {
            deleting: c.deleting,
            paused: c.paused,
            ..team_input(&c.spec, &c.previous, (!c.team_missing).then_some(&team), &directory, &refs)
        };
        let plan = plan_team_membership(&input);
        let actions = shown(&plan.plan);
        let hold = plan.plan.hold.as_ref().map(|h| h.reason());
        if actions != c.actions || hold != c.hold {
            failures.push(format!(
                "{}:\n  actions {actions:?}\n  expected {:?}\n  hold {hold:?} (expected {:?})",
                c.name, c.actions, c.hold
            ));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// A user id and how Atlas refuses calls about that user.
type Refusal = (&'static str, fn() -> ActionError);

/// Atlas for team calls: adds and removes succeed unless `refuse` names the user.
fn team_atlas(refuse: &'static [Refusal]) -> impl Fn(&Action, &OrgUserDirectory) -> ActionOutcome {
    move |action, directory| match refuse.iter().find(|(id, _)| action.user_id() == Some(*id)) {
        Some((_, error)) => ActionOutcome::Failed(error()),
        None => obliging_atlas(action, directory),
    }
}

fn member_states(status: &AtlasTeamMembershipStatus) -> Vec<(String, MemberState)> {
    status.members.iter().map(|m| (m.username.clone().or_else(|| m.org_user_ref.clone()).unwrap(), m.state)).collect()
}

fn team_full() -> ActionError {
    ActionError::atlas(ErrorClass::Permanent, 400, codes::TEAM_USER_LIMIT_EXCEEDED, "The team has 250 users.")
}

fn not_in_org() -> ActionError {
    ActionError::atlas(ErrorClass::Permanent, 400, codes::USER_NOT_IN_ORG, "The user is not in the organization.")
}

#[test]
fn member_not_in_org_while_the_others_succeed() {
    use MemberState::*;
    let spec = team_spec(
        MembershipMode::Additive,
        vec![by_name("alice@example.com"), by_ref("bob"), by_name("carol@example.com"), by_name("dave@example.com")],
    );
    let mut directory = org_directory();
    let mut team = observed_team(&[ALICE]);
    let refs = refs();
    let previous = AtlasTeamMembershipStatus::default();
    let (initial_directory, initial_team) = (directory.clone(), team.clone());
    let input = team_input(&spec, &previous, Some(&initial_team), &initial_directory, &refs);
    let plan = plan_team_membership(&input);
    let outcomes = execute(&plan.plan, &mut directory, Some(&mut team), team_atlas(&[]));
    let status = team_membership_status(&input, &plan, &outcomes, &directory, Some(&team));
    assert_eq!(
        member_states(&status),
        vec![
            ("alice@example.com".into(), Member),
            ("Bob@Example.com".into(), Member),
            ("carol@example.com".into(), Pending),
            ("dave@example.com".into(), NotInOrg),
        ]
    );
    assert_eq!(
        status.added_members.iter().map(|a| a.user_id.as_str()).collect::<Vec<_>>(),
        vec![BOB, CAROL],
        "alice was there before: not ours to remove"
    );
    assert_eq!(status.member_count, Some(3));
    assert_eq!(status.team_name.as_deref(), Some("platform-admins"));
    let ready = find(&status.conditions, conditions::READY).unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "MembersNotInOrg"));
    assert!(ready.message.contains("dave@example.com"), "{}", ready.message);
    assert_eq!(status.members[3].message.as_deref(), Some("the invitation to the org expired"));
    // dave is listed by username and no AtlasOrgUser declares him: only a person can fix it.
    assert_eq!(condition(&status.conditions, conditions::STALLED), ("True".into(), "MembersNotInOrg".into()));
    assert_eq!(status.listed_in_team.as_deref(), Some("3/4"), "alice, bob and carol are in the team");
}

#[test]
fn partial_failure_records_exactly_what_was_done() {
    use MemberState::*;
    // Additive: carol was added earlier and is no longer listed (her removal works); bob is
    // missing and Atlas refuses him (team full); alice was already in.
    let spec = team_spec(MembershipMode::Additive, vec![by_name("alice@example.com"), by_name("bob@example.com")]);
    let previous = added(&[(CAROL, "carol@example.com")]);
    let mut directory = org_directory();
    let mut team = observed_team(&[ALICE, CAROL]);
    let refs = refs();
    let (initial_directory, initial_team) = (directory.clone(), team.clone());
    let input = team_input(&spec, &previous, Some(&initial_team), &initial_directory, &refs);
    let plan = plan_team_membership(&input);
    assert_eq!(plan.plan.actions.len(), 2);
    let outcomes = execute(&plan.plan, &mut directory, Some(&mut team), team_atlas(&[(BOB, team_full)]));
    let status = team_membership_status(&input, &plan, &outcomes, &directory, Some(&team));
    assert_eq!(
        status.added_members.iter().map(|a| a.user_id.as_str()).collect::<Vec<_>>(),
        vec![BOB],
        "carol removed; bob stays recorded (written ahead) until a direct read shows him outside the team"
    );
    assert_eq!(member_states(&status), vec![("alice@example.com".into(), Member), ("bob@example.com".into(), Failed)]);
    assert_eq!(
        status.members[1].message.as_deref(),
        Some("HTTP 400 TEAM_USER_LIMIT_EXCEEDED: The team has 250 users.")
    );
    assert_eq!(condition(&status.conditions, conditions::READY), ("False".into(), "AtlasError".into()));
    assert_eq!(condition(&status.conditions, conditions::STALLED), ("True".into(), "AtlasError".into()));
}

#[test]
fn failed_removal_keeps_the_user_in_the_added_set_and_rate_limits_stop_the_rest() {
    let spec = team_spec(MembershipMode::Additive, vec![by_name("alice@example.com"), by_name("bob@example.com")]);
    let previous = added(&[(CAROL, "carol@example.com"), (DAVE, "dave@example.com")]);
    let mut directory = org_directory();
    let mut team = observed_team(&[CAROL, DAVE]);
    let refs = refs();
    let (initial_directory, initial_team) = (directory.clone(), team.clone());
    let input = team_input(&spec, &previous, Some(&initial_team), &initial_directory, &refs);
    let plan = plan_team_membership(&input);
    // remove carol, remove dave, add alice, add bob; carol's removal is rate limited.
    assert_eq!(plan.plan.actions.len(), 4, "{}", plan.plan);
    let outcomes = execute(&plan.plan, &mut directory, Some(&mut team), team_atlas(&[(CAROL, rate_limited)]));
    assert!(outcomes[1..].iter().all(|o| *o == ActionOutcome::Skipped), "{outcomes:?}");
    let status = team_membership_status(&input, &plan, &outcomes, &directory, Some(&team));
    let recorded: Vec<&str> = status.added_members.iter().map(|a| a.user_id.as_str()).collect();
    // Nothing was removed; alice and bob were recorded ahead of their (skipped) additions.
    assert_eq!(recorded, vec![ALICE, BOB, CAROL, DAVE]);
    assert_eq!(condition(&status.conditions, conditions::RECONCILING), ("True".into(), "RateLimited".into()));
    assert!(status.members.iter().all(|m| m.state == MemberState::Pending), "{:?}", status.members);
}

#[test]
fn user_not_in_org_from_atlas_is_a_member_state_not_an_object_error() {
    let spec = team_spec(MembershipMode::Additive, vec![by_name("alice@example.com"), by_name("bob@example.com")]);
    let previous = AtlasTeamMembershipStatus::default();
    let mut directory = org_directory();
    let mut team = observed_team(&[]);
    let refs = refs();
    let (initial_directory, initial_team) = (directory.clone(), team.clone());
    let input = team_input(&spec, &previous, Some(&initial_team), &initial_directory, &refs);
    let plan = plan_team_membership(&input);
    // bob's invitation lapsed between the listing and the call: Atlas says USER_NOT_IN_ORG.
    let outcomes = execute(&plan.plan, &mut directory, Some(&mut team), team_atlas(&[(BOB, not_in_org)]));
    assert_eq!(outcomes.len(), 2);
    assert!(matches!(outcomes[0], ActionOutcome::Done(_)), "alice is still added: {outcomes:?}");
    let status = team_membership_status(&input, &plan, &outcomes, &directory, Some(&team));
    assert_eq!(status.members[0].state, MemberState::Member);
    assert_eq!(status.members[1].state, MemberState::NotInOrg);
    // bob is declared by the AtlasOrgUser "bob": waiting for its invitation is progress.
    assert!(find(&status.conditions, conditions::STALLED).is_none());
    assert_eq!(condition(&status.conditions, conditions::RECONCILING).0, "True");
}

#[test]
fn team_status_conditions() {
    use MembershipMode::*;
    let directory = org_directory();
    let refs = refs();
    let too_many: Vec<TeamMember> = (0..251).map(|i| by_name(&format!("user{i}@example.com"))).collect();
    struct Case {
        name: &'static str,
        spec: AtlasTeamMembershipSpec,
        in_team: Vec<&'static str>,
        paused: bool,
        ready: (&'static str, &'static str),
        /// Reconciling or Stalled with its reason; None: neither.
        kstatus: Option<(&'static str, &'static str)>,
        message_has: &'static str,
    }
    let cases = vec![
        Case {
            name: "all in: ready",
            spec: team_spec(Additive, vec![by_name("alice@example.com")]),
            in_team: vec![ALICE],
            paused: false,
            ready: ("True", "Synced"),
            kstatus: None,
            message_has: "all 1 member(s)",
        },
        Case {
            name: "a pending member in the team still counts as ready",
            spec: team_spec(Additive, vec![by_name("carol@example.com")]),
            in_team: vec![CAROL],
            paused: false,
            ready: ("True", "Synced"),
            kstatus: None,
            message_has: "1 have not accepted",
        },
        Case {
            name: "unresolved orgUserRef",
            spec: team_spec(Additive, vec![by_ref("ghost")]),
            in_team: vec![],
            paused: false,
            ready: ("False", "OrgUserRefNotFound"),
            kstatus: Some(("Reconciling", "OrgUserRefNotFound")),
            message_has: "ghost",
        },
        Case {
            name: "too many members",
            spec: team_spec(Additive, too_many),
            in_team: vec![],
            paused: false,
            ready: ("False", "TooManyMembers"),
            kstatus: Some(("Stalled", "TooManyMembers")),
            message_has: "251 members listed",
        },
        Case {
            name: "paused with a stranger to remove",
            spec: team_spec(Exclusive, vec![by_name("alice@example.com")]),
            in_team: vec![ALICE, STRANGER],
            paused: true,
            ready: ("False", "Paused"),
            // Paused with changes waiting is Stalled: kstatus says Failed instead of InProgress forever.
            kstatus: Some(("Stalled", "Paused")),
            message_has: "remove stranger@example.com",
        },
        Case {
            name: "paused and in sync",
            spec: team_spec(Additive, vec![by_name("alice@example.com")]),
            in_team: vec![ALICE],
            paused: true,
            ready: ("True", "Paused"),
            kstatus: None,
            message_has: "paused by the annotation",
        },
        Case {
            name: "a member not in the org that no AtlasOrgUser declares (a typo): stalled",
            spec: team_spec(Additive, vec![by_name("alice@example.com"), by_name("dave@example.com")]),
            in_team: vec![ALICE],
            paused: false,
            ready: ("False", "MembersNotInOrg"),
            kstatus: Some(("Stalled", "MembersNotInOrg")),
            message_has: "no AtlasOrgUser in namespace team-a declares dave@example.com",
        },
    ];
    for Case { name, spec, in_team, paused, ready, kstatus, message_has: fragment } in cases {
        let previous = AtlasTeamMembershipStatus::default();
        let team = observed_team(&in_team);
        let input = TeamInput { paused, ..team_input(&spec, &previous, Some(&team), &directory, &refs) };
        let plan = plan_team_membership(&input);
        assert!(paused || plan.plan.actions.is_empty(), "{name}: {}", plan.plan);
        let status = team_membership_status(&input, &plan, &[], &directory, Some(&team));
        let r = find(&status.conditions, conditions::READY).unwrap();
        assert_eq!((r.status.as_str(), r.reason.as_str()), ready, "{name}: {}", r.message);
        assert!(r.message.contains(fragment), "{name}: {:?} lacks {fragment:?}", r.message);
        let got = [conditions::RECONCILING, conditions::STALLED]
            .into_iter()
            .find_map(|t| find(&status.conditions, t).map(|k| (t, k.reason.as_str())));
        assert_eq!(got, kstatus, "{name}");
        assert_eq!(status.observed_generation, Some(2));
    }
}

#[test]
fn continue_after_distinguishes_per_member_refusals_from_global_ones() {
    let team_spec_ = team_spec(MembershipMode::Additive, vec![by_name("bob@example.com")]);
    let previous = AtlasTeamMembershipStatus::default();
    let directory = org_directory();
    let team = observed_team(&[]);
    let refs = refs();
    let team_plan = plan_team_membership(&team_input(&team_spec_, &previous, Some(&team), &directory, &refs)).plan;
    assert!(team_plan.continue_after(&team_full()));
    assert!(!team_plan.continue_after(&rate_limited()));
    assert!(!team_plan.continue_after(&ActionError::new(ErrorClass::Transient, "connection reset")));
    let s = spec(&[OrgRole::OrgMember]);
    let prev = AtlasOrgUserStatus::default();
    let u = alice(MembershipStatus::Active, &["ORG_OWNER"]);
    let user_plan = plan_org_user(&org_input(&s, &prev, Some(&u), &[])).plan;
    assert!(!user_plan.continue_after(&team_full()), "org-user plans stop at the first failure");
}

#[test]
fn directory_prefers_the_live_record_and_follows_writes() {
    use MembershipStatus::*;
    let old = user("6c00000000000000000000aa", "Alice@Example.com", InvitationExpired, &["ORG_MEMBER"]);
    let live = alice(Pending, &["ORG_MEMBER"]);
    for users in [vec![old.clone(), live.clone()], vec![live.clone(), old.clone()]] {
        let d = OrgUserDirectory::new(users);
        assert_eq!(d.len(), 1);
        assert_eq!(d.get("ALICE@example.com").map(|u| u.id.as_str()), Some(ALICE));
    }
    let mut d = OrgUserDirectory::new([old]);
    let invite = Action::CreateOrgUser {
        org_id: ORG.into(),
        request: atlas_access_operator::atlas::models::OrgUserRequest {
            username: "alice@example.com".into(),
            roles: OrgUserRoles { org_roles: vec!["ORG_MEMBER".into()], group_role_assignments: Vec::new() },
            team_ids: Vec::new(),
        },
        reissues: Some(InvitationExpired),
    };
    d.apply(&invite, &ActionOutcome::user(live.clone()));
    assert_eq!(d.get("alice@example.com"), Some(&live));
    let remove = Action::RemoveOrgUser {
        org_id: ORG.into(),
        user_id: ALICE.into(),
        username: "alice@example.com".into(),
        membership_status: Pending,
        purpose: atlas_access_operator::reconcile::RemovalPurpose::Deletion,
    };
    d.apply(&remove, &ActionOutcome::Failed(last_owner_refusal()));
    assert!(d.get("alice@example.com").is_some(), "a refused removal changes nothing");
    d.apply(&remove, &ActionOutcome::Done(None));
    assert!(d.is_empty());
}

// ---------------------------------------------------------------------------------------
// Exhaustive properties (the spaces are small enough to enumerate instead of sampling)
// ---------------------------------------------------------------------------------------

fn subset<T: Copy>(all: &[T], mask: u32) -> Vec<T> {
    all.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, r)| *r).collect()
}

#[test]
fn org_roles_converge_without_ever_reaching_zero_roles() {
    let all = OrgRole::ALL;
    let full = (1u32 << all.len()) - 1;
    let previous = previous_with_adopted(Some(true));
    let mut pairs = 0;
    for observed_mask in 1..=full {
        for desired_mask in 1..=full {
            let observed: Vec<&str> = subset(all, observed_mask).iter().map(|r| r.as_str()).collect();
            let s = spec(&subset(all, desired_mask));
            let u = alice(MembershipStatus::Active, &observed);
            let plan = plan_org_user(&org_input(&s, &previous, Some(&u), &[])).plan;
            let mut held: Vec<String> = u.roles.org_roles.clone();
            let mut owner_removed = false;
            for action in &plan.actions {
                assert!(!owner_removed, "ORG_OWNER removal must be the last role call: {plan}");
                match action {
                    Action::AddOrgRole { role, .. } => held.push(role.clone()),
                    Action::RemoveOrgRole { role, .. } => {
                        held.retain(|r| r != role);
                        owner_removed = role == "ORG_OWNER";
                    }
                    other => panic!("unexpected call {other}"),
                }
                assert!(!held.is_empty(), "zero roles after {action}: {plan}");
            }
            held.sort();
            let mut want: Vec<String> = s.org_roles.iter().map(|r| r.as_str().to_string()).collect();
            want.sort();
            assert_eq!(held, want, "{plan}");
            pairs += 1;
        }
    }
    assert_eq!(pairs, 127 * 127);
}

#[test]
fn team_membership_converges_in_one_pass_and_additive_never_touches_strangers() {
    use std::collections::BTreeSet;
    // alice, bob ACTIVE; carol PENDING; dave INVITATION_EXPIRED; stranger ACTIVE.
    let universe = [ALICE, BOB, CAROL, DAVE, STRANGER];
    let in_org: BTreeSet<&str> = [ALICE, BOB, CAROL, STRANGER].into();
    let directory = org_directory();
    let refs = refs();
    let full = (1u32 << universe.len()) - 1;
    let mut runs = 0;
    for mode in [MembershipMode::Additive, MembershipMode::Exclusive] {
        for listed_mask in 0..=full {
            for team_mask in 0..=full {
                // Only someone once in the team can have been added by this object.
                for added_mask in (0..=full).filter(|m| m & !team_mask == 0 || m & team_mask == 0) {
                    let listed = subset(&universe, listed_mask);
                    let before: BTreeSet<&str> = subset(&universe, team_mask).into_iter().collect();
                    let added_before: BTreeSet<&str> = subset(&universe, added_mask).into_iter().collect();
                    let members = listed.iter().map(|id| by_name(&directory.get_by_id(id).unwrap().username)).collect();
                    let spec = team_spec(mode, members);
                    let previous = AtlasTeamMembershipStatus {
                        added_members: added_before
                            .iter()
                            .map(|id| AddedMember {
                                user_id: id.to_string(),
                                username: directory.get_by_id(id).unwrap().username.clone(),
                            })
                            .collect(),
                        ..Default::default()
                    };
                    let team_before = observed_team(&before.iter().copied().collect::<Vec<_>>());
                    // The engine reads each recorded user the listing misses; here Atlas agrees.
                    let reads: BTreeMap<String, bool> = added_before
                        .iter()
                        .filter(|id| !before.contains(*id))
                        .map(|id| (id.to_string(), false))
                        .collect();
                    let input = TeamInput {
                        direct_reads: &reads,
                        ..team_input(&spec, &previous, Some(&team_before), &directory, &refs)
                    };
                    let plan = plan_team_membership(&input);
                    let mut fresh_directory = directory.clone();
                    let mut team = team_before.clone();
                    let outcomes = execute(&plan.plan, &mut fresh_directory, Some(&mut team), team_atlas(&[]));
                    let after: BTreeSet<&str> = team.members().map(|(id, _)| id).collect();

                    let listed_in_org: BTreeSet<&str> =
                        listed.iter().copied().filter(|id| in_org.contains(id)).collect();
                    let expected: BTreeSet<&str> = match mode {
                        // A listed user is never removed, whatever Atlas says about them.
                        MembershipMode::Exclusive => before
                            .iter()
                            .copied()
                            .filter(|id| listed.contains(id))
                            .chain(listed_in_org.iter().copied())
                            .collect(),
                        MembershipMode::Additive => before
                            .iter()
                            .copied()
                            .filter(|id| !added_before.contains(id) || listed.contains(id))
                            .chain(listed_in_org.iter().copied())
                            .collect(),
                    };
                    let context =
                        || format!("{mode} listed {listed:?} before {before:?} added {added_before:?}\n{}", plan.plan);
                    assert_eq!(after, expected, "{}", context());

                    let status = team_membership_status(&input, &plan, &outcomes, &fresh_directory, Some(&team));
                    let added_after: BTreeSet<&str> = status.added_members.iter().map(|a| a.user_id.as_str()).collect();
                    let newly_added: BTreeSet<&str> = after.difference(&before).copied().collect();
                    let kept: BTreeSet<&str> = added_before.intersection(&after).copied().collect();
                    assert_eq!(added_after, &newly_added | &kept, "{}", context());

                    let again = TeamInput {
                        previous: Some(&status),
                        ..team_input(&spec, &status, Some(&team), &fresh_directory, &refs)
                    };
                    let second = plan_team_membership(&again);
                    assert!(
                        second.plan.actions.is_empty(),
                        "not converged in one pass: {}\n{}",
                        second.plan,
                        context()
                    );
                    let ready = conditions::is_true(&status.conditions, conditions::READY);
                    assert_eq!(ready, !listed.contains(&DAVE), "Ready iff no member is NotInOrg: {}", context());
                    runs += 1;
                }
            }
        }
    }
    assert!(runs > 10_000, "{runs}");
}

#[test]
fn plans_print_for_people() {
    let s = spec(&[OrgRole::OrgMember]);
    let previous = AtlasOrgUserStatus::default();
    let owner = alice(MembershipStatus::Active, &["ORG_OWNER"]);
    let swap = plan_org_user(&org_input(&s, &previous, Some(&owner), &[]));
    assert_eq!(
        redact(swap.plan.to_string()),
        "1. add org role ORG_MEMBER to alice@example.com (ALICE) in org ORG\n\
         2. remove org role ORG_OWNER from alice@example.com (ALICE) in org ORG\n\
         note: alice@example.com is already ACTIVE in org ORG: adopted, not invited\n"
    );
    let never = with_reinvite(ReinvitePolicy::Never);
    let expired = alice(MembershipStatus::InvitationExpired, &["ORG_MEMBER"]);
    let held = plan_org_user(&org_input(&never, &previous, Some(&expired), &[]));
    assert_eq!(
        held.plan.to_string(),
        "held (InvitationExpired): the invitation of alice@example.com expired at 2025-06-19T00:00:00Z and reinvite \
         is Never: set reinvite to OnExpiry to send a new one\n"
    );
    let json = serde_json::to_value(&held).unwrap();
    assert_eq!(json["hold"]["kind"], "invitationExpired");
    assert_eq!(json["failureMode"], "sequential");
    assert_eq!(json["adopted"], serde_json::Value::Null);
}

// ---------------------------------------------------------------------------------------
// Issue 14: access that can be taken away
// ---------------------------------------------------------------------------------------

fn granted(projects: &[(&str, &[&str])], teams: &[&str]) -> GrantedAccess {
    GrantedAccess {
        projects: projects
            .iter()
            .map(|(p, roles)| ObservedProjectRoles {
                project_id: p.to_string(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
            })
            .collect(),
        team_ids: teams.iter().map(|t| t.to_string()).collect(),
    }
}

fn active_in(projects: &[(&str, &[&str])], teams: &[&str]) -> OrgUser {
    let mut u = alice(MembershipStatus::Active, &["ORG_MEMBER"]);
    u.roles.group_role_assignments = projects
        .iter()
        .map(|(p, roles)| GroupRoleAssignment {
            group_id: Some(p.to_string()),
            group_roles: roles.iter().map(|r| r.to_string()).collect(),
        })
        .collect();
    u.team_ids = teams.iter().map(|t| t.to_string()).collect();
    u
}

fn with_project(mut s: AtlasOrgUserSpec, project: &str, roles: &[ProjectRole]) -> AtlasOrgUserSpec {
    s.project_roles.push(ProjectRoleAssignment { project_id: project.into(), roles: roles.to_vec() });
    s
}

/// Case 1: a project this object granted that leaves `projectRoles` loses the user
/// (`removeGroupUser`); the user stays in the org and in the project still listed.
#[test]
fn case_1_a_granted_project_leaving_the_spec_loses_the_user() {
    let s = with_project(spec(&[OrgRole::OrgMember]), P2, &[ProjectRole::GroupReadOnly]);
    let previous = AtlasOrgUserStatus {
        adopted: Some(false),
        granted: granted(&[(P1, &["GROUP_OWNER"]), (P2, &["GROUP_READ_ONLY"])], &[]),
        ..Default::default()
    };
    let u = active_in(&[(P1, &["GROUP_OWNER"]), (P2, &["GROUP_READ_ONLY"])], &[]);
    let input = org_input(&s, &previous, Some(&u), &[]);
    let plan = plan_org_user(&input);
    assert_eq!(shown(&plan.plan), vec!["remove alice@example.com (ALICE) from project P1 of org ORG"]);
    assert!(!plan.record_first, "taking away records nothing new first");
    let mut directory = OrgUserDirectory::new([u.clone()]);
    let outcomes = execute(&plan.plan, &mut directory, None, obliging_atlas);
    let status = org_user_status(&input, &plan, &outcomes, directory.get(&s.username));
    assert_eq!(status.granted, granted(&[(P2, &["GROUP_READ_ONLY"])], &[]), "P1 leaves the record once taken away");
    let fresh = directory.get(&s.username).unwrap();
    assert_eq!(fresh.org_membership_status, MembershipStatus::Active, "still in the org");
    assert!(fresh.roles.group_role_assignments.iter().all(|a| a.group_id.as_deref() != Some(P1)));
    assert_eq!(condition(&status.conditions, conditions::READY), ("True".into(), "Synced".into()));
}

/// Case 2: a team this object added the user to that leaves `teamIds` gets `:removeUser`;
/// a team it never granted stays.
#[test]
fn case_2_a_granted_team_leaving_the_spec_is_left() {
    let mut s = spec(&[OrgRole::OrgMember]);
    s.team_ids = vec![T2.into()];
    let previous = AtlasOrgUserStatus { granted: granted(&[], &[T1, T2]), ..Default::default() };
    let stranger_team = "6b00000000000000000000ff";
    let u = active_in(&[], &[T1, T2, stranger_team]);
    let plan = plan_org_user(&org_input(&s, &previous, Some(&u), &[]));
    assert_eq!(shown(&plan.plan), vec!["remove alice@example.com (ALICE) from team T1 in org ORG"]);
}

/// Never-granted projects and teams stay, unless `unlistedAccess: Remove` asks for it.
#[test]
fn never_granted_access_stays_unless_unlisted_access_remove() {
    let s = with_project(spec(&[OrgRole::OrgMember]), P1, &[ProjectRole::GroupReadOnly]);
    let previous = AtlasOrgUserStatus::default();
    let u = active_in(&[(P1, &["GROUP_READ_ONLY"]), (P2, &["GROUP_OWNER"])], &[T1]);
    let keep = plan_org_user(&org_input(&s, &previous, Some(&u), &[]));
    assert!(keep.plan.actions.is_empty(), "{}", keep.plan);
    let remove = AtlasOrgUserSpec { unlisted_access: UnlistedAccess::Remove, ..s.clone() };
    let exclusive = plan_org_user(&org_input(&remove, &previous, Some(&u), &[]));
    assert_eq!(
        shown(&exclusive.plan),
        vec![
            "remove alice@example.com (ALICE) from project P2 of org ORG",
            "remove alice@example.com (ALICE) from team T1 in org ORG",
        ]
    );
}

/// Write-ahead: a plan that gives the user a project or team the record does not hold asks
/// for the record first; the record holds exactly what is about to be granted.
#[test]
fn grants_are_recorded_before_they_are_sent() {
    let mut s = with_project(spec(&[OrgRole::OrgMember]), P1, &[ProjectRole::GroupReadOnly]);
    s.team_ids = vec![T1.into()];
    let previous = AtlasOrgUserStatus::default();
    let invite = plan_org_user(&org_input(&s, &previous, None, &[]));
    assert!(invite.record_first);
    assert_eq!(invite.granted, granted(&[(P1, &["GROUP_READ_ONLY"])], &[T1]));
    // Already in P1 (someone else's grant): changing nothing there records nothing; the new
    // team does.
    let u = active_in(&[(P1, &["GROUP_READ_ONLY"])], &[]);
    let join = plan_org_user(&org_input(&s, &previous, Some(&u), &[]));
    assert!(join.record_first);
    assert_eq!(join.granted, granted(&[], &[T1]));
    // Nothing new to grant: no write first.
    let recorded = AtlasOrgUserStatus { granted: granted(&[], &[T1]), ..Default::default() };
    let done = active_in(&[(P1, &["GROUP_READ_ONLY"])], &[T1]);
    assert!(!plan_org_user(&org_input(&s, &recorded, Some(&done), &[])).record_first);
    // A grant whose call never went through leaves the record again.
    let input = org_input(&s, &previous, Some(&u), &[]);
    let outcomes = vec![ActionOutcome::Failed(last_owner_refusal())];
    let status = org_user_status(&input, &join, &outcomes, Some(&u));
    assert_eq!(status.granted, GrantedAccess::default());
}

/// Case 5: after a rejection, `OnExpiryOrRejection` re-invites only on a spec change or
/// after the capped backoff from when the rejected invitation was sent.
#[test]
fn case_5_rejections_reinvite_on_generation_change_or_after_backoff() {
    let s = with_reinvite(ReinvitePolicy::OnExpiryOrRejection);
    // Invited 2025-05-31T23:30 (30 minutes before `now`), then rejected.
    let rejected = invited_at(alice(MembershipStatus::InvitationRejected, &["ORG_MEMBER"]), "2025-05-31T23:30:00Z");
    let same_generation = AtlasOrgUserStatus { invited_generation: Some(3), ..Default::default() };
    let plan = plan_org_user(&org_input(&s, &same_generation, Some(&rejected), &[]));
    assert!(plan.plan.actions.is_empty(), "no invitation at once: {}", plan.plan);
    assert_eq!(plan.plan.hold.as_ref().map(|h| h.reason()), Some("InvitationRejected"));
    let status = org_user_status(&org_input(&s, &same_generation, Some(&rejected), &[]), &plan, &[], Some(&rejected));
    assert_eq!(condition(&status.conditions, conditions::READY), ("False".into(), "InvitationRejected".into()));
    assert!(find(&status.conditions, conditions::STALLED).is_none(), "the backoff ends by itself");
    assert!(find(&status.conditions, conditions::READY).unwrap().message.contains("2025-06-01T00:30:00Z"));

    // The spec changed since that invitation (generation 2 -> 3): at once.
    let older_generation =
        AtlasOrgUserStatus { invited_generation: Some(2), reinvitations: Some(3), ..Default::default() };
    let plan = plan_org_user(&org_input(&s, &older_generation, Some(&rejected), &[]));
    assert_eq!(shown(&plan.plan), vec!["re-invite alice@example.com to org ORG (invitation rejected) with ORG_MEMBER"]);
    assert_eq!(plan.reinvitations, Some(0), "a spec change starts the backoff again");

    // Same generation, two re-sent already: 16 h after the last invitation, capped at 7 days.
    let twice = AtlasOrgUserStatus { invited_generation: Some(3), reinvitations: Some(2), ..Default::default() };
    let long_ago = invited_at(rejected.clone(), "2025-05-31T07:00:00Z"); // 17 h before now
    let plan = plan_org_user(&org_input(&s, &twice, Some(&long_ago), &[]));
    assert_eq!(plan.plan.actions.len(), 1, "due after 16 h: {}", plan.plan);
    assert_eq!(plan.reinvitations, Some(3));
    let recent = invited_at(rejected, "2025-05-31T09:00:00Z"); // 15 h before now
    assert!(plan_org_user(&org_input(&s, &twice, Some(&recent), &[])).plan.actions.is_empty());
    assert_eq!(atlas_access_operator::reconcile::reinvite_backoff(0).as_secs(), 3600);
    assert_eq!(atlas_access_operator::reconcile::reinvite_backoff(2).as_secs(), 16 * 3600);
    assert_eq!(atlas_access_operator::reconcile::reinvite_backoff(50).as_secs(), 7 * 24 * 3600, "capped");
}

/// Case 6: a write answered 404 (the user was removed in Atlas after the listing) is not
/// `Stalled` while the observation came from the shared listing: the executor lists again
/// and plans from that fresh read. Only a 404 against a fresh read stalls.
#[test]
fn case_6_a_404_against_a_cached_listing_is_reobserved_not_stalled() {
    let s = spec(&[OrgRole::OrgOwner]);
    let previous = previous_with_adopted(Some(false));
    let u = alice(MembershipStatus::Active, &["ORG_MEMBER"]);
    let input = org_input(&s, &previous, Some(&u), &[]);
    let plan = plan_org_user(&input);
    let gone = ActionError::atlas(ErrorClass::NotFound, 404, codes::RESOURCE_NOT_FOUND, "Cannot find resource user.");
    let outcomes = vec![ActionOutcome::Failed(gone), ActionOutcome::Skipped];
    assert!(atlas_access_operator::reconcile::contradicts_observation(&outcomes));
    let status = org_user_status(&input, &plan, &outcomes, Some(&u));
    assert_eq!(condition(&status.conditions, conditions::READY).0, "False");
    assert!(
        find(&status.conditions, conditions::STALLED).is_none(),
        "not Stalled on a cached read: {:?}",
        status.conditions
    );
    assert_eq!(condition(&status.conditions, conditions::RECONCILING).0, "True");
    let fresh = OrgUserInput { observed_fresh: true, ..input };
    let status = org_user_status(&fresh, &plan, &outcomes, Some(&u));
    assert_eq!(condition(&status.conditions, conditions::STALLED).0, "True");
}

/// Tolerant decoding: an unknown `orgMembershipStatus` decodes to `Unknown` without failing
/// the page; the affected object makes no call and says so; an unknown role is never removed.
#[test]
fn unknown_status_and_role_values_are_reported_not_fatal() {
    let page = serde_json::json!({"results": [
        {"id": ALICE, "username": "alice@example.com", "orgMembershipStatus": "SUSPENDED", "roles": {"orgRoles": ["ORG_MEMBER"]}},
        {"id": BOB, "username": "bob@example.com", "orgMembershipStatus": "ACTIVE", "roles": {"orgRoles": ["ORG_MEMBER", "ORG_FUTURE_ROLE"]}},
    ]});
    let page: atlas_access_operator::atlas::models::Page<OrgUser> = serde_json::from_value(page).unwrap();
    assert_eq!(page.results[0].org_membership_status, MembershipStatus::Unknown);
    assert_eq!(page.results[1].org_membership_status, MembershipStatus::Active);

    let s = spec(&[OrgRole::OrgMember]);
    let previous = AtlasOrgUserStatus::default();
    let input = org_input(&s, &previous, Some(&page.results[0]), &[]);
    let plan = plan_org_user(&input);
    assert!(plan.plan.actions.is_empty());
    let status = org_user_status(&input, &plan, &[], Some(&page.results[0]));
    assert_eq!(condition(&status.conditions, conditions::READY), ("False".into(), "UnknownMembershipStatus".into()));
    let deleting = OrgUserInput { deleting: true, ..input };
    assert!(plan_org_user(&deleting).plan.actions.is_empty(), "no removal of a user in an unknown state");

    let bob = spec_for("bob@example.com");
    let input = OrgUserInput { observed: Some(&page.results[1]), ..org_input(&bob, &previous, None, &[]) };
    let plan = plan_org_user(&input);
    assert!(plan.plan.actions.is_empty(), "the unknown role is not removed: {}", plan.plan);
    let status = org_user_status(&input, &plan, &[], Some(&page.results[1]));
    let ready = find(&status.conditions, conditions::READY).unwrap();
    assert_eq!(ready.status, "True");
    assert!(ready.message.contains("ORG_FUTURE_ROLE"), "{}", ready.message);
}

fn spec_for(username: &str) -> AtlasOrgUserSpec {
    AtlasOrgUserSpec { username: username.into(), ..spec(&[OrgRole::OrgMember]) }
}

/// Deletion safety in the status and the plan: which effect deletion has.
#[test]
fn status_and_plan_say_what_deletion_does() {
    let s = spec(&[OrgRole::OrgMember]);
    let u = alice(MembershipStatus::Active, &["ORG_MEMBER"]);
    for (adopted, policy, expected) in [
        (Some(true), AdoptedDeletionPolicy::Orphan, DeletionEffect::LeaveInAtlas),
        (Some(true), AdoptedDeletionPolicy::Delete, DeletionEffect::RemoveUser),
        (Some(false), AdoptedDeletionPolicy::Orphan, DeletionEffect::RemoveUser),
    ] {
        let spec = AtlasOrgUserSpec { adopted_deletion_policy: policy, ..s.clone() };
        let previous = previous_with_adopted(adopted);
        let input = org_input(&spec, &previous, Some(&u), &[]);
        let plan = plan_org_user(&input);
        assert_eq!(plan.on_deletion, expected, "{adopted:?} {policy:?}");
        assert_eq!(org_user_status(&input, &plan, &[], Some(&u)).on_deletion, Some(expected));
        assert!(plan.on_deletion_text().starts_with(expected.as_str()));
    }
}

// ---------------------------------------------------------------------------------------
// Issue 13: team memberships you can trust (one test per numbered case)
// ---------------------------------------------------------------------------------------

fn pinned(team_id: &str, entries: &[(&str, &str)]) -> AtlasTeamMembershipStatus {
    AtlasTeamMembershipStatus { team_id: Some(team_id.into()), ..added(entries) }
}

fn writer(name: &str, created: &str, kind: WriterKind, team_id: &str, usernames: &[&str]) -> TeamWriter {
    TeamWriter {
        claim: Claim::new("team-a", name, Some(at(created))),
        kind,
        team_id: Some(team_id.into()),
        team_name: None,
        usernames: usernames.iter().map(|u| u.to_string()).collect(),
    }
}

/// Case 1, re-pointing: the record of team T2 ("devs") says nothing about T1 ("ops"): the object is
/// held, and a person a human put in T1 is never removed.
#[test]
fn case_1_a_changed_team_is_held_and_the_old_record_never_removes_from_the_new_team() {
    let directory = org_directory();
    let refs = refs();
    // Pinned to T2; stranger was added there by this object; the spec now names T1, where a
    // human put the stranger.
    let previous = pinned(T2, &[(STRANGER, "stranger@example.com")]);
    let spec = team_spec(MembershipMode::Additive, vec![by_name("alice@example.com")]);
    let team = observed_team(&[STRANGER]);
    let plan = plan_team_membership(&team_input(&spec, &previous, Some(&team), &directory, &refs));
    assert!(plan.plan.actions.is_empty(), "{}", plan.plan);
    let hold = plan.plan.hold.as_ref().expect("held");
    assert_eq!(hold.reason(), "TeamChanged");
    assert!(hold.to_string().contains("create a new AtlasTeamMembership"), "{hold}");

    // The same with the pinned team observed and the spec naming another id.
    let previous = pinned(T1, &[(STRANGER, "stranger@example.com")]);
    let spec = AtlasTeamMembershipSpec {
        team: TeamRef { id: Some(T2.into()), name: None },
        ..team_spec(MembershipMode::Additive, vec![by_name("alice@example.com")])
    };
    let plan = plan_team_membership(&team_input(&spec, &previous, Some(&team), &directory, &refs));
    assert!(plan.plan.actions.is_empty(), "{}", plan.plan);
    assert_eq!(plan.plan.hold.as_ref().map(|h| h.reason()), Some("TeamChanged"));

    // Deleting: only the pinned team's record counts; a record of another team removes nobody.
    let previous = pinned(T2, &[(STRANGER, "stranger@example.com")]);
    let spec = team_spec(MembershipMode::Additive, vec![]);
    let input = TeamInput { deleting: true, ..team_input(&spec, &previous, Some(&team), &directory, &refs) };
    assert!(plan_team_membership(&input).plan.actions.is_empty());
}

/// Case 2, write-ahead: the record with bob in it exists before `:addUser`; a status write lost
/// after the call leaves bob recorded and removable; a listing that misses bob does not
/// drop him; only a direct read showing him outside the team does.
#[test]
fn case_2_ownership_is_written_ahead_and_leaves_only_on_confirmed_absence() {
    let directory = org_directory();
    let refs = refs();
    let spec = team_spec(MembershipMode::Additive, vec![by_name("bob@example.com")]);
    let nothing = AtlasTeamMembershipStatus::default();
    let team = observed_team(&[]);
    let input = team_input(&spec, &nothing, Some(&team), &directory, &refs);
    let plan = plan_team_membership(&input);
    let intent = team_intent(&input, &plan).expect("an addition is recorded first");
    assert_eq!(intent.team_id.as_deref(), Some(T1), "the team is pinned before the first call");
    assert_eq!(intent.added_members, vec![AddedMember { user_id: BOB.into(), username: "bob@example.com".into() }]);
    assert_eq!(intent.conditions, nothing.conditions, "only the record changes");

    // The call went through, the status write after it was lost: the intent is what the
    // object has. bob is unlisted later: he is removed.
    let team = observed_team(&[BOB]);
    let unlisted = team_spec(MembershipMode::Additive, vec![]);
    let plan = plan_team_membership(&team_input(&unlisted, &intent, Some(&team), &directory, &refs));
    assert_eq!(shown(&plan.plan), vec!["remove bob@example.com (BOB) from team T1 in org ORG"]);

    // Nothing more to record when the record already holds every addition.
    let listed_again = plan_team_membership(&team_input(&spec, &intent, Some(&observed_team(&[])), &directory, &refs));
    assert!(
        team_intent(&team_input(&spec, &intent, Some(&observed_team(&[])), &directory, &refs), &listed_again).is_none()
    );

    // A listing that misses bob once keeps him recorded...
    let missed = observed_team(&[]);
    let input = team_input(&unlisted, &intent, Some(&missed), &directory, &refs);
    let plan = plan_team_membership(&input);
    let status = team_membership_status(&input, &plan, &[], &directory, Some(&missed));
    assert_eq!(status.added_members.len(), 1, "a listing alone never drops a record: {:?}", status.added_members);
    // ...and when the direct read finds him in the team after all, he is removed.
    let present = BTreeMap::from([(BOB.to_string(), true)]);
    let input =
        TeamInput { direct_reads: &present, ..team_input(&unlisted, &intent, Some(&missed), &directory, &refs) };
    assert_eq!(shown(&plan_team_membership(&input).plan), vec!["remove bob@example.com (BOB) from team T1 in org ORG"]);
    // A direct read showing him outside the team ends the record.
    let absent = BTreeMap::from([(BOB.to_string(), false)]);
    let input = TeamInput { direct_reads: &absent, ..team_input(&unlisted, &intent, Some(&missed), &directory, &refs) };
    let plan = plan_team_membership(&input);
    assert!(plan.plan.actions.is_empty());
    let status = team_membership_status(&input, &plan, &[], &directory, Some(&missed));
    assert!(status.added_members.is_empty(), "{:?}", status.added_members);
    assert_eq!(status.team_id.as_deref(), Some(T1));

    // A failed addition stays recorded (it may have happened): the next pass reads it directly.
    let input = team_input(&spec, &nothing, Some(&missed), &directory, &refs);
    let plan = plan_team_membership(&input);
    let outcomes = vec![ActionOutcome::Failed(ActionError::new(ErrorClass::Transient, "connection reset"))];
    let status = team_membership_status(&input, &plan, &outcomes, &directory, Some(&missed));
    assert_eq!(status.added_members.len(), 1);
}

/// Case 3, one writer per team: the younger of two Exclusive objects is held (Conflict) and makes
/// no call; Exclusive counts an AtlasOrgUser's `teamIds` (and other objects' members) as
/// listed; Additive objects remove only what they own, and not while another writer wants it.
#[test]
fn case_3_one_writer_per_team() {
    let directory = org_directory();
    let refs = refs();
    let team = observed_team(&[ALICE, STRANGER]);
    let nothing = AtlasTeamMembershipStatus::default();
    let exclusive = team_spec(MembershipMode::Exclusive, vec![by_name("bob@example.com")]);

    // An older Exclusive object on T1: this one (created 2025-05-01) is held.
    let writers = [writer("older", "2025-01-01T00:00:00Z", WriterKind::Exclusive, T1, &["alice@example.com"])];
    let input = TeamInput { writers: &writers, ..team_input(&exclusive, &nothing, Some(&team), &directory, &refs) };
    let plan = plan_team_membership(&input);
    assert!(plan.plan.actions.is_empty(), "{}", plan.plan);
    assert_eq!(plan.plan.hold.as_ref().map(|h| h.reason()), Some("Conflict"));
    assert!(plan.plan.hold.as_ref().unwrap().to_string().contains("team-a/older"));
    let status = team_membership_status(&input, &plan, &[], &directory, Some(&team));
    assert_eq!(condition(&status.conditions, conditions::READY), ("False".into(), "Conflict".into()));
    assert_eq!(condition(&status.conditions, conditions::STALLED), ("True".into(), "Conflict".into()));

    // The older one, seeing the younger: owns the team and acts.
    let writers = [writer("younger", "2026-01-01T00:00:00Z", WriterKind::Exclusive, T1, &["alice@example.com"])];
    let input = TeamInput { writers: &writers, ..team_input(&exclusive, &nothing, Some(&team), &directory, &refs) };
    let plan = plan_team_membership(&input);
    assert_eq!(plan.plan.hold, None);
    // The younger one is held and wants nothing: alice and the stranger go.
    assert_eq!(
        shown(&plan.plan),
        vec![
            "remove alice@example.com (ALICE) from team T1 in org ORG",
            "remove stranger@example.com (STRANGER) from team T1 in org ORG",
            "add bob@example.com (BOB) to team T1 in org ORG"
        ]
    );

    // An Exclusive object on another team is no rival.
    let writers = [writer("other-team", "2025-01-01T00:00:00Z", WriterKind::Exclusive, T2, &[])];
    let input = TeamInput { writers: &writers, ..team_input(&exclusive, &nothing, Some(&team), &directory, &refs) };
    assert_eq!(plan_team_membership(&input).plan.hold, None);

    // Exclusive vs an AtlasOrgUser whose teamIds name T1: the stranger stays, no flapping.
    let writers =
        [writer("stranger", "2026-01-01T00:00:00Z", WriterKind::OrgUserTeamIds, T1, &["Stranger@example.com"])];
    let input = TeamInput { writers: &writers, ..team_input(&exclusive, &nothing, Some(&team), &directory, &refs) };
    let plan = plan_team_membership(&input);
    assert_eq!(
        shown(&plan.plan),
        vec![
            "remove alice@example.com (ALICE) from team T1 in org ORG",
            "add bob@example.com (BOB) to team T1 in org ORG"
        ]
    );
    assert!(plan.plan.notes.iter().any(|n| n.contains("team-a/stranger")), "{:?}", plan.plan.notes);

    // Writers from objects: the spec's team and members; one being deleted wants nobody.
    let mut object = atlas_access_operator::api::AtlasTeamMembership::new(
        "going",
        team_spec(MembershipMode::Additive, vec![by_name("stranger@example.com"), by_ref("bob")]),
    );
    let w = TeamWriter::of_team_membership(&object, &refs);
    assert_eq!((w.kind, w.team_id.as_deref()), (WriterKind::Additive, Some(T1)));
    assert_eq!(w.usernames, ["stranger@example.com", "Bob@Example.com"]);
    object.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    assert!(TeamWriter::of_team_membership(&object, &refs).usernames.is_empty());

    // Two Additive objects: this one added alice and no longer lists her, the other lists her:
    // she stays, and stays recorded (removed once nobody else wants her).
    let additive = team_spec(MembershipMode::Additive, vec![]);
    let previous = pinned(T1, &[(ALICE, "alice@example.com")]);
    let writers = [writer("other", "2026-01-01T00:00:00Z", WriterKind::Additive, T1, &["alice@example.com"])];
    let input = TeamInput { writers: &writers, ..team_input(&additive, &previous, Some(&team), &directory, &refs) };
    let plan = plan_team_membership(&input);
    assert!(plan.plan.actions.is_empty(), "{}", plan.plan);
    let status = team_membership_status(&input, &plan, &[], &directory, Some(&team));
    assert_eq!(status.added_members.len(), 1);
    let input = team_input(&additive, &previous, Some(&team), &directory, &refs);
    assert_eq!(
        shown(&plan_team_membership(&input).plan),
        vec!["remove alice@example.com (ALICE) from team T1 in org ORG"]
    );
}

/// Case 4, at the cap: an addition refused while removals of the plan are not done is retried
/// (Reconciling), not Stalled; once the removals are done a refusal is a real one.
#[test]
fn case_4_a_team_full_refusal_while_removals_are_pending_is_retried() {
    let directory = org_directory();
    let refs = refs();
    let spec = team_spec(MembershipMode::Exclusive, vec![by_name("alice@example.com"), by_name("bob@example.com")]);
    let nothing = AtlasTeamMembershipStatus::default();
    let team = observed_team(&[ALICE, STRANGER]);
    let input = team_input(&spec, &nothing, Some(&team), &directory, &refs);
    let plan = plan_team_membership(&input);
    assert_eq!(
        shown(&plan.plan),
        vec![
            "remove stranger@example.com (STRANGER) from team T1 in org ORG",
            "add bob@example.com (BOB) to team T1 in org ORG"
        ]
    );
    assert_eq!(plan.plan.actions.iter().map(Action::phase).collect::<Vec<_>>(), vec![0, 1], "removals first");
    let outcomes = vec![ActionOutcome::Skipped, ActionOutcome::Failed(team_full())];
    let status = team_membership_status(&input, &plan, &outcomes, &directory, Some(&team));
    assert_eq!(condition(&status.conditions, conditions::RECONCILING), ("True".into(), "AtlasError".into()));
    assert!(find(&status.conditions, conditions::STALLED).is_none(), "{:?}", status.conditions);

    let mut after = team.clone();
    let removed = ActionOutcome::Done(None);
    after.apply(&plan.plan.actions[0], &removed);
    let outcomes = vec![removed, ActionOutcome::Failed(team_full())];
    let status = team_membership_status(&input, &plan, &outcomes, &directory, Some(&after));
    assert_eq!(condition(&status.conditions, conditions::STALLED), ("True".into(), "AtlasError".into()));
}
