//! `audit -f PATH...` (and the audit section of `plan`): each organization the manifests
//! name, as an access reviewer sees it, from the listing the engine already made.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use super::apply::{RunArgs, Session};
use crate::reconcile::audit::{OrgAudit, audit_org};

/// Audit every organization the objects name (one listing each, shared with the plan).
pub(super) async fn audits(session: &Session, warning: Duration) -> Vec<Result<OrgAudit, String>> {
    let mut declared: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for o in &session.input.objects.org_users {
        declared.entry(o.spec.org_id.as_str()).or_default().push(o.spec.username.as_str());
    }
    for t in &session.input.objects.team_memberships {
        declared.entry(t.spec.org_id.as_str()).or_default();
    }
    let now = jiff::Timestamp::now();
    let mut out = Vec::new();
    for (org_id, usernames) in declared {
        out.push(match session.index.shared_directory(&session.client, org_id).await {
            Ok(directory) => Ok(audit_org(org_id, &directory, usernames, now, warning)),
            Err(e) => Err(format!("organization {org_id}: cannot list its users: {e}")),
        });
    }
    out
}

/// Print the audit of every organization; whether every one could be read.
pub(super) async fn print_audits(session: &Session, warning: Duration) -> bool {
    let mut ok = true;
    println!("\nAudit ({} warning window):", humantime::format_duration(warning));
    for audit in audits(session, warning).await {
        match audit {
            Ok(audit) => {
                for line in audit.to_string().lines() {
                    println!("  {line}");
                }
            }
            Err(e) => {
                ok = false;
                println!("  {e}");
            }
        }
    }
    ok
}

/// `audit`: only the audit, no plan. Changes nothing in Atlas.
pub async fn audit(args: RunArgs) -> ExitCode {
    let session = match Session::open(&args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if print_audits(&session, args.invitation_warning).await { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
