//! The client's operation table against the official spec excerpt
//! (`tests/spec/org-access.min.yaml`, a copy of `../shared/atlas-api/`): every
//! operation's path, method, operationId, versioned media type (request and response),
//! success status and query parameters are the spec's, and the media type is the newest
//! version, without a sunset.

use atlas_access_operator::atlas::Operation;
use serde_json::Value;
use url::Url;

fn spec() -> Value {
    let text = std::fs::read_to_string("tests/spec/org-access.min.yaml").unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn operation(spec: &Value, op: Operation) -> &Value {
    let path = &spec["paths"][op.path_template()];
    assert!(path.is_object(), "{op:?}: path {} not in the spec", op.path_template());
    let method = op.method().as_str().to_ascii_lowercase();
    let operation = &path[&method];
    assert!(operation.is_object(), "{op:?}: no {method} on {}", op.path_template());
    operation
}

/// A parameter, following a `$ref` into `components.parameters`.
fn resolve<'a>(spec: &'a Value, param: &'a Value) -> &'a Value {
    match param.get("$ref").and_then(Value::as_str) {
        Some(r) => &spec["components"]["parameters"][r.trim_start_matches("#/components/parameters/")],
        None => param,
    }
}

fn parameter_names(spec: &Value, operation: &Value) -> Vec<(String, String)> {
    operation["parameters"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| resolve(spec, p))
                .map(|p| (p["in"].as_str().unwrap().to_string(), p["name"].as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn operation_ids_methods_and_paths() {
    let spec = spec();
    for op in Operation::ALL {
        let operation = operation(&spec, op);
        assert_eq!(operation["operationId"], op.operation_id(), "{op:?}");
    }
}

#[test]
fn media_types_are_the_newest_unsunset_version() {
    let spec = spec();
    for op in Operation::ALL {
        let operation = operation(&spec, op);
        let status = op.success_status().to_string();
        let content = &operation["responses"][&status]["content"];
        if op.success_status() == 204 {
            // 204 has no body; the versions are named as content without schema.
            assert!(content.is_object(), "{op:?}: 204 lists its versions");
        }
        let entry = &content[op.media_type()];
        assert!(entry.is_object(), "{op:?}: {status} has no {}", op.media_type());
        assert!(entry.get("x-sunset").is_none(), "{op:?}: {} has a sunset", op.media_type());
        let newest = content.as_object().unwrap().values().filter_map(|v| v["x-xgen-version"].as_str()).max().unwrap();
        assert_eq!(op.media_type(), format!("application/vnd.atlas.{newest}+json"), "{op:?}");
        // Only one success status per operation.
        let successes: Vec<&String> =
            operation["responses"].as_object().unwrap().keys().filter(|k| k.starts_with('2')).collect();
        assert_eq!(successes, [&status], "{op:?}");
    }
}

#[test]
fn request_bodies_use_the_same_media_type() {
    let spec = spec();
    for op in Operation::ALL {
        let operation = operation(&spec, op);
        let body = &operation["requestBody"];
        if op.has_request_body() {
            assert!(body["content"][op.media_type()].is_object(), "{op:?}: request body is not {}", op.media_type());
            assert_eq!(body["required"], true, "{op:?}");
        } else {
            assert!(body.is_null(), "{op:?} takes a body the client does not send");
        }
    }
}

#[test]
fn urls_fill_exactly_the_spec_path_parameters() {
    let spec = spec();
    let base = Url::parse("https://cloud.mongodb.com").unwrap();
    let values = [
        ("orgId", "5f1b2c3d4e5f60718293a4b5"),
        ("userId", "6a1b2c3d4e5f60718293a4b6"),
        ("teamId", "6b1b2c3d4e5f60718293a4b7"),
        ("teamName", "platform-admins"),
        ("groupId", "6c1b2c3d4e5f60718293a4b8"),
    ];
    for op in Operation::ALL {
        let operation = operation(&spec, op);
        let path_params: Vec<String> =
            parameter_names(&spec, operation).into_iter().filter(|(kind, _)| kind == "path").map(|(_, n)| n).collect();
        let mut expected = op.path_template().to_string();
        for name in &path_params {
            let value = values.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{op:?}: {name}")).1;
            expected = expected.replace(&format!("{{{name}}}"), value);
        }
        assert!(!expected.contains('{'), "{op:?}: {expected} has a parameter the spec does not declare");
        let url = op.url(&base, &values, &[]).unwrap();
        assert_eq!(url.path(), expected, "{op:?}");
    }
}

#[test]
fn query_parameters_the_client_sends_exist() {
    let spec = spec();
    let sent: &[(Operation, &[&str])] = &[
        (Operation::ListOrgUsers, &["username", "orgMembershipStatuses", "itemsPerPage", "pageNum"]),
        (Operation::GetOrgUser, &["orgMembershipStatuses"]),
        (Operation::ListOrgTeams, &["itemsPerPage", "pageNum"]),
        (Operation::ListOrgTeamUsers, &["itemsPerPage", "pageNum"]),
    ];
    for (op, names) in sent {
        let declared = parameter_names(&spec, operation(&spec, *op));
        for name in *names {
            assert!(declared.iter().any(|(kind, n)| kind == "query" && n == name), "{op:?}: no query parameter {name}");
        }
    }
    // itemsPerPage is 1..=500, the client's bound.
    let items = &spec["components"]["parameters"]["itemsPerPage"]["schema"];
    assert_eq!(items["maximum"], atlas_access_operator::atlas::models::MAX_ITEMS_PER_PAGE);
    assert_eq!(items["minimum"], 1);
}

#[test]
fn rate_limit_and_retry_after_headers_are_the_ones_read() {
    let spec = spec();
    let headers = &spec["components"]["headers"];
    for name in ["HeaderRateLimitLimit", "HeaderRateLimitRemaining", "HeaderRetryAfter"] {
        assert_eq!(headers[name]["schema"]["type"], "integer", "{name}");
    }
    let too_many = &spec["components"]["responses"]["tooManyRequests"]["headers"];
    for name in ["RateLimit-Limit", "RateLimit-Remaining", "Retry-After"] {
        assert!(too_many[name].is_object(), "429 carries {name}");
    }
}
