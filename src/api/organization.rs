use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{DeletionPolicy, OrgRole, ProjectRole, SecretRef, conditions_schema};

/// One MongoDB Atlas organization as the platform team hands it out: its credentials, which
/// namespaces may declare `AtlasOrgUser` / `AtlasTeamMembership` objects for it, and the most
/// those namespaces may ask for. Cluster-scoped: only cluster administrators write it.
// One `printcolumn(...)` per column: the repeated keys are intended.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "atlas-access.dev",
    version = "v1alpha1",
    kind = "AtlasOrganization",
    status = "AtlasOrganizationStatus",
    shortname = "aorg",
    category = "atlas",
    doc = "One MongoDB Atlas organization: its credentials, the namespaces that may manage it, and role ceilings.",
    printcolumn(name = "Org", type_ = "string", json_path = ".spec.orgId", description = "Atlas organization id"),
    printcolumn(name = "Name", type_ = "string", json_path = ".status.orgName", description = "Name Atlas reports"),
    printcolumn(
        name = "Users",
        type_ = "integer",
        json_path = ".status.users",
        description = "Users in the organization"
    ),
    printcolumn(
        name = "Unmanaged",
        type_ = "integer",
        json_path = ".status.unmanaged",
        description = "Users in the organization no AtlasOrgUser declares"
    ),
    printcolumn(
        name = "Managed",
        type_ = "integer",
        json_path = ".status.managed",
        description = "Users an allowed AtlasOrgUser manages"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the credentials work for this organization"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct AtlasOrganizationSpec {
    /// Id of the Atlas organization (24 hexadecimal digits). Immutable.
    #[schemars(regex(pattern = r"^[a-f0-9]{24}$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("orgId is immutable"))]
    pub org_id: String,

    /// Secret with this organization's Atlas credentials, in the operator's namespace. Objects
    /// of this organization without a `credentialsSecretRef` of their own use it.
    pub credentials_secret_ref: SecretRef,

    /// Namespaces that may declare objects for this organization, by name. A namespace is
    /// allowed when it is listed here or matches `namespaceSelector`; with neither, none is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 63)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub namespaces: Vec<String>,

    /// Namespaces that may declare objects for this organization, by their labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// The organization roles an AtlasOrgUser may ask for. Absent: any role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_org_roles: Option<Vec<OrgRole>>,

    /// The projects an AtlasOrgUser may name in `projectRoles`, each with the roles it may ask
    /// for there. Absent: any project, any role; empty: no project roles at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["projectId".into()]))]
    pub allowed_projects: Option<Vec<AllowedProject>>,

    /// The teams objects may put users in (an AtlasOrgUser's `teamIds` by id, an
    /// AtlasTeamMembership's `team` by id or by name). Absent: any team; empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_teams: Option<Vec<AllowedTeam>>,

    /// What deleting an object of this organization does in Atlas when the object does not
    /// say (`Delete` or `Orphan`). Absent: `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_deletion_policy: Option<DeletionPolicy>,
}

/// One project tenants may grant roles in, and which roles.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AllowedProject {
    /// Id of the Atlas project (24 hexadecimal digits).
    #[schemars(regex(pattern = r"^[a-f0-9]{24}$"))]
    pub project_id: String,
    /// Project roles that may be asked for in this project. At least one.
    #[schemars(length(min = 1))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub roles: Vec<ProjectRole>,
}

/// One team tenants may use: by id, or by name (case-insensitive), exactly one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.id) != has(self.name)").message("give exactly one of id and name"))]
pub struct AllowedTeam {
    /// Id of the Atlas team (24 hexadecimal digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{24}$"))]
    pub id: Option<String>,
    /// Name of the Atlas team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub name: Option<String>,
}

/// Whether the credentials work, what Atlas calls the organization, and how many users it has.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AtlasOrganizationStatus {
    /// The organization's name, as Atlas answered an authenticated getOrg with these credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_name: Option<String>,
    /// Users in the organization (every membership status), as these credentials list them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u32>,
    /// Of those, users an allowed AtlasOrgUser object declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<u32>,
    /// Of those, users whose invitation is PENDING.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u32>,
    /// Users in the organization (PENDING or ACTIVE) that no AtlasOrgUser declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmanaged: Option<u32>,
    /// The first few of them (sorted; `unmanaged` counts them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmanaged_users: Vec<String>,
    /// AtlasOrgUser objects of this organization whose user is not in it (not yet invited,
    /// or the invitation expired or was rejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_absent: Option<u32>,
    /// Pending invitations that lapse within the operator's `--invitation-warning` window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitations_expiring: Option<u32>,
    /// The first few of them, soonest first (`invitationsExpiring` counts them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expiring_users: Vec<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (the credentials work for this organization), and kstatus Reconciling / Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
