//! Reading `-f PATH...` for `plan` and `apply`: files and folders (the `.yaml` / `.yml` /
//! `.json` files directly inside, sorted), multi-document YAML. AtlasOrgUser and
//! AtlasTeamMembership objects are validated as the API server would admit them; Secrets
//! are kept as possible credentials; other kinds are ignored with a note.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;

use crate::api::validation::ManifestValidator;
use crate::api::{AtlasOrgUser, AtlasTeamMembership};
use crate::atlas::Credentials;
use crate::engine::driver::ObjectSet;

/// A Secret found in the input, with the credentials it holds (if any).
pub struct InputSecret {
    pub file: PathBuf,
    pub namespace: String,
    pub name: String,
    pub credentials: Option<Credentials>,
}

/// Everything read from the input paths.
#[derive(Default)]
pub struct Input {
    pub objects: ObjectSet,
    /// The file each object came from, in [`ObjectSet`] order (org users, then team memberships).
    pub org_user_files: Vec<PathBuf>,
    pub team_files: Vec<PathBuf>,
    pub secrets: Vec<InputSecret>,
    /// Things worth telling (ignored kinds).
    pub notes: Vec<String>,
    /// `FILE: KIND NAMESPACE/NAME: FIELD: message` lines.
    pub errors: Vec<String>,
}

fn files_of(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .collect();
    files.sort();
    Ok(files)
}

fn string_of(value: &Value, pointer: &str) -> String {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// The value of `key` in a Secret: `stringData` wins over (base64) `data`, as the API server merges them.
fn secret_value(doc: &Value, key: &str) -> Option<String> {
    if let Some(v) = doc.pointer(&format!("/stringData/{key}")).and_then(Value::as_str) {
        return Some(v.to_string());
    }
    let encoded = doc.pointer(&format!("/data/{key}")).and_then(Value::as_str)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

/// Credentials from a Secret manifest: `publicApiKey` + `privateApiKey`, or `clientId` + `clientSecret`.
pub fn secret_credentials(doc: &Value) -> Option<Credentials> {
    if let (Some(public_key), Some(private_key)) =
        (secret_value(doc, "publicApiKey"), secret_value(doc, "privateApiKey"))
    {
        return Some(Credentials::ApiKey { public_key, private_key: SecretString::from(private_key) });
    }
    if let (Some(client_id), Some(secret)) = (secret_value(doc, "clientId"), secret_value(doc, "clientSecret")) {
        return Some(Credentials::ServiceAccount { client_id, client_secret: SecretString::from(secret) });
    }
    None
}

/// Read a standalone Secret manifest file (`--credentials-secret`).
pub fn read_secret_file(path: &Path) -> Result<Credentials, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc).map_err(|e| format!("{}: {e}", path.display()))?;
        if value.get("kind").and_then(Value::as_str) == Some("Secret")
            && let Some(credentials) = secret_credentials(&value)
        {
            return Ok(credentials);
        }
    }
    Err(format!("{}: no Secret with publicApiKey/privateApiKey or clientId/clientSecret", path.display()))
}

impl Input {
    /// Read every path. Problems are collected in `errors`, not returned.
    pub fn read(paths: &[PathBuf]) -> Self {
        let validator = ManifestValidator::new();
        let mut input = Input::default();
        for path in paths {
            match files_of(path) {
                Ok(files) => {
                    for file in files {
                        input.read_file(&file, &validator);
                    }
                }
                Err(e) => input.errors.push(e),
            }
        }
        input
    }

    fn read_file(&mut self, file: &Path, validator: &ManifestValidator) {
        let shown = file.display();
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => return self.errors.push(format!("{shown}: {e}")),
        };
        for (n, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let mut value = match Value::deserialize(doc) {
                Ok(Value::Null) => continue,
                Ok(value) => value,
                Err(e) => {
                    self.errors.push(format!("{shown}: document {}: {e}", n + 1));
                    continue;
                }
            };
            let kind = string_of(&value, "/kind");
            if value.pointer("/metadata/namespace").is_none()
                && let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut)
            {
                meta.insert("namespace".into(), Value::String("default".into()));
            }
            let namespace = string_of(&value, "/metadata/namespace");
            let name = string_of(&value, "/metadata/name");
            let at = format!("{shown}: {kind} {namespace}/{name}");
            match kind.as_str() {
                "AtlasOrgUser" | "AtlasTeamMembership" => {
                    if let Err(errors) = validator.validate(&value) {
                        for e in errors {
                            let field = if e.field.is_empty() { "(object)".to_string() } else { e.field };
                            self.errors.push(format!("{at}: {field}: {}", e.message));
                        }
                        continue;
                    }
                    let parsed = if kind == "AtlasOrgUser" {
                        serde_json::from_value::<AtlasOrgUser>(value).map(|o| {
                            self.objects.org_users.push(o);
                            self.org_user_files.push(file.to_path_buf());
                        })
                    } else {
                        serde_json::from_value::<AtlasTeamMembership>(value).map(|o| {
                            self.objects.team_memberships.push(o);
                            self.team_files.push(file.to_path_buf());
                        })
                    };
                    if let Err(e) = parsed {
                        self.errors.push(format!("{at}: (object): {e}"));
                    }
                }
                "Secret" => self.secrets.push(InputSecret {
                    file: file.to_path_buf(),
                    credentials: secret_credentials(&value),
                    namespace,
                    name,
                }),
                "" => self.errors.push(format!("{shown}: document {}: kind: missing", n + 1)),
                _ => self.notes.push(format!("{at}: ignored (not an AtlasOrgUser, AtlasTeamMembership or Secret)")),
            }
        }
    }

    /// The Secret the objects name in `credentialsSecretRef` (when they all name the same one),
    /// else the only Secret with credentials in the input.
    pub fn referenced_credentials(&self) -> Result<Option<(String, Credentials)>, String> {
        let mut named: Vec<(String, String)> = self
            .objects
            .org_users
            .iter()
            .map(|o| (&o.metadata, &o.spec.credentials_secret_ref))
            .chain(self.objects.team_memberships.iter().map(|o| (&o.metadata, &o.spec.credentials_secret_ref)))
            .filter_map(|(meta, r)| Some((meta.namespace.clone().unwrap_or_default(), r.as_ref()?.name.clone())))
            .collect();
        named.sort();
        named.dedup();
        let usable: Vec<&InputSecret> = self.secrets.iter().filter(|s| s.credentials.is_some()).collect();
        let pick = |s: &InputSecret| {
            (
                format!("Secret {}/{} in {}", s.namespace, s.name, s.file.display()),
                s.credentials.clone().expect("usable"),
            )
        };
        match named.as_slice() {
            [] => Ok(match usable.as_slice() {
                [only] => Some(pick(only)),
                _ => None,
            }),
            [(namespace, name)] => {
                Ok(usable.iter().find(|s| s.namespace == *namespace && s.name == *name).map(|s| pick(s)))
            }
            more => Err(format!(
                "the objects name {} different credential Secrets; one run uses one set of credentials: \
                 run them separately or pass --credentials-secret",
                more.len()
            )),
        }
    }

    /// The file an object of the set came from.
    pub fn file_of(&self, id: crate::engine::driver::ObjectId) -> &Path {
        match id {
            crate::engine::driver::ObjectId::OrgUser(i) => &self.org_user_files[i],
            crate::engine::driver::ObjectId::TeamMembership(i) => &self.team_files[i],
        }
    }
}
