//! Every Kubernetes API call the controller makes, as RBAC rules.
//!
//! This list is kept next to the code that makes the calls: change a call, change its entry.
//! `tests/deploy.rs` checks the Helm chart's rendered (Cluster)Roles against it in both
//! directions — every rendered verb is listed here and every listed verb is rendered — so the
//! shipped RBAC can neither miss a permission the code needs nor grant one it does not use.
//! CRD presence is checked through API discovery, which needs no RBAC rule.

/// When and where a rule is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleScope {
    /// Whenever the operator runs, where it watches (every namespace, or the `--namespace`).
    Always,
    /// Cluster-scoped resources (AtlasOrganization, Namespace): a ClusterRole, whatever is watched.
    Cluster,
    /// Only in the operator's own namespace (a Role): credentials Secrets of AtlasOrganizations
    /// and of the default; never cluster-wide.
    OperatorNamespace,
    /// Only in a tenant namespace that grants it (a RoleBinding there to the tenant ClusterRole),
    /// for an object's own `credentialsSecretRef`.
    TenantNamespace,
    /// Only with `--leader-election` (the Lease lives in the operator's own namespace).
    LeaderElection,
}

/// One resource and the verbs the controller uses on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// API group; `""` is the core group.
    pub api_group: &'static str,
    /// Resource (plural), with `/subresource` where the call targets one.
    pub resource: &'static str,
    /// Verbs the calls use on the resource.
    pub verbs: &'static [&'static str],
    /// Whether the rule is needed always or only with leader election.
    pub when: RuleScope,
}

/// `Controller::new(Api<AtlasOrgUser>)` lists and watches the objects (get for the reflector's
/// re-reads and `Api::get` in reconcile); `finalizer()` adds and removes
/// `atlas-access.dev/cleanup` with a JSON patch.
pub const ORG_USERS: Rule = Rule {
    api_group: "atlas-access.dev",
    resource: "atlasorgusers",
    verbs: &["get", "list", "watch", "patch"],
    when: RuleScope::Always,
};

/// `Controller::new(Api<AtlasTeamMembership>)` and its `finalizer()`, as for AtlasOrgUser; the
/// `orgUserRef` mapping reads AtlasOrgUsers from the reflector store, not the API.
pub const TEAM_MEMBERSHIPS: Rule = Rule {
    api_group: "atlas-access.dev",
    resource: "atlasteammemberships",
    verbs: &["get", "list", "watch", "patch"],
    when: RuleScope::Always,
};

/// Status writes: `Api::patch_status` with `Patch::Apply` (server-side apply).
pub const ORG_USERS_STATUS: Rule = Rule {
    api_group: "atlas-access.dev",
    resource: "atlasorgusers/status",
    verbs: &["patch"],
    when: RuleScope::Always,
};

/// Status writes for AtlasTeamMembership, as above.
pub const TEAM_MEMBERSHIPS_STATUS: Rule = Rule {
    api_group: "atlas-access.dev",
    resource: "atlasteammemberships/status",
    verbs: &["patch"],
    when: RuleScope::Always,
};

/// The finalizer patch also needs `update` on `finalizers` on clusters that run the
/// OwnerReferencesPermissionEnforcement admission plugin (OpenShift does).
pub const ORG_USERS_FINALIZERS: Rule = Rule {
    api_group: "atlas-access.dev",
    resource: "atlasorgusers/finalizers",
    verbs: &["update"],
    when: RuleScope::Always,
};

/// As above, for AtlasTeamMembership.
pub const TEAM_MEMBERSHIPS_FINALIZERS: Rule = Rule {
    api_group: "atlas-access.dev",
    resource: "atlasteammemberships/finalizers",
    verbs: &["update"],
    when: RuleScope::Always,
};

/// Credentials in the operator's namespace: `Api<Secret>::get` reads an AtlasOrganization's (or
/// the default) Secret on reconcile; `Controller::watches(Api<PartialObjectMeta<Secret>>)` lists
/// and watches there, metadata only, the Secrets labelled `atlas.mongodb.com/type=credentials`
/// so a rotation re-reconciles.
pub const SECRETS: Rule =
    Rule { api_group: "", resource: "secrets", verbs: &["get", "list", "watch"], when: RuleScope::OperatorNamespace };

/// A tenant's own Secret (`spec.credentialsSecretRef`): `Api<Secret>::get` in the object's
/// namespace, only where that namespace binds the tenant ClusterRole.
pub const TENANT_SECRETS: Rule =
    Rule { api_group: "", resource: "secrets", verbs: &["get"], when: RuleScope::TenantNamespace };

/// `Controller::new(Api<AtlasOrganization>::all)` and the watches of both kinds' controllers list
/// and watch AtlasOrganizations (get for the reflector's re-reads).
pub const ORGANIZATIONS: Rule = Rule {
    api_group: "atlas-access.dev",
    resource: "atlasorganizations",
    verbs: &["get", "list", "watch"],
    when: RuleScope::Cluster,
};

/// AtlasOrganization status writes: `Api::patch_status` with `Patch::Apply`.
pub const ORGANIZATIONS_STATUS: Rule = Rule {
    api_group: "atlas-access.dev",
    resource: "atlasorganizations/status",
    verbs: &["patch"],
    when: RuleScope::Cluster,
};

/// `Api<Namespace>::get`: an object's namespace labels, when an AtlasOrganization's
/// `namespaceSelector` decides whether the namespace may manage the organization.
pub const NAMESPACES: Rule = Rule { api_group: "", resource: "namespaces", verbs: &["get"], when: RuleScope::Cluster };

/// `kube::runtime::events::Recorder::publish`: a POST for a new event, a PATCH when the same
/// event repeats and becomes a series.
pub const EVENTS: Rule =
    Rule { api_group: "events.k8s.io", resource: "events", verbs: &["create", "patch"], when: RuleScope::Always };

/// kube-lease-manager: reads the Lease, creates it, and renews or takes it over with a
/// server-side-apply patch.
pub const LEASES: Rule = Rule {
    api_group: "coordination.k8s.io",
    resource: "leases",
    verbs: &["get", "create", "patch"],
    when: RuleScope::LeaderElection,
};

/// The complete list; `tests/deploy.rs` holds the chart to exactly this.
pub const REQUIRED_RULES: &[Rule] = &[
    ORG_USERS,
    TEAM_MEMBERSHIPS,
    ORG_USERS_STATUS,
    TEAM_MEMBERSHIPS_STATUS,
    ORG_USERS_FINALIZERS,
    TEAM_MEMBERSHIPS_FINALIZERS,
    SECRETS,
    TENANT_SECRETS,
    ORGANIZATIONS,
    ORGANIZATIONS_STATUS,
    NAMESPACES,
    EVENTS,
    LEASES,
];

/// The rules an operator started with (`true`) or without (`false`) `--leader-election` needs.
pub fn required_rules(leader_election: bool) -> impl Iterator<Item = &'static Rule> {
    REQUIRED_RULES.iter().filter(move |r| leader_election || r.when != RuleScope::LeaderElection)
}
