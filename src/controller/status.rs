//! Status writes: server-side apply of the complete status under one field manager,
//! and no write at all when nothing changed (so a reconcile never re-triggers itself).

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "atlas-access-operator";

/// The body of a status apply: `apiVersion`, `kind` and the full `status`, nothing else.
pub fn status_patch<K, S>(status: &S) -> serde_json::Value
where
    K: Resource<DynamicType = ()>,
    S: Serialize,
{
    json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    })
}

/// Apply `desired` as the object's status unless it already is the status.
/// Returns whether a patch was sent.
pub async fn apply_status<K, S>(api: &Api<K>, name: &str, current: Option<&S>, desired: &S) -> kube::Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(false);
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(name, &params, &Patch::Apply(status_patch::<K, S>(desired))).await?;
    Ok(true)
}
