//! Tenancy: whether an object in a namespace may ask an organization for what it asks, by the
//! organization's `AtlasOrganization`. The same rules as the ValidatingAdmissionPolicy the chart
//! ships (`deploy/helm/atlas-access-operator/templates/admission-policy.yaml`), enforced again
//! by the controller because admission can be bypassed or installed late. Pure: the caller
//! gives the namespace's labels.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::{AtlasOrgUserSpec, AtlasOrganizationSpec, AtlasTeamMembershipSpec, DeletionPolicy};

/// Condition reason of an object its organization does not allow.
pub const NOT_ALLOWED: &str = "NotAllowed";

/// What an object asks of its organization.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    OrgUser(&'a AtlasOrgUserSpec),
    TeamMembership(&'a AtlasTeamMembershipSpec),
}

impl Request<'_> {
    pub fn org_id(&self) -> &str {
        match self {
            Request::OrgUser(s) => &s.org_id,
            Request::TeamMembership(s) => &s.org_id,
        }
    }

    /// The object's own deletion policy, if it sets one.
    pub fn deletion_policy(&self) -> Option<DeletionPolicy> {
        match self {
            Request::OrgUser(s) => s.deletion_policy,
            Request::TeamMembership(s) => s.deletion_policy,
        }
    }
}

/// Whether a label selector needs the namespace's labels at all.
pub fn needs_labels(org: &AtlasOrganizationSpec, namespace: &str) -> bool {
    !org.namespaces.iter().any(|n| n == namespace) && org.namespace_selector.is_some()
}

/// Whether `labels` match a Kubernetes label selector (matchLabels and matchExpressions with
/// In, NotIn, Exists, DoesNotExist; an unknown operator matches nothing).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let by_expression = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_label && by_expression
}

/// Whether the namespace may declare objects for the organization.
pub fn namespace_allowed(org: &AtlasOrganizationSpec, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
    org.namespaces.iter().any(|n| n == namespace)
        || org.namespace_selector.as_ref().is_some_and(|s| selector_matches(s, labels))
}

/// Why the organization refuses an object: every reason, one sentence each. Names only the
/// AtlasOrganization (cluster-scoped) and the object's own fields, never another namespace's
/// objects.
pub fn refusals(
    org_name: &str,
    org: &AtlasOrganizationSpec,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    request: Request<'_>,
) -> Vec<String> {
    let mut out = Vec::new();
    if !namespace_allowed(org, namespace, labels) {
        out.push(format!(
            "namespace {namespace} may not manage Atlas organization {} (AtlasOrganization {org_name} allows neither it by name nor by its labels)",
            org.org_id
        ));
        return out;
    }
    let team_allowed = |id: Option<&str>, name: Option<&str>| {
        org.allowed_teams.as_ref().is_none_or(|allowed| {
            allowed.iter().any(|a| {
                (a.id.is_some() && a.id.as_deref() == id)
                    || a.name.as_deref().zip(name).is_some_and(|(a, n)| a.eq_ignore_ascii_case(n))
            })
        })
    };
    match request {
        Request::OrgUser(spec) => {
            if let Some(allowed) = &org.allowed_org_roles {
                let over: Vec<&str> =
                    spec.org_roles.iter().filter(|r| !allowed.contains(r)).map(|r| r.as_str()).collect();
                if !over.is_empty() {
                    out.push(format!(
                        "spec.orgRoles: {} above the ceiling of AtlasOrganization {org_name} (allowed: {})",
                        over.join(", "),
                        allowed.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            if let Some(allowed) = &org.allowed_projects {
                for assignment in &spec.project_roles {
                    match allowed.iter().find(|a| a.project_id == assignment.project_id) {
                        None => out.push(format!(
                            "spec.projectRoles: project {} is not allowed by AtlasOrganization {org_name}",
                            assignment.project_id
                        )),
                        Some(a) => {
                            let over: Vec<&str> =
                                assignment.roles.iter().filter(|r| !a.roles.contains(r)).map(|r| r.as_str()).collect();
                            if !over.is_empty() {
                                out.push(format!(
                                    "spec.projectRoles: {} in project {} above the ceiling of AtlasOrganization {org_name}",
                                    over.join(", "),
                                    assignment.project_id
                                ));
                            }
                        }
                    }
                }
            }
            let teams: Vec<&str> =
                spec.team_ids.iter().filter(|t| !team_allowed(Some(t), None)).map(String::as_str).collect();
            if !teams.is_empty() {
                out.push(format!(
                    "spec.teamIds: team(s) {} not allowed by AtlasOrganization {org_name}",
                    teams.join(", ")
                ));
            }
        }
        Request::TeamMembership(spec) => {
            if !team_allowed(spec.team.id.as_deref(), spec.team.name.as_deref()) {
                let team = spec.team.id.as_deref().or(spec.team.name.as_deref()).unwrap_or_default();
                out.push(format!("spec.team: team {team} is not allowed by AtlasOrganization {org_name}"));
            }
        }
    }
    out
}

/// The deletion policy that applies: the object's own, else the organization's default, else `Delete`.
pub fn effective_deletion_policy(request: Request<'_>, org: Option<&AtlasOrganizationSpec>) -> DeletionPolicy {
    request.deletion_policy().or(org.and_then(|o| o.default_deletion_policy)).unwrap_or_default()
}
