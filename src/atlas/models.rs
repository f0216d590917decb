//! Atlas Admin API v2 wire models for the operations this operator uses, with the spec's
//! field names (`../shared/atlas-api/org-access.yaml`). Deserialization tolerates unknown
//! fields and unknown enum values so a newer Atlas does not break the operator; the
//! simulator serializes the same types, and its responses are checked against the spec.

use serde::{Deserialize, Serialize};

/// Media type of the 2025-02-19 resource version (org users, team members).
pub const MEDIA_2025_02_19: &str = "application/vnd.atlas.2025-02-19+json";
/// Media type of the 2023-01-01 resource version (organizations, teams, deprecated calls).
pub const MEDIA_2023_01_01: &str = "application/vnd.atlas.2023-01-01+json";
/// Atlas lists at most this many items per page.
pub const MAX_ITEMS_PER_PAGE: u32 = 500;
/// How long an invitation stays open.
pub const INVITATION_LIFETIME_DAYS: i64 = 30;

/// `orgMembershipStatus` of an org user. A value this operator does not know (one Atlas
/// adds later) decodes to [`MembershipStatus::Unknown`] instead of failing the whole listing:
/// the object of that user reports it and makes no call, the others are unaffected.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MembershipStatus {
    Pending,
    Active,
    InvitationExpired,
    InvitationRejected,
    /// A value not in the spec's enum (the raw value is logged when decoded).
    Unknown,
}

impl<'de> Deserialize<'de> for MembershipStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Ok(raw.parse().unwrap_or_else(|_| {
            tracing::warn!(value = %raw, "Atlas reported an orgMembershipStatus this operator does not know");
            MembershipStatus::Unknown
        }))
    }
}

impl MembershipStatus {
    pub const ALL: [MembershipStatus; 4] =
        [Self::Pending, Self::Active, Self::InvitationExpired, Self::InvitationRejected];

    /// The name Atlas uses.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Active => "ACTIVE",
            Self::InvitationExpired => "INVITATION_EXPIRED",
            Self::InvitationRejected => "INVITATION_REJECTED",
            Self::Unknown => "UNKNOWN",
        }
    }

    /// Pending and active users are "in" the organization; expired or rejected invitations are not.
    pub fn is_in_org(&self) -> bool {
        matches!(self, Self::Pending | Self::Active)
    }
}

impl std::str::FromStr for MembershipStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| format!("unknown orgMembershipStatus {s:?}"))
    }
}

/// `GroupRoleAssignment`: the roles of one user in one project.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GroupRoleAssignment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_roles: Vec<String>,
}

/// `OrgUserRolesResponse` / `OrgUserRolesRequest`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OrgUserRoles {
    #[serde(default)]
    pub org_roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_role_assignments: Vec<GroupRoleAssignment>,
}

/// `OrgUserResponse` (both branches: `OrgPendingUserResponse` for PENDING,
/// INVITATION_EXPIRED and INVITATION_REJECTED; `OrgActiveUserResponse` for ACTIVE).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OrgUser {
    pub id: String,
    pub username: String,
    pub org_membership_status: MembershipStatus,
    pub roles: OrgUserRoles,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub team_ids: Vec<String>,
    // Pending-branch fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation_created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation_expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inviter_username: Option<String>,
    // Active-branch fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobile_number: Option<String>,
}

/// `OrgUserRequest`: invite a user (`createOrgUser`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OrgUserRequest {
    pub username: String,
    pub roles: OrgUserRoles,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub team_ids: Vec<String>,
}

/// `OrgUserUpdateRequest` (`updateOrgUser`, PATCH): fields left out are not changed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OrgUserUpdateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<OrgUserRoles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_ids: Option<Vec<String>>,
}

/// `AddOrRemoveOrgRole` (`:addRole` / `:removeRole`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AddOrRemoveOrgRole {
    pub org_role: String,
}

/// `AddOrRemoveGroupRole` (`/groups/{groupId}/users/{userId}:addRole` / `:removeRole`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AddOrRemoveGroupRole {
    pub group_role: String,
}

/// `GroupUserResponse` (the fields the operator reads; pending and active branches alike):
/// one user's roles in one project.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GroupUser {
    pub id: String,
    pub username: String,
    pub org_membership_status: MembershipStatus,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `AddOrRemoveUserFromTeam` (`:addUser` / `:removeUser`) and `AddUserToTeam` (deprecated bulk).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UserIdBody {
    pub id: String,
}

/// `Link`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Link {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rel: Option<String>,
}

/// `TeamResponse`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Team {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
}

/// `AtlasOrganization` (the fields the operator reads).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Organization {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_deleted: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
}

/// A page of results (`PaginatedOrgUserView`, `PaginatedTeamView`, ...).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub results: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
}

/// `FieldViolation`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// `BadRequestDetail`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct BadRequestDetail {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldViolation>,
}

/// `ApiError`: every error body Atlas returns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiErrorBody {
    pub error: u16,
    pub error_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_request_detail: Option<BadRequestDetail>,
}

/// Service-account token response of `POST /api/oauth/token`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: u64,
    pub token_type: String,
}

/// Error codes the operator decides on.
pub mod codes {
    pub const RESOURCE_NOT_FOUND: &str = "RESOURCE_NOT_FOUND";
    pub const VALIDATION_ERROR: &str = "VALIDATION_ERROR";
    pub const USER_NOT_IN_ORG: &str = "USER_NOT_IN_ORG";
    pub const RATE_LIMITED_TOKEN_BUCKET: &str = "RATE_LIMITED_TOKEN_BUCKET";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const INVITATIONS_RATE_LIMITED_IP: &str = "INVITATIONS_RATE_LIMITED_IP";
    pub const UNEXPECTED_ERROR: &str = "UNEXPECTED_ERROR";
    pub const SERVICE_UNAVAILABLE: &str = "SERVICE_UNAVAILABLE";
    /// 406: the `Accept` header names no version this operation has.
    pub const INVALID_VERSION_DATE: &str = "INVALID_VERSION_DATE";
    /// 415: the `Content-Type` is not this operation's versioned media type.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "UNSUPPORTED_MEDIA_TYPE";
    /// 401: missing or bad credentials.
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
    // The codes below are not named by the spec; the simulator uses them and the operator
    // decides on the HTTP status of these answers, never on these strings alone.
    /// 409 from createOrgUser: a PENDING or ACTIVE user with that username exists.
    pub const USER_ALREADY_IN_ORG: &str = "USER_ALREADY_IN_ORG";
    /// 400: the change would leave the organization without an owner.
    pub const CANNOT_REMOVE_LAST_ORG_OWNER: &str = "CANNOT_REMOVE_LAST_ORG_OWNER";
    /// 400: the change would leave the user without an organization role.
    pub const CANNOT_REMOVE_LAST_ORG_ROLE: &str = "CANNOT_REMOVE_LAST_ORG_ROLE";
    /// 400: the team already has 250 users.
    pub const TEAM_USER_LIMIT_EXCEEDED: &str = "TEAM_USER_LIMIT_EXCEEDED";
    /// 400: `:removeUser` of a user who is not in the team.
    pub const USER_NOT_IN_TEAM: &str = "USER_NOT_IN_TEAM";
    /// 400: `:removeRole` of a user's only role in a project (Atlas: "A user must have at
    /// least one role at all times"; remove the user from the project instead).
    pub const CANNOT_REMOVE_LAST_GROUP_ROLE: &str = "CANNOT_REMOVE_LAST_GROUP_ROLE";
}
