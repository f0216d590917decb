//! The Admin API surface: routing, the request pipeline (auth, rate limits, faults,
//! versioning, validation) and one handler per operation, with the spec's paths, media types,
//! field names and status codes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use jiff::civil::Date;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use super::auth::Principal;
use super::error::ApiFailure;
use super::error::codes;
use super::faults::Fault;
use super::limits::{BucketSpec, Taken};
use super::observe::LoggedRequest;
use super::store::{ORG_ROLES, UserRec, names_of};
use super::{Shared, SimState};
use crate::atlas::models::{
    AddOrRemoveOrgRole, GroupRoleAssignment, MAX_ITEMS_PER_PAGE, MembershipStatus, OrgUser, OrgUserRequest,
    OrgUserRoles, OrgUserUpdateRequest,
};

/// The connection a request came in on: its peer, and the switch that closes it unanswered.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    pub kill: Arc<Notify>,
}

/// Largest request body the simulator reads.
const MAX_BODY: usize = 4 << 20;
const API_PREFIX: &str = "/api/atlas/v2/orgs/";
const GROUPS_PREFIX: &str = "/api/atlas/v2/groups/";
pub(crate) const TOKEN_PATH: &str = "/api/oauth/token";

/// A resource version of an operation, with its sunset date when the spec gives one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Version {
    pub date: &'static str,
    pub sunset: Option<&'static str>,
}

const V2025: Version = Version { date: "2025-02-19", sunset: None };
const V2023: Version = Version { date: "2023-01-01", sunset: None };
const V2023_SUNSET: Version = Version { date: "2023-01-01", sunset: Some("2027-07-01") };
/// When the 2023-01-01 versions with a sunset were deprecated: the day their successor came out.
const DEPRECATED_SINCE: &str = "2025-02-19";

/// The operations the simulator serves, named by their operationId.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    GetOrg,
    ListOrgUsers,
    CreateOrgUser,
    GetOrgUser,
    UpdateOrgUser,
    RemoveOrgUser,
    AddOrgUserRole,
    RemoveOrgUserRole,
    UpdateOrgUserRoles,
    ListOrgTeams,
    CreateOrgTeam,
    GetOrgTeam,
    GetOrgTeamByName,
    ListOrgTeamUsers,
    AddOrgTeamUsers,
    RemoveOrgTeamUserFromTeam,
    AddOrgTeamUser,
    RemoveOrgTeamUser,
    RemoveGroupUser,
    AddGroupUserRole,
    RemoveGroupUserRole,
}

impl Op {
    pub fn id(self) -> &'static str {
        match self {
            Self::GetOrg => "getOrg",
            Self::ListOrgUsers => "listOrgUsers",
            Self::CreateOrgUser => "createOrgUser",
            Self::GetOrgUser => "getOrgUser",
            Self::UpdateOrgUser => "updateOrgUser",
            Self::RemoveOrgUser => "removeOrgUser",
            Self::AddOrgUserRole => "addOrgUserRole",
            Self::RemoveOrgUserRole => "removeOrgUserRole",
            Self::UpdateOrgUserRoles => "updateOrgUserRoles",
            Self::ListOrgTeams => "listOrgTeams",
            Self::CreateOrgTeam => "createOrgTeam",
            Self::GetOrgTeam => "getOrgTeam",
            Self::GetOrgTeamByName => "getOrgTeamByName",
            Self::ListOrgTeamUsers => "listOrgTeamUsers",
            Self::AddOrgTeamUsers => "addOrgTeamUsers",
            Self::RemoveOrgTeamUserFromTeam => "removeOrgTeamUserFromTeam",
            Self::AddOrgTeamUser => "addOrgTeamUser",
            Self::RemoveOrgTeamUser => "removeOrgTeamUser",
            Self::RemoveGroupUser => "removeGroupUser",
            Self::AddGroupUserRole => "addGroupUserRole",
            Self::RemoveGroupUserRole => "removeGroupUserRole",
        }
    }

    /// The versions the spec gives this operation, newest first.
    fn versions(self) -> &'static [Version] {
        match self {
            Self::ListOrgUsers | Self::RemoveOrgUser | Self::ListOrgTeamUsers | Self::RemoveGroupUser => {
                &[V2025, V2023_SUNSET]
            }
            Self::CreateOrgUser
            | Self::GetOrgUser
            | Self::UpdateOrgUser
            | Self::AddOrgUserRole
            | Self::RemoveOrgUserRole
            | Self::AddOrgTeamUser
            | Self::RemoveOrgTeamUser
            | Self::AddGroupUserRole
            | Self::RemoveGroupUserRole => &[V2025],
            Self::UpdateOrgUserRoles | Self::AddOrgTeamUsers | Self::RemoveOrgTeamUserFromTeam => &[V2023_SUNSET],
            Self::GetOrg | Self::ListOrgTeams | Self::CreateOrgTeam | Self::GetOrgTeam | Self::GetOrgTeamByName => {
                &[V2023]
            }
        }
    }

    /// The rate-limit endpoint set.
    fn endpoint_set(self) -> &'static str {
        match self {
            Self::GetOrg => "orgs",
            Self::ListOrgUsers | Self::GetOrgUser => "org-users-read",
            Self::CreateOrgUser
            | Self::UpdateOrgUser
            | Self::RemoveOrgUser
            | Self::AddOrgUserRole
            | Self::RemoveOrgUserRole
            | Self::UpdateOrgUserRoles => "org-users-write",
            Self::ListOrgTeams | Self::GetOrgTeam | Self::GetOrgTeamByName | Self::ListOrgTeamUsers => "teams-read",
            Self::CreateOrgTeam
            | Self::AddOrgTeamUsers
            | Self::RemoveOrgTeamUserFromTeam
            | Self::AddOrgTeamUser
            | Self::RemoveOrgTeamUser => "teams-write",
            Self::RemoveGroupUser | Self::AddGroupUserRole | Self::RemoveGroupUserRole => "group-users-write",
        }
    }

    fn has_body(self) -> bool {
        matches!(
            self,
            Self::CreateOrgUser
                | Self::UpdateOrgUser
                | Self::AddOrgUserRole
                | Self::RemoveOrgUserRole
                | Self::UpdateOrgUserRoles
                | Self::CreateOrgTeam
                | Self::AddOrgTeamUsers
                | Self::AddOrgTeamUser
                | Self::RemoveOrgTeamUser
                | Self::AddGroupUserRole
                | Self::RemoveGroupUserRole
        )
    }
}

/// A matched request path.
#[derive(Debug, Clone)]
struct Route {
    op: Op,
    org_id: String,
    user_id: Option<String>,
    team_id: Option<String>,
    team_name: Option<String>,
    /// For the project-user paths; their organization is the user's (see `run_api`).
    group_id: Option<String>,
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

/// Matches a path under `/api/atlas/v2/orgs/`; 404 for unknown paths, 405 for a known path
/// with the wrong method.
fn route(method: &Method, path: &str) -> Result<Route, ApiFailure> {
    let not_found =
        || ApiFailure::new(StatusCode::NOT_FOUND, codes::RESOURCE_NOT_FOUND, format!("Cannot find resource {path}."));
    let m = method.clone();
    let method_not_allowed = || {
        ApiFailure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("Method {method} is not allowed on {path}."),
        )
    };
    if let Some(rest) = path.strip_prefix(GROUPS_PREFIX) {
        let segments: Vec<String> = rest.trim_end_matches('/').split('/').map(decode).collect();
        let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
        let [group, "users", user] = seg.as_slice() else { return Err(not_found()) };
        let (id, action) = split_action(user);
        let op = match action {
            None => pick(&m, &[(Method::DELETE, Op::RemoveGroupUser)]),
            Some("addRole") => pick(&m, &[(Method::POST, Op::AddGroupUserRole)]),
            Some("removeRole") => pick(&m, &[(Method::POST, Op::RemoveGroupUserRole)]),
            Some(_) => return Err(not_found()),
        };
        return Ok(Route {
            op: op.ok_or_else(method_not_allowed)?,
            org_id: String::new(),
            user_id: Some(id.to_string()),
            team_id: None,
            team_name: None,
            group_id: Some(group.to_string()),
        });
    }
    let rest = path.strip_prefix(API_PREFIX).ok_or_else(not_found)?;
    let segments: Vec<String> = rest.trim_end_matches('/').split('/').map(decode).collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let mut r = Route {
        op: Op::GetOrg,
        org_id: seg[0].to_string(),
        user_id: None,
        team_id: None,
        team_name: None,
        group_id: None,
    };
    let op = match seg.as_slice() {
        [_] => pick(&m, &[(Method::GET, Op::GetOrg)]),
        [_, "users"] => pick(&m, &[(Method::GET, Op::ListOrgUsers), (Method::POST, Op::CreateOrgUser)]),
        [_, "users", user] => {
            let (id, action) = split_action(user);
            r.user_id = Some(id.to_string());
            match action {
                None => pick(
                    &m,
                    &[
                        (Method::GET, Op::GetOrgUser),
                        (Method::PATCH, Op::UpdateOrgUser),
                        (Method::DELETE, Op::RemoveOrgUser),
                    ],
                ),
                Some("addRole") => pick(&m, &[(Method::POST, Op::AddOrgUserRole)]),
                Some("removeRole") => pick(&m, &[(Method::POST, Op::RemoveOrgUserRole)]),
                Some(_) => return Err(not_found()),
            }
        }
        [_, "users", user, "roles"] => {
            r.user_id = Some(user.to_string());
            pick(&m, &[(Method::PUT, Op::UpdateOrgUserRoles)])
        }
        [_, "teams"] => pick(&m, &[(Method::GET, Op::ListOrgTeams), (Method::POST, Op::CreateOrgTeam)]),
        [_, "teams", "byName", name] => {
            r.team_name = Some(name.to_string());
            pick(&m, &[(Method::GET, Op::GetOrgTeamByName)])
        }
        [_, "teams", team] => {
            let (id, action) = split_action(team);
            r.team_id = Some(id.to_string());
            match action {
                None => pick(&m, &[(Method::GET, Op::GetOrgTeam)]),
                Some("addUser") => pick(&m, &[(Method::POST, Op::AddOrgTeamUser)]),
                Some("removeUser") => pick(&m, &[(Method::POST, Op::RemoveOrgTeamUser)]),
                Some(_) => return Err(not_found()),
            }
        }
        [_, "teams", team, "users"] => {
            r.team_id = Some(team.to_string());
            pick(&m, &[(Method::GET, Op::ListOrgTeamUsers), (Method::POST, Op::AddOrgTeamUsers)])
        }
        [_, "teams", team, "users", user] => {
            r.team_id = Some(team.to_string());
            r.user_id = Some(user.to_string());
            pick(&m, &[(Method::DELETE, Op::RemoveOrgTeamUserFromTeam)])
        }
        _ => return Err(not_found()),
    };
    r.op = op.ok_or_else(method_not_allowed)?;
    Ok(r)
}

fn pick(method: &Method, table: &[(Method, Op)]) -> Option<Op> {
    table.iter().find(|(m, _)| m == method).map(|(_, op)| *op)
}

fn split_action(segment: &str) -> (&str, Option<&str>) {
    match segment.split_once(':') {
        Some((id, action)) => (id, Some(action)),
        None => (segment, None),
    }
}

fn media_type(version: &str) -> String {
    format!("application/vnd.atlas.{version}+json")
}

fn media_types_of(headers: &HeaderMap, name: HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|m| m.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .filter(|m| !m.is_empty())
        .collect()
}

/// The version the `Accept` header asks for, among the operation's; 406 otherwise.
fn negotiate(op: Op, headers: &HeaderMap) -> Result<Version, ApiFailure> {
    let accepted = media_types_of(headers, header::ACCEPT);
    op.versions().iter().copied().find(|v| accepted.contains(&media_type(v.date))).ok_or_else(|| {
        let supported: Vec<Value> = op.versions().iter().map(|v| Value::String(media_type(v.date))).collect();
        ApiFailure::new(
            StatusCode::NOT_ACCEPTABLE,
            codes::INVALID_VERSION_DATE,
            format!("Invalid accept header or version date. {} accepts {}.", op.id(), join_values(&supported)),
        )
    })
}

fn join_values(values: &[Value]) -> String {
    values.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
}

/// The body's `Content-Type` must be the negotiated version's media type; 415 otherwise.
fn check_content_type(version: Version, headers: &HeaderMap) -> Result<(), ApiFailure> {
    let expected = media_type(version.date);
    let given = media_types_of(headers, header::CONTENT_TYPE);
    if given.first() == Some(&expected) {
        return Ok(());
    }
    Err(ApiFailure::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        codes::UNSUPPORTED_MEDIA_TYPE,
        format!("Unsupported content type {}; send {expected}.", given.first().map(String::as_str).unwrap_or("(none)")),
    ))
}

/// RFC 9110 HTTP-date of a `YYYY-MM-DD` day.
fn http_date(day: &str) -> Option<String> {
    let date: Date = day.parse().ok()?;
    let ts = date.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    Some(ts.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string())
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_id(field: &str, value: &str) -> Result<(), ApiFailure> {
    if is_hex_id(value) {
        Ok(())
    } else {
        Err(ApiFailure::invalid(field, format!("{value:?} is not a 24-hexadecimal-digit id")))
    }
}

/// A deliberately simple check of the spec's `format: email`.
fn is_email(s: &str) -> bool {
    let mut parts = s.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

// ---------------------------------------------------------------------------------------------
// Request body validation (the spec's request schemas), naming the offending field.

fn as_object<'a>(value: &'a Value, field: &str) -> Result<&'a Map<String, Value>, ApiFailure> {
    value.as_object().ok_or_else(|| ApiFailure::invalid(field, "must be an object"))
}

fn required<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Value, ApiFailure> {
    match obj.get(key) {
        Some(Value::Null) | None => Err(ApiFailure::invalid(path, "is required")),
        Some(v) => Ok(v),
    }
}

/// A required string field; `path` names it in the error.
fn required_str<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a str, ApiFailure> {
    required(obj, key, path)?.as_str().ok_or_else(|| ApiFailure::invalid(path, "must be a string"))
}

fn string_list(
    value: &Value,
    path: &str,
    unique: bool,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<Vec<String>, ApiFailure> {
    let items = value.as_array().ok_or_else(|| ApiFailure::invalid(path, "must be an array"))?;
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let s = item.as_str().ok_or_else(|| ApiFailure::invalid(path, "items must be strings"))?;
        check(s).map_err(|d| ApiFailure::invalid(path, d))?;
        if unique && out.iter().any(|o| o == s) {
            return Err(ApiFailure::invalid(path, format!("items must be unique; {s:?} repeats")));
        }
        out.push(s.to_string());
    }
    Ok(out)
}

fn org_role(s: &str) -> Result<(), String> {
    if ORG_ROLES.contains(&s) { Ok(()) } else { Err(format!("{s:?} is not an organization role")) }
}

fn hex_id(s: &str) -> Result<(), String> {
    if is_hex_id(s) { Ok(()) } else { Err(format!("{s:?} is not a 24-hexadecimal-digit id")) }
}

fn email(s: &str) -> Result<(), String> {
    if is_email(s) { Ok(()) } else { Err(format!("{s:?} is not an email address")) }
}

/// `OrgUserRolesRequest`.
fn roles_request(value: &Value, path: &str) -> Result<OrgUserRoles, ApiFailure> {
    let obj = as_object(value, path)?;
    let org_roles_path = format!("{path}.orgRoles");
    let org_roles = string_list(required(obj, "orgRoles", &org_roles_path)?, &org_roles_path, true, org_role)?;
    if org_roles.is_empty() {
        return Err(ApiFailure::invalid(&org_roles_path, "must name at least one role"));
    }
    let mut group_role_assignments = Vec::new();
    let gra_path = format!("{path}.groupRoleAssignments");
    if let Some(value) = obj.get("groupRoleAssignments").filter(|v| !v.is_null()) {
        for item in value.as_array().ok_or_else(|| ApiFailure::invalid(&gra_path, "must be an array"))? {
            let item = as_object(item, &gra_path)?;
            let group_id = match item.get("groupId") {
                None | Some(Value::Null) => None,
                Some(Value::String(id)) if is_hex_id(id) => Some(id.clone()),
                Some(_) => return Err(ApiFailure::invalid(&format!("{gra_path}.groupId"), "must be a 24-hex id")),
            };
            let group_roles = match item.get("groupRoles") {
                None | Some(Value::Null) => Vec::new(),
                Some(v) => string_list(v, &format!("{gra_path}.groupRoles"), true, |_| Ok(()))?,
            };
            group_role_assignments.push(GroupRoleAssignment { group_id, group_roles });
        }
    }
    Ok(OrgUserRoles { org_roles, group_role_assignments })
}

fn parse_json(body: &Bytes) -> Result<Value, ApiFailure> {
    if body.is_empty() {
        return Err(ApiFailure::invalid("requestBody", "is required"));
    }
    serde_json::from_slice(body).map_err(|e| ApiFailure::invalid("requestBody", format!("is not valid JSON: {e}")))
}

fn create_org_user_request(body: &Value) -> Result<OrgUserRequest, ApiFailure> {
    let obj = as_object(body, "requestBody")?;
    let username = required_str(obj, "username", "username")?;
    email(username).map_err(|d| ApiFailure::invalid("username", d))?;
    let roles = roles_request(required(obj, "roles", "roles")?, "roles")?;
    let team_ids = match obj.get("teamIds").filter(|v| !v.is_null()) {
        Some(v) => string_list(v, "teamIds", true, |_| Ok(()))?,
        None => Vec::new(),
    };
    Ok(OrgUserRequest { username: username.to_string(), roles, team_ids })
}

fn update_org_user_request(body: &Value) -> Result<OrgUserUpdateRequest, ApiFailure> {
    let obj = as_object(body, "requestBody")?;
    let roles = obj.get("roles").filter(|v| !v.is_null()).map(|v| roles_request(v, "roles")).transpose()?;
    let team_ids =
        obj.get("teamIds").filter(|v| !v.is_null()).map(|v| string_list(v, "teamIds", true, hex_id)).transpose()?;
    Ok(OrgUserUpdateRequest { roles, team_ids })
}

fn org_role_request(body: &Value) -> Result<AddOrRemoveOrgRole, ApiFailure> {
    let obj = as_object(body, "requestBody")?;
    let role = required_str(obj, "orgRole", "orgRole")?;
    org_role(role).map_err(|d| ApiFailure::invalid("orgRole", d))?;
    Ok(AddOrRemoveOrgRole { org_role: role.to_string() })
}

/// `AddOrRemoveGroupRole`: `groupRole` is a required string; the spec gives it no enum, so
/// any non-empty name is taken.
fn group_role_request(body: &Value) -> Result<String, ApiFailure> {
    let obj = as_object(body, "requestBody")?;
    let role = required_str(obj, "groupRole", "groupRole")?;
    if role.trim().is_empty() {
        return Err(ApiFailure::invalid("groupRole", "must not be empty"));
    }
    Ok(role.to_string())
}

fn user_id_body(body: &Value, path: &str) -> Result<String, ApiFailure> {
    let obj = as_object(body, path)?;
    let id_path = if path == "requestBody" { "id".to_string() } else { format!("{path}.id") };
    let id = required_str(obj, "id", &id_path)?;
    hex_id(id).map_err(|d| ApiFailure::invalid(&id_path, d))?;
    Ok(id.to_string())
}

// ---------------------------------------------------------------------------------------------
// Query parameters.

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        Self(url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect())
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    fn one(&self, key: &str) -> Option<&str> {
        self.all(key).into_iter().next()
    }

    fn int(&self, key: &str, default: u32, min: u32, max: u32) -> Result<u32, ApiFailure> {
        match self.one(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| ApiFailure::invalid(key, format!("{v:?} must be an integer from {min} to {max}"))),
        }
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool, ApiFailure> {
        match self.one(key) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => Err(ApiFailure::invalid(key, format!("{v:?} must be true or false"))),
        }
    }

    /// `orgMembershipStatuses` (repeated or comma-separated) or the deprecated
    /// `orgMembershipStatus`; PENDING and ACTIVE when neither is given.
    fn statuses(&self) -> Result<Vec<MembershipStatus>, ApiFailure> {
        let plural: Vec<&str> = self.all("orgMembershipStatuses").into_iter().flat_map(|v| v.split(',')).collect();
        let singular = self.all("orgMembershipStatus");
        if !plural.is_empty() && !singular.is_empty() {
            return Err(ApiFailure::invalid(
                "orgMembershipStatuses",
                "cannot be combined with the deprecated orgMembershipStatus",
            ));
        }
        let (field, given) =
            if singular.is_empty() { ("orgMembershipStatuses", plural) } else { ("orgMembershipStatus", singular) };
        if given.is_empty() {
            return Ok(vec![MembershipStatus::Pending, MembershipStatus::Active]);
        }
        if given.len() > MembershipStatus::ALL.len() {
            return Err(ApiFailure::invalid(field, "names at most 4 statuses"));
        }
        given.iter().map(|s| s.trim().parse().map_err(|e: String| ApiFailure::invalid(field, e))).collect()
    }

    fn username(&self) -> Result<Option<&str>, ApiFailure> {
        match self.one("username") {
            Some(u) if !is_email(u) => Err(ApiFailure::invalid("username", format!("{u:?} is not an email address"))),
            other => Ok(other),
        }
    }
}

/// `itemsPerPage`, `pageNum`, `includeCount` and the page's links.
struct Paging {
    items_per_page: u32,
    page_num: u32,
    include_count: bool,
    href: String,
}

impl Paging {
    fn parse(query: &Query, href: String) -> Result<Self, ApiFailure> {
        Ok(Self {
            items_per_page: query.int("itemsPerPage", 100, 1, MAX_ITEMS_PER_PAGE)?,
            page_num: query.int("pageNum", 1, 1, u32::MAX)?,
            include_count: query.boolean("includeCount", true)?,
            href,
        })
    }

    fn link(&self, page: u32, rel: &str) -> Value {
        json!({"href": format!("{}?pageNum={page}&itemsPerPage={}", self.href, self.items_per_page), "rel": rel})
    }

    fn page(&self, items: Vec<Value>) -> Value {
        let total = items.len();
        let per = self.items_per_page as usize;
        let start = (self.page_num as usize - 1).saturating_mul(per);
        let results: Vec<Value> = items.into_iter().skip(start).take(per).collect();
        let mut links = Vec::new();
        if self.page_num > 1 {
            links.push(self.link(self.page_num - 1, "previous"));
        }
        links.push(self.link(self.page_num, "self"));
        if start.saturating_add(per) < total {
            links.push(self.link(self.page_num + 1, "next"));
        }
        let mut page = json!({"links": links, "results": results});
        if self.include_count {
            page["totalCount"] = json!(total);
        }
        page
    }
}

// ---------------------------------------------------------------------------------------------
// Response views.

/// `OrgUserResponse`; a rejected invitation reports `invitationExpiresAt: null`, as the spec says.
fn org_user_json(user: &OrgUser) -> Value {
    let mut value = serde_json::to_value(user).unwrap_or(Value::Null);
    if user.org_membership_status == MembershipStatus::InvitationRejected {
        value["invitationExpiresAt"] = Value::Null;
    }
    value
}

/// `GroupUserResponse`: the `OrgUserResponse` fields of its branch, with `roles` the user's
/// roles in this one project (and no `teamIds`).
fn group_user_json(user: &OrgUser, group_id: &str) -> Value {
    let mut value = org_user_json(user);
    let roles: Vec<&String> = user
        .roles
        .group_role_assignments
        .iter()
        .filter(|a| a.group_id.as_deref() == Some(group_id))
        .flat_map(|a| a.group_roles.iter())
        .collect();
    if let Some(obj) = value.as_object_mut() {
        obj.remove("teamIds");
        obj.insert("roles".into(), json!(roles));
    }
    value
}

/// `CloudAppUser` (2023-01-01 views, active users only).
fn cloud_app_user_json(user: &UserRec, org_id: &str, base: &str, now: jiff::Timestamp) -> Value {
    let view = user.view(now);
    let (first_name, last_name) = names_of(&user.username);
    let mut roles: Vec<Value> = view.roles.org_roles.iter().map(|r| json!({"orgId": org_id, "roleName": r})).collect();
    for assignment in &view.roles.group_role_assignments {
        for role in &assignment.group_roles {
            roles.push(json!({"groupId": assignment.group_id, "roleName": role}));
        }
    }
    // A fictional 555-01xx number, stable per user.
    let line = user.id.bytes().fold(0u32, |acc, b| (acc * 31 + u32::from(b)) % 100);
    json!({
        "country": view.country.unwrap_or_else(|| "US".to_string()),
        "createdAt": view.created_at,
        "emailAddress": user.username,
        "firstName": first_name,
        "id": user.id,
        "lastAuth": view.last_auth,
        "lastName": last_name,
        "links": [{"href": format!("{base}/api/atlas/v2/users/{}", user.id), "rel": "self"}],
        "mobileNumber": format!("21255501{line:02}"),
        "roles": roles,
        "teamIds": view.team_ids,
        "username": user.username,
    })
}

fn team_json(id: &str, name: &str, org_id: &str, base: &str) -> Value {
    json!({
        "id": id,
        "links": [{"href": format!("{base}/api/atlas/v2/orgs/{org_id}/teams/{id}"), "rel": "self"}],
        "name": name,
    })
}

/// A handler's success: status and JSON body (served with the versioned media type).
struct Reply {
    status: StatusCode,
    body: Option<Value>,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self { status: StatusCode::OK, body: Some(body) }
    }
}

/// Everything one request needs besides the shared state.
struct Call<'a> {
    route: Route,
    version: Version,
    query: Query,
    body: Value,
    base: &'a str,
    path: &'a str,
    peer: SocketAddr,
}

fn dispatch(shared: &Shared, call: Call<'_>) -> Result<Reply, ApiFailure> {
    let now = shared.clock.now();
    let Call { route, version, query, body, base, path, peer } = call;
    let org_id = route.org_id.as_str();
    let user_id = route.user_id.as_deref().unwrap_or("");
    let team_id = route.team_id.as_deref().unwrap_or("");
    let legacy = version.date == V2023.date;
    match route.op {
        Op::GetOrg => {
            let store = shared.store.lock();
            let org = store.org(org_id)?;
            Ok(Reply::ok(json!({
                "id": org.id,
                "isDeleted": false,
                "links": [{"href": format!("{base}/api/atlas/v2/orgs/{}", org.id), "rel": "self"}],
                "name": org.name,
                "skipDefaultAlertsSettings": false,
            })))
        }
        Op::ListOrgUsers => {
            let paging = Paging::parse(&query, format!("{base}{path}"))?;
            let store = shared.store.lock();
            let org = store.org(org_id)?;
            let items: Vec<Value> = if legacy {
                // 2023-01-01 lists active users only and knows no filters.
                org.users()
                    .filter(|u| u.status(now) == MembershipStatus::Active)
                    .map(|u| cloud_app_user_json(u, org_id, base, now))
                    .collect()
            } else {
                let statuses = query.statuses()?;
                let username = query.username()?;
                org.users()
                    .filter(|u| statuses.contains(&u.status(now)))
                    .filter(|u| username.is_none_or(|n| u.username.eq_ignore_ascii_case(n)))
                    .map(|u| org_user_json(&u.view(now)))
                    .collect()
            };
            Ok(Reply::ok(paging.page(items)))
        }
        Op::CreateOrgUser => {
            let request = create_org_user_request(&body)?;
            shared.store.lock().org(org_id)?;
            shared.take_invitation(peer)?;
            let user = shared.store.lock().invite(org_id, &request, now)?;
            Ok(Reply { status: StatusCode::CREATED, body: Some(org_user_json(&user)) })
        }
        Op::GetOrgUser => {
            check_id("userId", user_id)?;
            let statuses = query.statuses()?;
            let store = shared.store.lock();
            let user = store.visible_user(org_id, user_id, &statuses, now)?;
            Ok(Reply::ok(org_user_json(&user.view(now))))
        }
        Op::UpdateOrgUser => {
            check_id("userId", user_id)?;
            let update = update_org_user_request(&body)?;
            let user = shared.store.lock().update_user(org_id, user_id, &update, now)?;
            Ok(Reply::ok(org_user_json(&user)))
        }
        Op::RemoveOrgUser => {
            check_id("userId", user_id)?;
            shared.store.lock().remove_user(org_id, user_id, legacy, now)?;
            Ok(Reply { status: StatusCode::NO_CONTENT, body: None })
        }
        Op::AddOrgUserRole | Op::RemoveOrgUserRole => {
            check_id("userId", user_id)?;
            let request = org_role_request(&body)?;
            let mut store = shared.store.lock();
            let user = if route.op == Op::AddOrgUserRole {
                store.add_role(org_id, user_id, &request.org_role, now)?
            } else {
                store.remove_role(org_id, user_id, &request.org_role, now)?
            };
            Ok(Reply::ok(org_user_json(&user)))
        }
        Op::UpdateOrgUserRoles => {
            check_id("userId", user_id)?;
            let obj = as_object(&body, "requestBody")?;
            let roles = match obj.get("orgRoles").filter(|v| !v.is_null()) {
                Some(v) => string_list(v, "orgRoles", true, org_role)?,
                None => return Err(ApiFailure::invalid("orgRoles", "is required")),
            };
            let roles = shared.store.lock().set_org_roles(org_id, user_id, &roles, now)?;
            Ok(Reply::ok(json!({
                "links": [{"href": format!("{base}{path}"), "rel": "self"}],
                "orgRoles": roles,
            })))
        }
        Op::ListOrgTeams => {
            let paging = Paging::parse(&query, format!("{base}{path}"))?;
            let store = shared.store.lock();
            let org = store.org(org_id)?;
            let items = org.teams.iter().map(|t| team_json(&t.id, &t.name, org_id, base)).collect();
            Ok(Reply::ok(paging.page(items)))
        }
        Op::CreateOrgTeam => {
            let obj = as_object(&body, "requestBody")?;
            let name = required_str(obj, "name", "name")?;
            if name.trim().is_empty() {
                return Err(ApiFailure::invalid("name", "must not be empty"));
            }
            let usernames = string_list(required(obj, "usernames", "usernames")?, "usernames", true, email)?;
            let team = shared.store.lock().add_team(org_id, name, &usernames)?;
            let mut value = team_json(&team.id, &team.name, org_id, base);
            value["usernames"] = json!(usernames);
            Ok(Reply::ok(value))
        }
        Op::GetOrgTeam => {
            check_id("teamId", team_id)?;
            let store = shared.store.lock();
            let team = store.team(org_id, team_id)?;
            Ok(Reply::ok(team_json(&team.id, &team.name, org_id, base)))
        }
        Op::GetOrgTeamByName => {
            let name = route.team_name.as_deref().unwrap_or("");
            let store = shared.store.lock();
            let team = store.team_by_name(org_id, name)?;
            Ok(Reply::ok(team_json(&team.id, &team.name, org_id, base)))
        }
        Op::ListOrgTeamUsers => {
            check_id("teamId", team_id)?;
            let paging = Paging::parse(&query, format!("{base}{path}"))?;
            let store = shared.store.lock();
            let org = store.org(org_id)?;
            let team = store.team(org_id, team_id)?;
            let members = team.members.iter().filter_map(|id| org.user(id));
            let items: Vec<Value> = if legacy {
                members
                    .filter(|u| u.status(now) == MembershipStatus::Active)
                    .map(|u| cloud_app_user_json(u, org_id, base, now))
                    .collect()
            } else {
                let statuses = query.statuses()?;
                let username = query.username()?;
                let wanted_id = query.one("userId");
                if let Some(id) = wanted_id {
                    check_id("userId", id)?;
                }
                members
                    .filter(|u| statuses.contains(&u.status(now)))
                    .filter(|u| username.is_none_or(|n| u.username.eq_ignore_ascii_case(n)))
                    .filter(|u| wanted_id.is_none_or(|id| u.id == id))
                    .map(|u| org_user_json(&u.view(now)))
                    .collect()
            };
            Ok(Reply::ok(paging.page(items)))
        }
        Op::AddOrgTeamUser | Op::RemoveOrgTeamUser => {
            check_id("teamId", team_id)?;
            let user_id = user_id_body(&body, "requestBody")?;
            let mut store = shared.store.lock();
            let user = if route.op == Op::AddOrgTeamUser {
                store.team_add_user(org_id, team_id, &user_id, now)?
            } else {
                store.team_remove_user(org_id, team_id, &user_id, now)?
            };
            Ok(Reply::ok(org_user_json(&user)))
        }
        Op::AddOrgTeamUsers => {
            check_id("teamId", team_id)?;
            let items = body.as_array().ok_or_else(|| ApiFailure::invalid("requestBody", "must be an array"))?;
            let ids = items
                .iter()
                .enumerate()
                .map(|(i, item)| user_id_body(item, &format!("[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let mut store = shared.store.lock();
            store.team_add_users(org_id, team_id, &ids, now)?;
            let org = store.org(org_id)?;
            let team = store.team(org_id, team_id)?;
            let results: Vec<Value> = team
                .members
                .iter()
                .filter_map(|id| org.user(id))
                .filter(|u| u.status(now) == MembershipStatus::Active)
                .map(|u| cloud_app_user_json(u, org_id, base, now))
                .collect();
            let total = results.len();
            Ok(Reply::ok(json!({
                "links": [{"href": format!("{base}{path}"), "rel": "self"}],
                "results": results,
                "totalCount": total,
            })))
        }
        Op::RemoveOrgTeamUserFromTeam => {
            check_id("teamId", team_id)?;
            check_id("userId", user_id)?;
            shared.store.lock().team_remove_user(org_id, team_id, user_id, now)?;
            Ok(Reply { status: StatusCode::NO_CONTENT, body: None })
        }
        Op::RemoveGroupUser => {
            let group_id = route.group_id.as_deref().unwrap_or("");
            check_id("groupId", group_id)?;
            check_id("userId", user_id)?;
            shared.store.lock().group_remove_user(org_id, group_id, user_id, legacy, now)?;
            Ok(Reply { status: StatusCode::NO_CONTENT, body: None })
        }
        Op::AddGroupUserRole | Op::RemoveGroupUserRole => {
            let group_id = route.group_id.as_deref().unwrap_or("");
            check_id("groupId", group_id)?;
            check_id("userId", user_id)?;
            let role = group_role_request(&body)?;
            let mut store = shared.store.lock();
            let user = if route.op == Op::AddGroupUserRole {
                store.group_add_role(org_id, group_id, user_id, &role, now)?
            } else {
                store.group_remove_role(org_id, group_id, user_id, &role, now)?
            };
            Ok(Reply::ok(group_user_json(&user.view(now), group_id)))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pipeline.

/// How a request ended.
enum Outcome {
    Answer(Response),
    Drop,
}

/// What the log records about a request, filled in as the pipeline goes.
#[derive(Default)]
struct Trace {
    operation_id: &'static str,
    principal: Option<String>,
    version: Option<&'static str>,
    error_code: Option<String>,
    rate: Option<Taken>,
}

fn rate_headers(response: &mut Response, rate: Option<Taken>) {
    if let Some(rate) = rate {
        let headers = response.headers_mut();
        headers.insert("RateLimit-Limit", HeaderValue::from(rate.limit));
        headers.insert("RateLimit-Remaining", HeaderValue::from(rate.remaining));
    }
}

fn failure(trace: &mut Trace, failure: ApiFailure) -> Outcome {
    trace.error_code = Some(failure.code.to_string());
    Outcome::Answer(failure.into_response())
}

fn rate_limited(set: &str, spec: BucketSpec, retry_after: u64, code: &'static str) -> ApiFailure {
    let detail = format!(
        "Rate limit exceeded for {set}. Please retry after {retry_after} seconds. Request capacity: {}. Refill rate: {} per {} seconds.",
        spec.capacity,
        spec.refill,
        spec.per.as_secs_f64()
    );
    ApiFailure::new(StatusCode::TOO_MANY_REQUESTS, code, detail)
        .with_header(header::RETRY_AFTER, retry_after.to_string())
}

async fn run_api(shared: &Shared, parts: &RequestParts, body: &Bytes, trace: &mut Trace) -> Outcome {
    let mut route = match route(&parts.method, &parts.path) {
        Ok(route) => route,
        Err(e) => {
            trace.operation_id = "unknown";
            return failure(trace, e);
        }
    };
    let op = route.op;
    trace.operation_id = op.id();
    let set = op.endpoint_set();
    let spec = shared.config.rate_limits.spec_for(set);

    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let now = shared.clock.now();
    let auth = shared.auth.lock().authenticate(parts.method.as_str(), &parts.path_and_query, authorization, now);
    match auth {
        Ok(principal) => trace.principal = Some(principal.describe()),
        Err(e) => {
            trace.rate = spec.map(|s| shared.limiter.lock().peek(s, set, &route.org_id));
            if e.headers.iter().any(|(n, v)| n == header::WWW_AUTHENTICATE && v.starts_with("Digest")) {
                shared.observe.lock().counters.digest_challenges += 1;
            }
            return failure(trace, e);
        }
    }
    if route.group_id.is_some() {
        // A project-user path: the organization is the user's; an unknown user is a 404.
        let user_id = route.user_id.clone().unwrap_or_default();
        let group_id = route.group_id.clone().unwrap_or_default();
        if let Err(e) = check_id("groupId", &group_id).and_then(|()| check_id("userId", &user_id)) {
            return failure(trace, e);
        }
        match shared.store.lock().org_of_user(&user_id) {
            Some(org_id) => route.org_id = org_id,
            None => {
                return failure(trace, ApiFailure::not_found("user", &user_id));
            }
        }
    }

    if let Some(spec) = spec {
        let taken = shared.limiter.lock().take(spec, set, &route.org_id);
        trace.rate = Some(taken);
        if let Some(retry_after) = taken.retry_after {
            shared.observe.lock().counters.rate_limited += 1;
            let set_name = format!("api/atlas/v2/orgs/{} ({set})", route.org_id);
            return failure(trace, rate_limited(&set_name, spec, retry_after, codes::RATE_LIMITED_TOKEN_BUCKET));
        }
    }

    if let Some(outcome) = inject_faults(shared, op.id(), trace).await {
        return outcome;
    }

    let version = match negotiate(op, &parts.headers) {
        Ok(v) => v,
        Err(e) => return failure(trace, e),
    };
    trace.version = Some(version.date);
    let body = if op.has_body() {
        if let Err(e) = check_content_type(version, &parts.headers) {
            return failure(trace, e);
        }
        match parse_json(body) {
            Ok(v) => v,
            Err(e) => return failure(trace, e),
        }
    } else {
        Value::Null
    };
    if let Err(e) = check_id("orgId", &route.org_id) {
        return failure(trace, e);
    }

    let call = Call {
        route,
        version,
        query: Query::parse(parts.query.as_deref()),
        body,
        base: &parts.base,
        path: &parts.path,
        peer: parts.peer,
    };
    match dispatch(shared, call) {
        Ok(reply) => {
            let mut response = match reply.body {
                Some(body) => (reply.status, serde_json::to_vec(&body).unwrap_or_default()).into_response(),
                None => reply.status.into_response(),
            };
            let headers = response.headers_mut();
            if let Ok(media) = HeaderValue::from_str(&media_type(version.date)) {
                headers.insert(header::CONTENT_TYPE, media);
            }
            if let Some(sunset) = version.sunset
                && let (Some(sunset), Some(since)) = (http_date(sunset), http_date(DEPRECATED_SINCE))
            {
                headers.insert("Sunset", HeaderValue::from_str(&sunset).expect("ascii date"));
                headers.insert("Deprecation", HeaderValue::from_str(&since).expect("ascii date"));
            }
            Outcome::Answer(response)
        }
        Err(e) => failure(trace, e),
    }
}

/// Applies the configured faults of `operation_id`: latency, then maybe a 500, 503 or drop.
async fn inject_faults(shared: &Shared, operation_id: &str, trace: &mut Trace) -> Option<Outcome> {
    let (latency, fault) = shared.faults.lock().decide(operation_id);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = fault?;
    let mut observe = shared.observe.lock();
    match fault {
        Fault::Drop => {
            observe.counters.connections_dropped += 1;
            Some(Outcome::Drop)
        }
        Fault::Error => {
            observe.counters.faults_injected += 1;
            drop(observe);
            Some(failure(
                trace,
                ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, codes::UNEXPECTED_ERROR, "Unexpected error."),
            ))
        }
        Fault::RateLimited { retry_after_secs } => {
            observe.counters.faults_injected += 1;
            observe.counters.rate_limited += 1;
            drop(observe);
            Some(failure(
                trace,
                ApiFailure::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    codes::RATE_LIMITED_TOKEN_BUCKET,
                    "Rate limit exceeded (injected fault).",
                )
                .with_header(header::RETRY_AFTER, retry_after_secs.to_string()),
            ))
        }
        Fault::Unavailable { retry_after_secs } => {
            observe.counters.faults_injected += 1;
            drop(observe);
            Some(failure(
                trace,
                ApiFailure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    codes::SERVICE_UNAVAILABLE,
                    "Service temporarily unavailable.",
                )
                .with_header(header::RETRY_AFTER, retry_after_secs.to_string()),
            ))
        }
    }
}

async fn run_token(shared: &Shared, parts: &RequestParts, body: &Bytes, trace: &mut Trace) -> Outcome {
    trace.operation_id = "oauthToken";
    if parts.method != Method::POST {
        return failure(
            trace,
            ApiFailure::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "Use POST to request a token."),
        );
    }
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(per_minute) = shared.config.token_requests_per_minute {
        let spec = BucketSpec::per_minute(per_minute);
        let client = basic_client_id(authorization).unwrap_or_else(|| parts.peer.ip().to_string());
        let taken = shared.limiter.lock().take(spec, "oauth-token", &client);
        trace.rate = Some(taken);
        if let Some(retry_after) = taken.retry_after {
            shared.observe.lock().counters.rate_limited += 1;
            return failure(trace, rate_limited("api/oauth/token", spec, retry_after, codes::RATE_LIMITED));
        }
    }
    if let Some(outcome) = inject_faults(shared, "oauthToken", trace).await {
        return outcome;
    }
    let grant_type = url::form_urlencoded::parse(body).find(|(k, _)| k == "grant_type").map(|(_, v)| v.into_owned());
    let now = shared.clock.now();
    let issued = shared.auth.lock().issue_token(authorization, grant_type.as_deref(), now, shared.config.token_ttl);
    match issued {
        Ok((client_id, token)) => {
            trace.principal = Some(Principal::ServiceAccount(client_id).describe());
            shared.observe.lock().counters.tokens_issued += 1;
            let mut response = Json(token).into_response();
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Outcome::Answer(response)
        }
        Err(e) => failure(trace, e),
    }
}

fn basic_client_id(authorization: Option<&str>) -> Option<String> {
    use base64::Engine;
    let decoded =
        base64::engine::general_purpose::STANDARD.decode(authorization?.strip_prefix("Basic ")?.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    decoded.split_once(':').map(|(id, _)| id.to_string())
}

/// The request facts the pipeline reads.
struct RequestParts {
    method: Method,
    path: String,
    path_and_query: String,
    query: Option<String>,
    headers: HeaderMap,
    /// `http://host:port` as the client addressed us, for links.
    base: String,
    peer: SocketAddr,
}

/// The fallback handler: every Admin API and token request goes through here.
pub(crate) async fn handle(
    State(state): State<SimState>,
    Extension(conn): Extension<ConnInfo>,
    req: Request,
) -> Response {
    let shared = state.shared.clone();
    let started = Instant::now();
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    let (head, body) = req.into_parts();
    let host = head.headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string);
    let parts = RequestParts {
        method: head.method.clone(),
        path: head.uri.path().to_string(),
        path_and_query: head.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default(),
        query: head.uri.query().map(str::to_string),
        base: format!("http://{}", host.unwrap_or_else(|| shared.local_addr.to_string())),
        headers: head.headers,
        peer: conn.peer,
    };
    let mut trace = Trace::default();
    let outcome = match axum::body::to_bytes(Body::new(body), MAX_BODY).await {
        Err(_) => failure(&mut trace, ApiFailure::invalid("requestBody", "is too large or unreadable")),
        Ok(bytes) if parts.path == TOKEN_PATH => run_token(&shared, &parts, &bytes, &mut trace).await,
        Ok(bytes) => run_api(&shared, &parts, &bytes, &mut trace).await,
    };
    let (response, status) = match outcome {
        Outcome::Answer(mut response) => {
            rate_headers(&mut response, trace.rate);
            let status = response.status().as_u16();
            (Some(response), status)
        }
        Outcome::Drop => (None, 0),
    };
    shared.observe.lock().record(LoggedRequest {
        seq: 0,
        at: shared.clock.now(),
        method: parts.method.to_string(),
        path: parts.path_and_query.clone(),
        operation_id: if trace.operation_id.is_empty() { "unknown" } else { trace.operation_id }.to_string(),
        status,
        error_code: trace.error_code,
        principal: trace.principal,
        version: trace.version.map(str::to_string),
        duration_micros: started.elapsed().as_micros() as u64,
    });
    match response {
        Some(response) => response,
        None => {
            // Close the connection without an answer; the server drops it on this signal.
            conn.kill.notify_one();
            std::future::pending::<Response>().await
        }
    }
}
