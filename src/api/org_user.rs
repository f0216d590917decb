use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{DeletionPolicy, OrgRole, ProjectRole, SecretRef, conditions_schema, wire_enum};

wire_enum! {
    /// When the operator sends an invitation again: `Never`; `OnExpiry` (the default) after
    /// an invitation expired unanswered; `OnExpiryOrRejection` also after the person rejected it.
    ReinvitePolicy default OnExpiry {
        Never = "Never",
        OnExpiry = "OnExpiry",
        OnExpiryOrRejection = "OnExpiryOrRejection",
    }
}

wire_enum! {
    /// Projects and teams the spec does not list: `Keep` (the default) takes away only what
    /// this object granted (recorded in `status.granted`) once it leaves the spec, and leaves
    /// everything else alone; `Remove` takes the user out of every project and team not listed.
    UnlistedAccess default Keep {
        Keep = "Keep",
        Remove = "Remove",
    }
}

wire_enum! {
    /// What deleting the object does to a user who was in the organization before it
    /// (`status.adopted`): `Orphan` (the default) leaves them in Atlas whatever
    /// `deletionPolicy` says; `Delete` lets `deletionPolicy: Delete` remove them too.
    AdoptedDeletionPolicy default Orphan {
        Orphan = "Orphan",
        Delete = "Delete",
    }
}

wire_enum! {
    /// What deleting the object would do in Atlas now (`status.onDeletion`).
    DeletionEffect {
        RemoveUser = "RemoveUser",
        CancelInvitation = "CancelInvitation",
        LeaveInAtlas = "LeaveInAtlas",
    }
}

/// One person in one MongoDB Atlas organization: the operator invites the MongoDB Cloud
/// user (or adopts one already in the organization), keeps their organization roles, project
/// roles and teams as listed (taking away the projects and teams it granted once they leave
/// the spec), re-invites on expiry, and removes a user it invited (or cancels the invitation)
/// when the object is deleted.
// One `printcolumn(...)` per column: the repeated keys are intended.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "atlas-access.dev",
    version = "v1alpha1",
    kind = "AtlasOrgUser",
    namespaced,
    status = "AtlasOrgUserStatus",
    shortname = "aou",
    category = "atlas",
    doc = "One person in one MongoDB Atlas organization, with their organization roles, project roles and teams.",
    printcolumn(
        name = "Username",
        type_ = "string",
        json_path = ".spec.username",
        description = "MongoDB Cloud username"
    ),
    printcolumn(name = "Org", type_ = "string", json_path = ".spec.orgId", description = "Atlas organization id"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.membershipStatus",
        description = "Membership status Atlas reports"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether Atlas matches the spec"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the object is (not) Ready"
    ),
    printcolumn(
        name = "Invitation Expires",
        type_ = "string",
        json_path = ".status.invitationExpiresAt",
        description = "When the pending invitation lapses (RFC 3339)"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        description = "The Ready condition's message, with Atlas's own words",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AtlasOrgUserSpec {
    /// Id of the Atlas organization (24 hexadecimal digits). Immutable.
    #[schemars(regex(pattern = r"^[a-f0-9]{24}$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("orgId is immutable"))]
    pub org_id: String,

    /// MongoDB Cloud username of the person: their email address. Immutable.
    #[schemars(length(min = 3, max = 254), regex(pattern = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("username is immutable"))]
    pub username: String,

    /// Organization roles the user must have: the complete set (roles not listed are removed).
    /// At least one; no duplicates.
    #[schemars(length(min = 1))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub org_roles: Vec<OrgRole>,

    /// Project roles, per project. For each project listed the roles are authoritative. A
    /// project this object granted that leaves the list loses the user; other projects are
    /// left alone (unless `unlistedAccess: Remove`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["projectId".into()]))]
    pub project_roles: Vec<ProjectRoleAssignment>,

    /// Ids of Atlas teams the user must belong to. A team this object added the user to that
    /// leaves the list is left; other teams are left alone (unless `unlistedAccess: Remove`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[a-f0-9]{24}$")))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub team_ids: Vec<String>,

    /// Secret with the Atlas credentials, in this object's namespace. When absent the
    /// operator's default credentials are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,

    /// What deleting this object does in Atlas: `Delete` removes the user from the
    /// organization (or cancels the pending invitation) if this object invited them (see
    /// `adoptedDeletionPolicy` for a user who was there before); `Orphan` leaves Atlas alone.
    /// Absent: the AtlasOrganization's `defaultDeletionPolicy`, else `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,

    /// For a user who was in the organization before this object (adopted): `Orphan` (the
    /// default) never removes them on deletion; `Delete` applies `deletionPolicy` to them too.
    #[serde(default)]
    pub adopted_deletion_policy: AdoptedDeletionPolicy,

    /// Projects and teams not listed: `Keep` (default: only what this object granted is
    /// taken away when it leaves the spec) or `Remove` (the user leaves every unlisted
    /// project and team).
    #[serde(default)]
    pub unlisted_access: UnlistedAccess,

    /// When to send the invitation again: `Never`, `OnExpiry` (default) or
    /// `OnExpiryOrRejection`.
    #[serde(default)]
    pub reinvite: ReinvitePolicy,
}

/// The roles one user holds in one Atlas project.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProjectRoleAssignment {
    /// Id of the Atlas project (24 hexadecimal digits).
    #[schemars(regex(pattern = r"^[a-f0-9]{24}$"))]
    pub project_id: String,
    /// Project roles the user must have in this project: the complete set. At least one.
    #[schemars(length(min = 1))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub roles: Vec<ProjectRole>,
}

/// Roles one user holds in one Atlas project, as Atlas reports them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedProjectRoles {
    /// Id of the Atlas project.
    pub project_id: String,
    /// Project roles Atlas reports for the user in this project.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// What this object granted in Atlas, recorded before each grant is sent: what it takes away
/// once it leaves the spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantedAccess {
    /// Projects (with the roles granted there) this object gave the user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<ObservedProjectRoles>,
    /// Teams this object added the user to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub team_ids: Vec<String>,
}

impl GrantedAccess {
    pub fn is_empty(&self) -> bool {
        self.projects.is_empty() && self.team_ids.is_empty()
    }

    pub fn has_project(&self, project_id: &str) -> bool {
        self.projects.iter().any(|p| p.project_id == project_id)
    }

    pub fn has_team(&self, team_id: &str) -> bool {
        self.team_ids.iter().any(|t| t == team_id)
    }
}

/// What Atlas reports about the user, and how the object's reconciliation stands.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AtlasOrgUserStatus {
    /// Atlas id of the user, written as soon as Atlas returns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Membership status Atlas reports: PENDING, ACTIVE, INVITATION_EXPIRED or INVITATION_REJECTED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_status: Option<String>,
    /// True when the user was already in the organization before this object (adopted, not invited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<bool>,
    /// When Atlas created the current invitation (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation_created_at: Option<String>,
    /// When the current invitation expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation_expires_at: Option<String>,
    /// Username of whoever sent the current invitation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inviter_username: Option<String>,
    /// Organization roles Atlas reports for the user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub org_roles: Vec<String>,
    /// Project roles Atlas reports for the projects named in the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub project_roles: Vec<ObservedProjectRoles>,
    /// Teams Atlas reports the user belongs to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub team_ids: Vec<String>,
    /// What this object granted (projects with roles, teams), written before the grant is
    /// sent: a project or team listed here that leaves the spec is taken away.
    #[serde(default, skip_serializing_if = "GrantedAccess::is_empty")]
    pub granted: GrantedAccess,
    /// What deleting the object would do in Atlas now: RemoveUser, CancelInvitation or
    /// LeaveInAtlas (Orphan, an adopted user, deletion protection, nobody there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_deletion: Option<DeletionEffect>,
    /// Rejected invitations re-sent since the spec last changed (for the re-invitation backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinvitations: Option<u32>,
    /// The `metadata.generation` the current invitation was sent for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invited_generation: Option<i64>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, InvitationAccepted, Reconciling and Stalled conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
