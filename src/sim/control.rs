//! `/__sim/`: the simulator's own control API (JSON, no authentication), kept apart from the
//! Atlas paths. Mirrors [`SimState`].

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{FaultConfig, SimState};
use crate::atlas::models::MembershipStatus;

pub(crate) fn router() -> Router<SimState> {
    Router::new()
        .route("/orgs", get(list_orgs).post(create_org))
        .route("/orgs/{org_id}/teams", post(create_team))
        .route("/orgs/{org_id}/users", get(list_users).post(create_user))
        .route("/orgs/{org_id}/teams/{team_id}/members", get(team_members))
        .route("/orgs/{org_id}/invitations/{action}", post(invitation))
        .route("/clock", get(clock))
        .route("/clock/advance", post(advance_clock))
        .route("/faults", get(get_faults).put(put_faults).delete(delete_faults))
        .route("/counters", get(counters).delete(reset_counters))
        .route("/requests", get(requests))
}

/// A control-API error: status and `{"error": message}`.
type Problem = (StatusCode, Json<Value>);

fn problem(status: StatusCode, message: String) -> Problem {
    (status, Json(json!({"error": message})))
}

fn org_exists(state: &SimState, org_id: &str) -> Result<(), Problem> {
    if state.orgs().iter().any(|o| o.id == org_id) {
        Ok(())
    } else {
        Err(problem(StatusCode::NOT_FOUND, format!("no organization {org_id}")))
    }
}

async fn list_orgs(State(state): State<SimState>) -> Json<Value> {
    let orgs: Vec<Value> = state
        .orgs()
        .into_iter()
        .map(|o| {
            let teams: Vec<Value> = o.teams.into_iter().map(|(id, name)| json!({"id": id, "name": name})).collect();
            json!({"id": o.id, "name": o.name, "teams": teams})
        })
        .collect();
    Json(Value::Array(orgs))
}

#[derive(Deserialize)]
struct NameBody {
    name: String,
}

async fn create_org(State(state): State<SimState>, Json(body): Json<NameBody>) -> Json<Value> {
    Json(json!({"id": state.add_org(&body.name)}))
}

async fn create_team(
    State(state): State<SimState>,
    Path(org_id): Path<String>,
    Json(body): Json<NameBody>,
) -> Result<Json<Value>, Problem> {
    org_exists(&state, &org_id)?;
    let mut store = state.shared.store.lock();
    match store.add_team(&org_id, &body.name, &[]) {
        Ok(team) => Ok(Json(json!({"id": team.id}))),
        Err(e) => Err(problem(e.status, e.detail)),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserBody {
    username: String,
    #[serde(default = "active")]
    org_membership_status: MembershipStatus,
    #[serde(default = "member")]
    org_roles: Vec<String>,
}

fn active() -> MembershipStatus {
    MembershipStatus::Active
}

fn member() -> Vec<String> {
    vec!["ORG_MEMBER".to_string()]
}

async fn create_user(
    State(state): State<SimState>,
    Path(org_id): Path<String>,
    Json(body): Json<UserBody>,
) -> Result<Json<Value>, Problem> {
    org_exists(&state, &org_id)?;
    let roles: Vec<&str> = body.org_roles.iter().map(String::as_str).collect();
    Ok(Json(json!({"id": state.add_user(&org_id, &body.username, body.org_membership_status, &roles)})))
}

async fn list_users(State(state): State<SimState>, Path(org_id): Path<String>) -> Result<Json<Value>, Problem> {
    org_exists(&state, &org_id)?;
    Ok(Json(serde_json::to_value(state.org_users(&org_id)).unwrap_or_default()))
}

async fn team_members(State(state): State<SimState>, Path((org_id, team_id)): Path<(String, String)>) -> Json<Value> {
    Json(json!(state.team_member_ids(&org_id, &team_id)))
}

#[derive(Deserialize)]
struct UsernameBody {
    username: String,
}

async fn invitation(
    State(state): State<SimState>,
    Path((org_id, action)): Path<(String, String)>,
    Json(body): Json<UsernameBody>,
) -> Result<Json<Value>, Problem> {
    org_exists(&state, &org_id)?;
    let changed = match action.as_str() {
        "accept" => state.accept_invitation(&org_id, &body.username),
        "reject" => state.reject_invitation(&org_id, &body.username),
        "expire" => state.expire_invitation(&org_id, &body.username),
        other => return Err(problem(StatusCode::NOT_FOUND, format!("no invitation action {other}"))),
    };
    Ok(Json(json!({"changed": changed})))
}

async fn clock(State(state): State<SimState>) -> Json<Value> {
    Json(json!({"now": state.now()}))
}

#[derive(Deserialize)]
struct AdvanceBody {
    seconds: u64,
}

async fn advance_clock(State(state): State<SimState>, Json(body): Json<AdvanceBody>) -> Json<Value> {
    state.advance_clock(Duration::from_secs(body.seconds));
    Json(json!({"now": state.now()}))
}

async fn get_faults(State(state): State<SimState>) -> Json<FaultConfig> {
    Json(state.faults())
}

async fn put_faults(State(state): State<SimState>, Json(faults): Json<FaultConfig>) -> Json<FaultConfig> {
    state.set_faults(faults);
    Json(state.faults())
}

async fn delete_faults(State(state): State<SimState>) -> StatusCode {
    state.clear_faults();
    StatusCode::NO_CONTENT
}

async fn counters(State(state): State<SimState>) -> Json<Value> {
    Json(serde_json::to_value(state.counters()).unwrap_or_default())
}

async fn reset_counters(State(state): State<SimState>) -> StatusCode {
    state.reset_counters();
    StatusCode::NO_CONTENT
}

async fn requests(State(state): State<SimState>) -> Json<Value> {
    Json(serde_json::to_value(state.request_log()).unwrap_or_default())
}
