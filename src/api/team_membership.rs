use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{DeletionPolicy, SecretRef, conditions_schema, wire_enum};

wire_enum! {
    /// How the member list is applied: `Additive` (default) adds the listed users and only
    /// ever removes users this object added; `Exclusive` makes the team exactly the listed users.
    MembershipMode default Additive {
        Additive = "Additive",
        Exclusive = "Exclusive",
    }
}

wire_enum! {
    /// Where one listed member stands: `Member` (in the team), `Pending` (in the team with an
    /// invitation not yet accepted, or waiting for its AtlasOrgUser), `NotInOrg` (the username
    /// is not a pending or active user of the organization), `Failed` (Atlas refused).
    MemberState {
        Member = "Member",
        Pending = "Pending",
        NotInOrg = "NotInOrg",
        Failed = "Failed",
    }
}

/// Who is in one Atlas team: the operator adds and removes team members (never creating
/// or deleting the team itself).
// One `printcolumn(...)` per column: the repeated keys are intended.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "atlas-access.dev",
    version = "v1alpha1",
    kind = "AtlasTeamMembership",
    namespaced,
    status = "AtlasTeamMembershipStatus",
    shortname = "atm",
    category = "atlas",
    doc = "Who is in one MongoDB Atlas team.",
    printcolumn(name = "Team", type_ = "string", json_path = ".status.teamName", description = "Atlas team name"),
    printcolumn(
        name = "Listed",
        type_ = "string",
        json_path = ".status.listedInTeam",
        description = "Listed members in the team / members listed"
    ),
    printcolumn(
        name = "In Team",
        type_ = "integer",
        json_path = ".status.memberCount",
        description = "Users Atlas reports in the team, listed or not"
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
pub struct AtlasTeamMembershipSpec {
    /// Id of the Atlas organization that owns the team (24 hexadecimal digits). Immutable.
    #[schemars(regex(pattern = r"^[a-f0-9]{24}$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("orgId is immutable"))]
    pub org_id: String,

    /// The Atlas team, by id or by name: exactly one of the two. Immutable: the object is
    /// pinned to the team it first resolved (`status.teamId`), and what it owns is owned in
    /// that team; for another team create a new object.
    #[x_kube(validation = Rule::new("self == oldSelf").message("team is immutable: an AtlasTeamMembership manages the one team it was created for; create a new object for another team (deleting this one removes the members it added under deletionPolicy Delete)"))]
    pub team: TeamRef,

    /// Users who must be in the team, each by username or by a reference to an AtlasOrgUser
    /// in this namespace. At most 250 (the Atlas limit per team); no user listed twice.
    #[serde(default)]
    #[schemars(length(max = 250))]
    #[x_kube(
        validation = Rule::new("self.all(m, !has(m.username) || self.exists_one(o, has(o.username) && o.username == m.username))").message("members must not list the same username twice"),
        validation = Rule::new("self.all(m, !has(m.orgUserRef) || self.exists_one(o, has(o.orgUserRef) && o.orgUserRef.name == m.orgUserRef.name))").message("members must not list the same orgUserRef twice")
    )]
    pub members: Vec<TeamMember>,

    /// `Additive` (default): add the listed users, remove only users this object added.
    /// `Exclusive`: the team has exactly the listed users (and those other objects of the
    /// same team want); everyone else is removed. One Exclusive object per team: the oldest.
    #[serde(default)]
    pub mode: MembershipMode,

    /// Secret with the Atlas credentials, in this object's namespace. When absent the
    /// operator's default credentials are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,

    /// What deleting this object does in Atlas: `Delete` removes the members this object
    /// manages from the team; `Orphan` leaves the team alone. Absent: the AtlasOrganization's
    /// `defaultDeletionPolicy`, else `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// An Atlas team, by id or by name (exactly one).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("has(self.id) != has(self.name)").message("set exactly one of team.id or team.name"))]
pub struct TeamRef {
    /// Id of the team (24 hexadecimal digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{24}$"))]
    pub id: Option<String>,
    /// Name of the team in the organization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub name: Option<String>,
}

/// One listed member: a MongoDB Cloud username, or an AtlasOrgUser in this namespace
/// (exactly one of the two).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.username) != has(self.orgUserRef)").message("set exactly one of username or orgUserRef"))]
pub struct TeamMember {
    /// MongoDB Cloud username (an email address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 254), regex(pattern = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"))]
    pub username: Option<String>,
    /// An AtlasOrgUser in this namespace whose user is meant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_user_ref: Option<OrgUserRef>,
}

/// A reference to an AtlasOrgUser in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub struct OrgUserRef {
    /// Name of the AtlasOrgUser.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where one listed member stands in Atlas.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// MongoDB Cloud username (resolved from the AtlasOrgUser for `orgUserRef` members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Name of the AtlasOrgUser, for `orgUserRef` members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_user_ref: Option<String>,
    /// Atlas id of the user, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Member, Pending, NotInOrg or Failed.
    pub state: MemberState,
    /// Why the member is not (yet) in the team, with Atlas's own message where Atlas refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A user this object added, or is about to add, to the team `status.teamId`: recorded
/// before `:addUser` is sent, and dropped only after a confirmed removal or a direct read of
/// the user showing them outside the team. Additive mode only ever removes these.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddedMember {
    /// Atlas id of the user.
    pub user_id: String,
    /// MongoDB Cloud username of the user.
    pub username: String,
}

/// What Atlas reports about the team, and how the object's reconciliation stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AtlasTeamMembershipStatus {
    /// Atlas id of the team, resolved once from `spec.team` and kept: the object keeps
    /// managing this team when it is renamed, and `addedMembers` are members of this team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// Name of the team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_name: Option<String>,
    /// Number of users Atlas reports in the team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_count: Option<i32>,
    /// How many of the listed members are in the team, out of how many are listed, as
    /// `IN/LISTED` (e.g. `2/3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listed_in_team: Option<String>,
    /// Each listed member and where it stands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Users this object added (or is about to add) to the team `teamId`, written before
    /// each `:addUser`: the ones it removes when they are no longer listed or the object is
    /// deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_members: Vec<AddedMember>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// `IN/LISTED`, the value of `status.listedInTeam` (e.g. `2/3`).
pub fn listed_in_team(in_team: usize, listed: usize) -> String {
    format!("{in_team}/{listed}")
}
