//! The Atlas operations the operator uses: method, path, versioned media type and success
//! status of each, as the spec gives them, and URL building from a path template.

use reqwest::Method;
use url::Url;

use super::error::AtlasError;
use super::models::{MEDIA_2023_01_01, MEDIA_2025_02_19};

/// One Atlas Admin API operation (named by its spec `operationId`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    GetOrg,
    ListOrgUsers,
    CreateOrgUser,
    GetOrgUser,
    UpdateOrgUser,
    RemoveOrgUser,
    AddOrgUserRole,
    RemoveOrgUserRole,
    ListOrgTeams,
    GetOrgTeam,
    GetOrgTeamByName,
    ListOrgTeamUsers,
    AddOrgTeamUser,
    RemoveOrgTeamUser,
    RemoveGroupUser,
    AddGroupUserRole,
    RemoveGroupUserRole,
}

impl Operation {
    pub const ALL: [Operation; 17] = [
        Self::GetOrg,
        Self::ListOrgUsers,
        Self::CreateOrgUser,
        Self::GetOrgUser,
        Self::UpdateOrgUser,
        Self::RemoveOrgUser,
        Self::AddOrgUserRole,
        Self::RemoveOrgUserRole,
        Self::ListOrgTeams,
        Self::GetOrgTeam,
        Self::GetOrgTeamByName,
        Self::ListOrgTeamUsers,
        Self::AddOrgTeamUser,
        Self::RemoveOrgTeamUser,
        Self::RemoveGroupUser,
        Self::AddGroupUserRole,
        Self::RemoveGroupUserRole,
    ];

    /// The spec's `operationId`.
    pub fn operation_id(self) -> &'static str {
        match self {
            Self::GetOrg => "getOrg",
            Self::ListOrgUsers => "listOrgUsers",
            Self::CreateOrgUser => "createOrgUser",
            Self::GetOrgUser => "getOrgUser",
            Self::UpdateOrgUser => "updateOrgUser",
            Self::RemoveOrgUser => "removeOrgUser",
            Self::AddOrgUserRole => "addOrgUserRole",
            Self::RemoveOrgUserRole => "removeOrgUserRole",
            Self::ListOrgTeams => "listOrgTeams",
            Self::GetOrgTeam => "getOrgTeam",
            Self::GetOrgTeamByName => "getOrgTeamByName",
            Self::ListOrgTeamUsers => "listOrgTeamUsers",
            Self::AddOrgTeamUser => "addOrgTeamUser",
            Self::RemoveOrgTeamUser => "removeOrgTeamUser",
            Self::RemoveGroupUser => "removeGroupUser",
            Self::AddGroupUserRole => "addGroupUserRole",
            Self::RemoveGroupUserRole => "removeGroupUserRole",
        }
    }

    pub fn method(self) -> Method {
        match self {
            Self::GetOrg
            | Self::ListOrgUsers
            | Self::GetOrgUser
            | Self::ListOrgTeams
            | Self::GetOrgTeam
            | Self::GetOrgTeamByName
            | Self::ListOrgTeamUsers => Method::GET,
            Self::CreateOrgUser
            | Self::AddOrgUserRole
            | Self::RemoveOrgUserRole
            | Self::AddOrgTeamUser
            | Self::RemoveOrgTeamUser
            | Self::AddGroupUserRole
            | Self::RemoveGroupUserRole => Method::POST,
            Self::UpdateOrgUser => Method::PATCH,
            Self::RemoveOrgUser | Self::RemoveGroupUser => Method::DELETE,
        }
    }

    /// The spec's path, with `{param}` placeholders.
    pub fn path_template(self) -> &'static str {
        match self {
            Self::GetOrg => "/api/atlas/v2/orgs/{orgId}",
            Self::ListOrgUsers | Self::CreateOrgUser => "/api/atlas/v2/orgs/{orgId}/users",
            Self::GetOrgUser | Self::UpdateOrgUser | Self::RemoveOrgUser => "/api/atlas/v2/orgs/{orgId}/users/{userId}",
            Self::AddOrgUserRole => "/api/atlas/v2/orgs/{orgId}/users/{userId}:addRole",
            Self::RemoveOrgUserRole => "/api/atlas/v2/orgs/{orgId}/users/{userId}:removeRole",
            Self::ListOrgTeams => "/api/atlas/v2/orgs/{orgId}/teams",
            Self::GetOrgTeam => "/api/atlas/v2/orgs/{orgId}/teams/{teamId}",
            Self::GetOrgTeamByName => "/api/atlas/v2/orgs/{orgId}/teams/byName/{teamName}",
            Self::ListOrgTeamUsers => "/api/atlas/v2/orgs/{orgId}/teams/{teamId}/users",
            Self::AddOrgTeamUser => "/api/atlas/v2/orgs/{orgId}/teams/{teamId}:addUser",
            Self::RemoveOrgTeamUser => "/api/atlas/v2/orgs/{orgId}/teams/{teamId}:removeUser",
            Self::RemoveGroupUser => "/api/atlas/v2/groups/{groupId}/users/{userId}",
            Self::AddGroupUserRole => "/api/atlas/v2/groups/{groupId}/users/{userId}:addRole",
            Self::RemoveGroupUserRole => "/api/atlas/v2/groups/{groupId}/users/{userId}:removeRole",
        }
    }

    /// The versioned media type sent as `Accept` (and `Content-Type` with a body): the
    /// newest version the spec gives the operation, never one with a sunset.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::GetOrg | Self::ListOrgTeams | Self::GetOrgTeam | Self::GetOrgTeamByName => MEDIA_2023_01_01,
            Self::ListOrgUsers
            | Self::CreateOrgUser
            | Self::GetOrgUser
            | Self::UpdateOrgUser
            | Self::RemoveOrgUser
            | Self::AddOrgUserRole
            | Self::RemoveOrgUserRole
            | Self::ListOrgTeamUsers
            | Self::AddOrgTeamUser
            | Self::RemoveOrgTeamUser
            | Self::RemoveGroupUser
            | Self::AddGroupUserRole
            | Self::RemoveGroupUserRole => MEDIA_2025_02_19,
        }
    }

    /// The status the spec gives a success.
    pub fn success_status(self) -> u16 {
        match self {
            Self::CreateOrgUser => 201,
            Self::RemoveOrgUser | Self::RemoveGroupUser => 204,
            _ => 200,
        }
    }

    /// Whether the request carries a JSON body.
    pub fn has_request_body(self) -> bool {
        matches!(
            self,
            Self::CreateOrgUser
                | Self::UpdateOrgUser
                | Self::AddOrgUserRole
                | Self::RemoveOrgUserRole
                | Self::AddOrgTeamUser
                | Self::RemoveOrgTeamUser
                | Self::AddGroupUserRole
                | Self::RemoveGroupUserRole
        )
    }

    /// The group of operations the client paces together within an organization. Atlas
    /// meters endpoint sets separately; grouping by resource and by read / write follows
    /// that closely enough, and every answer's `RateLimit-*` headers correct the estimate.
    pub fn rate_limit_group(self) -> &'static str {
        match self {
            Self::GetOrg => "orgs",
            Self::ListOrgUsers | Self::GetOrgUser => "org-users-read",
            Self::CreateOrgUser
            | Self::UpdateOrgUser
            | Self::RemoveOrgUser
            | Self::AddOrgUserRole
            | Self::RemoveOrgUserRole => "org-users-write",
            Self::ListOrgTeams | Self::GetOrgTeam | Self::GetOrgTeamByName | Self::ListOrgTeamUsers => "teams-read",
            Self::AddOrgTeamUser | Self::RemoveOrgTeamUser => "teams-write",
            // Project-user calls are metered per project by Atlas; the client paces them
            // within the organization the plan names, like the org-user writes.
            Self::RemoveGroupUser | Self::AddGroupUserRole | Self::RemoveGroupUserRole => "group-users-write",
        }
    }

    /// Whether sending the request twice has the same effect as sending it once. Other
    /// operations are retried too, but their callers check for their own earlier effect.
    pub fn is_idempotent(self) -> bool {
        matches!(self.method(), Method::GET | Method::PATCH | Method::DELETE)
    }

    /// The URL of this operation under `base`: each `{param}` of the template is replaced by
    /// its value from `params` and percent-encoded as one path segment; `query` pairs follow
    /// in order.
    pub fn url(self, base: &Url, params: &[(&str, &str)], query: &[(&str, String)]) -> Result<Url, AtlasError> {
        let mut url = base.clone();
        {
            let mut segments = url.path_segments_mut().map_err(|()| AtlasError::InvalidArgument {
                operation: self.operation_id(),
                message: "the base URL cannot take a path".into(),
            })?;
            segments.pop_if_empty();
            for template_segment in self.path_template().trim_start_matches('/').split('/') {
                segments.push(&expand(self, template_segment, params)?);
            }
        }
        if query.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }
}

/// Substitute the `{param}` placeholders of one path segment.
fn expand(op: Operation, segment: &str, params: &[(&str, &str)]) -> Result<String, AtlasError> {
    let mut out = String::with_capacity(segment.len());
    let mut rest = segment;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map(|c| open + c).expect("path templates close every brace");
        let name = &rest[open + 1..close];
        let value =
            params.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).ok_or_else(|| AtlasError::InvalidArgument {
                operation: op.operation_id(),
                message: format!("missing path parameter {name}"),
            })?;
        if value.is_empty() {
            return Err(AtlasError::InvalidArgument {
                operation: op.operation_id(),
                message: format!("path parameter {name} is empty"),
            });
        }
        out.push_str(value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `id` is a 24-hex-digit Atlas id (`^([a-f0-9]{24})$`).
pub fn is_atlas_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "5f1b2c3d4e5f60718293a4b5";
    const USER: &str = "6a1b2c3d4e5f60718293a4b6";
    const TEAM: &str = "6b1b2c3d4e5f60718293a4b7";
    const GROUP: &str = "6c1b2c3d4e5f60718293a4b8";

    /// Method, path and media type of each operation, written out by hand from
    /// `../shared/atlas-api/org-access.yaml` (tests/atlas_spec.rs checks the table
    /// mechanically against the spec file as well).
    #[test]
    fn url_method_and_media_type_of_each_operation() {
        let base = Url::parse("https://cloud.mongodb.com").unwrap();
        let params = [
            ("orgId", ORG),
            ("userId", USER),
            ("teamId", TEAM),
            ("teamName", "platform admins/ops"),
            ("groupId", GROUP),
        ];
        let v1 = "application/vnd.atlas.2023-01-01+json";
        let v2 = "application/vnd.atlas.2025-02-19+json";
        let o = format!("https://cloud.mongodb.com/api/atlas/v2/orgs/{ORG}");
        let g = format!("https://cloud.mongodb.com/api/atlas/v2/groups/{GROUP}");
        let table: Vec<(Operation, &str, String, &str, u16)> = vec![
            (Operation::GetOrg, "GET", o.clone(), v1, 200),
            (Operation::ListOrgUsers, "GET", format!("{o}/users"), v2, 200),
            (Operation::CreateOrgUser, "POST", format!("{o}/users"), v2, 201),
            (Operation::GetOrgUser, "GET", format!("{o}/users/{USER}"), v2, 200),
            (Operation::UpdateOrgUser, "PATCH", format!("{o}/users/{USER}"), v2, 200),
            (Operation::RemoveOrgUser, "DELETE", format!("{o}/users/{USER}"), v2, 204),
            (Operation::AddOrgUserRole, "POST", format!("{o}/users/{USER}:addRole"), v2, 200),
            (Operation::RemoveOrgUserRole, "POST", format!("{o}/users/{USER}:removeRole"), v2, 200),
            (Operation::ListOrgTeams, "GET", format!("{o}/teams"), v1, 200),
            (Operation::GetOrgTeam, "GET", format!("{o}/teams/{TEAM}"), v1, 200),
            (Operation::GetOrgTeamByName, "GET", format!("{o}/teams/byName/platform%20admins%2Fops"), v1, 200),
            (Operation::ListOrgTeamUsers, "GET", format!("{o}/teams/{TEAM}/users"), v2, 200),
            (Operation::AddOrgTeamUser, "POST", format!("{o}/teams/{TEAM}:addUser"), v2, 200),
            (Operation::RemoveOrgTeamUser, "POST", format!("{o}/teams/{TEAM}:removeUser"), v2, 200),
            (Operation::RemoveGroupUser, "DELETE", format!("{g}/users/{USER}"), v2, 204),
            (Operation::AddGroupUserRole, "POST", format!("{g}/users/{USER}:addRole"), v2, 200),
            (Operation::RemoveGroupUserRole, "POST", format!("{g}/users/{USER}:removeRole"), v2, 200),
        ];
        assert_eq!(table.len(), Operation::ALL.len());
        for (op, method, url, media, status) in table {
            assert_eq!(op.method().as_str(), method, "{op:?}");
            assert_eq!(op.url(&base, &params, &[]).unwrap().as_str(), url, "{op:?}");
            assert_eq!(op.media_type(), media, "{op:?}");
            assert_eq!(op.success_status(), status, "{op:?}");
            assert_eq!(op.has_request_body(), method == "POST" || method == "PATCH", "{op:?}");
        }
    }

    #[test]
    fn query_pairs_are_encoded_and_repeated() {
        let base = Url::parse("http://127.0.0.1:8080/").unwrap();
        let url = Operation::ListOrgUsers
            .url(
                &base,
                &[("orgId", ORG)],
                &[
                    ("username", "a+b@example.com".into()),
                    ("orgMembershipStatuses", "PENDING".into()),
                    ("orgMembershipStatuses", "ACTIVE".into()),
                    ("itemsPerPage", "500".into()),
                    ("pageNum", "2".into()),
                ],
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            format!(
                "http://127.0.0.1:8080/api/atlas/v2/orgs/{ORG}/users?username=a%2Bb%40example.com\
                 &orgMembershipStatuses=PENDING&orgMembershipStatuses=ACTIVE&itemsPerPage=500&pageNum=2"
            )
        );
    }

    #[test]
    fn base_path_prefix_is_kept() {
        let base = Url::parse("http://127.0.0.1:8080/proxy/").unwrap();
        let url = Operation::GetOrg.url(&base, &[("orgId", ORG)], &[]).unwrap();
        assert_eq!(url.path(), format!("/proxy/api/atlas/v2/orgs/{ORG}"));
    }

    #[test]
    fn missing_or_empty_parameters_are_refused() {
        let base = Url::parse("https://cloud.mongodb.com").unwrap();
        assert!(Operation::GetOrgUser.url(&base, &[("orgId", ORG)], &[]).is_err());
        assert!(Operation::GetOrg.url(&base, &[("orgId", "")], &[]).is_err());
    }

    #[test]
    fn atlas_ids() {
        assert!(is_atlas_id(ORG));
        assert!(!is_atlas_id("5F1B2C3D4E5F60718293A4B5"));
        assert!(!is_atlas_id("5f1b2c3d4e5f60718293a4b"));
        assert!(!is_atlas_id("../../../../orgs/abcdef12"));
    }
}
