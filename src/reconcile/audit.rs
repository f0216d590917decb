//! The access reviewer's view of one organization, from the listing the operator already has:
//! who is in Atlas that no AtlasOrgUser declares, who is declared but absent, whose invitation
//! is pending, and whose invitation lapses soon. Pure: the listing, the declared usernames and
//! `now` come in, the counts and names go out.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use super::directory::{OrgUserDirectory, username_key};
use crate::atlas::models::{MembershipStatus, OrgUser};

/// How many usernames a list in the audit keeps (counts are always complete): enough to act
/// on, bounded so a status stays small.
pub const AUDIT_NAMES_KEPT: usize = 10;

/// Default window before an invitation's expiry in which it counts as expiring soon.
pub const DEFAULT_INVITATION_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// A bounded list: the count of everything, the first few names (sorted).
#[derive(Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NamedCount {
    pub count: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first: Vec<String>,
}

impl NamedCount {
    fn of(names: BTreeSet<String>) -> Self {
        Self { count: names.len(), first: names.into_iter().take(AUDIT_NAMES_KEPT).collect() }
    }
}

/// An invitation that lapses within the warning window.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExpiringInvitation {
    pub username: String,
    /// RFC 3339, as Atlas reports it.
    pub expires_at: String,
    /// Whether an AtlasOrgUser declares the person (the operator will re-invite on expiry).
    pub managed: bool,
}

/// One organization, audited.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OrgAudit {
    pub org_id: String,
    /// Users in the organization (PENDING or ACTIVE).
    pub users: usize,
    /// Of those, the ones an AtlasOrgUser declares.
    pub managed: usize,
    /// In the organization, declared by no AtlasOrgUser.
    pub unmanaged: NamedCount,
    /// Declared by an AtlasOrgUser, not in the organization (not yet invited, or the
    /// invitation expired or was rejected).
    pub declared_absent: NamedCount,
    /// PENDING invitations.
    pub pending: NamedCount,
    /// PENDING invitations that expire within the window (soonest first), at most
    /// [`AUDIT_NAMES_KEPT`] listed; `expiring_count` counts them all.
    pub expiring: Vec<ExpiringInvitation>,
    pub expiring_count: usize,
}

/// Whether `user`'s pending invitation expires within `window` of `now` (or has just lapsed
/// while Atlas still lists it as PENDING).
pub fn expires_within(user: &OrgUser, now: Timestamp, window: Duration) -> Option<Timestamp> {
    if user.org_membership_status != MembershipStatus::Pending {
        return None;
    }
    let at: Timestamp = user.invitation_expires_at.as_deref()?.parse().ok()?;
    let window = jiff::SignedDuration::try_from(window).unwrap_or(jiff::SignedDuration::MAX);
    (at.duration_since(now) <= window).then_some(at)
}

/// The `InvitationExpiringSoon` condition of an AtlasOrgUser whose status says PENDING with an
/// expiry within `window` of `now`, and whether it is news (the previous status did not say
/// so for this same invitation): the caller then warns once, not every reconcile.
pub fn invitation_expiry_condition(
    status: &crate::api::AtlasOrgUserStatus,
    previous: Option<&crate::api::AtlasOrgUserStatus>,
    now: Timestamp,
    window: Duration,
) -> Option<(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition, bool)> {
    use crate::api::conditions::{INVITATION_EXPIRING_SOON, find};
    if status.membership_status.as_deref() != Some(MembershipStatus::Pending.as_str()) {
        return None;
    }
    let expires_at = status.invitation_expires_at.as_deref()?;
    let at: Timestamp = expires_at.parse().ok()?;
    let window_signed = jiff::SignedDuration::try_from(window).unwrap_or(jiff::SignedDuration::MAX);
    if at.duration_since(now) > window_signed {
        return None;
    }
    let earlier = previous
        .filter(|p| p.invitation_expires_at.as_deref() == Some(expires_at))
        .and_then(|p| find(&p.conditions, INVITATION_EXPIRING_SOON))
        .filter(|c| c.status == "True");
    let condition = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: INVITATION_EXPIRING_SOON.to_string(),
        status: "True".to_string(),
        reason: INVITATION_EXPIRING_SOON.to_string(),
        message: format!(
            "the invitation expires at {expires_at} (warning window {}); the person has not accepted it yet",
            humantime::format_duration(window)
        ),
        observed_generation: status.observed_generation,
        last_transition_time: earlier
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
    };
    Some((condition, earlier.is_none()))
}

/// Audit one organization: `declared` are the usernames of the live AtlasOrgUser objects of
/// this organization (any case).
pub fn audit_org<'a>(
    org_id: &str,
    directory: &OrgUserDirectory,
    declared: impl IntoIterator<Item = &'a str>,
    now: Timestamp,
    warning_window: Duration,
) -> OrgAudit {
    let declared: BTreeSet<String> = declared.into_iter().map(username_key).collect();
    let (mut users, mut managed) = (0, 0);
    let (mut unmanaged, mut pending, mut present) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut expiring = Vec::new();
    for user in directory.iter() {
        if !user.org_membership_status.is_in_org() {
            continue;
        }
        let key = username_key(&user.username);
        let is_declared = declared.contains(&key);
        users += 1;
        present.insert(key);
        if is_declared {
            managed += 1;
        } else {
            unmanaged.insert(user.username.clone());
        }
        if user.org_membership_status == MembershipStatus::Pending {
            pending.insert(user.username.clone());
        }
        if let Some(at) = expires_within(user, now, warning_window) {
            expiring.push((
                at,
                user.username.clone(),
                is_declared,
                user.invitation_expires_at.clone().unwrap_or_default(),
            ));
        }
    }
    let declared_absent: BTreeSet<String> = declared.iter().filter(|d| !present.contains(*d)).cloned().collect();
    expiring.sort();
    let expiring_count = expiring.len();
    OrgAudit {
        org_id: org_id.to_string(),
        users,
        managed,
        unmanaged: NamedCount::of(unmanaged),
        declared_absent: NamedCount::of(declared_absent),
        pending: NamedCount::of(pending),
        expiring: expiring
            .into_iter()
            .take(AUDIT_NAMES_KEPT)
            .map(|(_, username, managed, expires_at)| ExpiringInvitation { username, expires_at, managed })
            .collect(),
        expiring_count,
    }
}

impl std::fmt::Display for OrgAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |n: &NamedCount| {
            let more = n.count.saturating_sub(n.first.len());
            let mut text = if n.first.is_empty() { String::new() } else { format!("  {}", n.first.join(", ")) };
            if more > 0 {
                text.push_str(&format!(" and {more} more"));
            }
            text
        };
        writeln!(f, "organization {}: {} users, {} managed", self.org_id, self.users, self.managed)?;
        writeln!(f, "  unmanaged (in Atlas, no AtlasOrgUser): {}{}", self.unmanaged.count, list(&self.unmanaged))?;
        writeln!(
            f,
            "  declared, not in the organization: {}{}",
            self.declared_absent.count,
            list(&self.declared_absent)
        )?;
        writeln!(f, "  pending invitations: {}{}", self.pending.count, list(&self.pending))?;
        writeln!(f, "  invitations expiring soon: {}", self.expiring_count)?;
        for e in &self.expiring {
            let who = if e.managed { "managed: re-invited on expiry" } else { "unmanaged" };
            writeln!(f, "    {} expires {} ({who})", e.username, e.expires_at)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atlas::models::OrgUserRoles;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn user(username: &str, status: MembershipStatus, expires_at: Option<&str>) -> OrgUser {
        OrgUser {
            id: format!("{:0>24}", username.len()),
            username: username.to_string(),
            org_membership_status: status,
            roles: OrgUserRoles { org_roles: vec!["ORG_MEMBER".into()], group_role_assignments: vec![] },
            team_ids: vec![],
            invitation_created_at: None,
            invitation_expires_at: expires_at.map(str::to_string),
            inviter_username: None,
            created_at: None,
            first_name: None,
            last_name: None,
            last_auth: None,
            country: None,
            mobile_number: None,
        }
    }

    fn now() -> Timestamp {
        "2026-12-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn counts_managed_unmanaged_absent_pending_and_expiring() {
        use MembershipStatus::*;
        let directory = OrgUserDirectory::new([
            user("owner@example.com", Active, None),
            user("Alice@example.com", Active, None),
            user("bob@example.com", Pending, Some("2026-12-03T12:00:00Z")), // 2 days: expiring
            user("carol@example.com", Pending, Some("2026-12-20T12:00:00Z")), // 19 days: not yet
            user("dave@example.com", Pending, Some("2026-12-02T00:00:00Z")), // unmanaged, expiring first
            user("erin@example.com", InvitationExpired, Some("2026-11-01T00:00:00Z")), // not in the org
        ]);
        let declared =
            ["alice@example.com", "bob@example.com", "carol@example.com", "erin@example.com", "zed@example.com"];
        let audit = audit_org("org", &directory, declared, now(), 7 * DAY);
        assert_eq!((audit.users, audit.managed), (5, 3));
        assert_eq!(audit.unmanaged.first, ["dave@example.com", "owner@example.com"]);
        assert_eq!(audit.declared_absent.first, ["erin@example.com", "zed@example.com"]);
        assert_eq!(audit.pending.count, 3);
        assert_eq!(audit.expiring_count, 2);
        let expiring: Vec<(&str, bool)> = audit.expiring.iter().map(|e| (e.username.as_str(), e.managed)).collect();
        assert_eq!(expiring, [("dave@example.com", false), ("bob@example.com", true)], "soonest first");
    }

    #[test]
    fn the_window_decides_what_is_expiring() {
        let table: &[(Option<&str>, MembershipStatus, Duration, bool)] = &[
            (Some("2026-12-08T11:59:59Z"), MembershipStatus::Pending, 7 * DAY, true),
            (Some("2026-12-08T12:00:01Z"), MembershipStatus::Pending, 7 * DAY, false),
            (Some("2026-12-08T12:00:01Z"), MembershipStatus::Pending, 8 * DAY, true),
            // Lapsed but still listed as PENDING: expiring (now), not silently dropped.
            (Some("2026-11-30T00:00:00Z"), MembershipStatus::Pending, 7 * DAY, true),
            (Some("2026-12-02T00:00:00Z"), MembershipStatus::Active, 7 * DAY, false),
            (None, MembershipStatus::Pending, 7 * DAY, false),
            (Some("not a time"), MembershipStatus::Pending, 7 * DAY, false),
        ];
        for (expires, status, window, want) in table {
            let u = user("x@example.com", *status, *expires);
            assert_eq!(expires_within(&u, now(), *window).is_some(), *want, "{expires:?} {status:?} {window:?}");
        }
    }

    #[test]
    fn lists_are_bounded_counts_are_not() {
        let directory = OrgUserDirectory::new(
            (0..25).map(|i| user(&format!("u{i:02}@example.com"), MembershipStatus::Active, None)),
        );
        let audit = audit_org("org", &directory, [], now(), 7 * DAY);
        assert_eq!(audit.unmanaged.count, 25);
        assert_eq!(audit.unmanaged.first.len(), AUDIT_NAMES_KEPT);
        assert!(audit.to_string().contains("and 15 more"), "{audit}");
    }
}
