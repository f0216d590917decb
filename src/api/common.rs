use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Pattern of every Atlas id (organization, project, team, user): 24 lowercase hex digits.
pub const ATLAS_ID_PATTERN: &str = "^[a-f0-9]{24}$";
/// Pattern a MongoDB Cloud username must match: an email address.
pub const USERNAME_PATTERN: &str = r"^[^@\s]+@[^@\s]+\.[^@\s]+$";
/// Atlas caps a team at 250 users.
pub const MAX_TEAM_MEMBERS: usize = 250;

/// A unit enum whose variants travel as fixed strings, with `as_str`, `Display`, `FromStr`
/// and `ALL`. Variants carry no doc comments on purpose: schemars would turn documented
/// variants into a `oneOf`, which is not a structural schema.
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident $(default $d:ident)? { $($v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(::serde::Serialize, ::serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::schemars::JsonSchema)]
        pub enum $name {
            $(#[serde(rename = $s)] $v),+
        }
        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            /// The name on the wire (Atlas's, or the CRD's).
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }
        $(
            // A hand-written impl: `#[default]` cannot be attached through this macro's variants.
            #[allow(clippy::derivable_impls)]
            impl Default for $name {
                fn default() -> Self {
                    Self::$d
                }
            }
        )?
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let known: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    format!("unknown {} {s:?} (one of {})", stringify!($name), known.join(", "))
                })
            }
        }
    };
}
pub(crate) use wire_enum;

wire_enum! {
    /// An organization-level role, as Atlas names it (`OrgUserRolesRequest.orgRoles`).
    OrgRole {
        OrgOwner = "ORG_OWNER",
        OrgGroupCreator = "ORG_GROUP_CREATOR",
        OrgBillingAdmin = "ORG_BILLING_ADMIN",
        OrgBillingReadOnly = "ORG_BILLING_READ_ONLY",
        OrgStreamProcessingAdmin = "ORG_STREAM_PROCESSING_ADMIN",
        OrgReadOnly = "ORG_READ_ONLY",
        OrgMember = "ORG_MEMBER",
    }
}

wire_enum! {
    /// A project-level role. The Atlas spec types `groupRoles` as free strings; these are the
    /// project roles Atlas documents in its user-roles reference.
    ProjectRole {
        GroupOwner = "GROUP_OWNER",
        GroupClusterManager = "GROUP_CLUSTER_MANAGER",
        GroupStreamProcessingOwner = "GROUP_STREAM_PROCESSING_OWNER",
        GroupDataAccessAdmin = "GROUP_DATA_ACCESS_ADMIN",
        GroupDataAccessReadWrite = "GROUP_DATA_ACCESS_READ_WRITE",
        GroupDataAccessReadOnly = "GROUP_DATA_ACCESS_READ_ONLY",
        GroupDatabaseAccessAdmin = "GROUP_DATABASE_ACCESS_ADMIN",
        GroupReadOnly = "GROUP_READ_ONLY",
        GroupSearchIndexEditor = "GROUP_SEARCH_INDEX_EDITOR",
        GroupBackupManager = "GROUP_BACKUP_MANAGER",
        GroupObservabilityViewer = "GROUP_OBSERVABILITY_VIEWER",
    }
}

wire_enum! {
    /// What deleting the Kubernetes object does in Atlas: `Delete` removes what the object
    /// manages (the user or invitation, or the team members it added); `Orphan` leaves Atlas alone.
    DeletionPolicy default Delete {
        Delete = "Delete",
        Orphan = "Orphan",
    }
}

/// A Secret in the object's own namespace holding Atlas credentials: either
/// `publicApiKey` + `privateApiKey` (API key, HTTP Digest) or `clientId` + `clientSecret`
/// (service account, OAuth 2.0 client credentials).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret, in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Conditions as a list-map keyed by `type`, so several writers merge per condition.
pub(crate) fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<Condition>();
    json_schema!({
        "description": "Current state of the object as a list of conditions (Ready, InvitationAccepted, Reconciling, Stalled).",
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}
