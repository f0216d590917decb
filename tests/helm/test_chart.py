"""The Helm chart's structure, through the Helm v4 engine (helm-python-sdk): every value documented,
set by some values case and named by the schema, renders of every case, and the generated files
(deploy/manifests/, tests/helm/rendered/) in step with the chart.

What users run is tested with the real Helm CLI (v3) in tests/helm_cli.rs: lint --strict and
template of every values case, refusal of bad values, kubeVersion, install / upgrade /
uninstall against a real API server.

The rendered objects are parsed into k8s-openapi types, and their RBAC is held to the calls the
code makes, by tests/deploy.rs (Rust) from tests/helm/rendered/ and deploy/manifests/.
"""

from __future__ import annotations

import json
import re

import helm_python as helm
import pytest
import yaml

import render_manifests as rm

# Free-form maps (Kubernetes fields passed through as they are): a case sets the map as a whole.
FREE_FORM = {"resources", "podSecurityContext", "securityContext", "podAnnotations", "podLabels",
             "nodeSelector", "affinity"}
# Left at their defaults in every case on purpose: the hardened security contexts (overriding them
# is possible but never advised), the Service type and scrape timeout (passed through verbatim),
# and turning the chart's ServiceAccount / RBAC off (then there is nothing of ours to check).
NOT_VARIED = {"podSecurityContext", "securityContext", "service.type", "serviceMonitor.scrapeTimeout",
              "serviceAccount.create", "rbac.create", "nameOverride"}


def test_cases_cover_every_documented_option():
    """Every value (each key of a section) is set by some case in tests/helm/values/."""
    defaults = yaml.safe_load((rm.CHART_DIR / "values.yaml").read_text())

    def keys(values: dict) -> set[str]:
        out = set()
        for key, value in values.items():
            if isinstance(value, dict) and value and key not in FREE_FORM:
                out.update(f"{key}.{sub}" for sub in value)
            else:
                out.add(key)
        return out

    touched = set().union(*(keys(rm.load_values(case)) for case in rm.cases()))
    assert keys(defaults) - touched == NOT_VARIED


CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


@pytest.mark.parametrize("case", rm.cases())
def test_every_case_renders_named_objects(case):
    documents = [yaml.safe_load(body) for _, body in rm.render(rm.load_values(case))]
    assert documents
    kinds = [d["kind"] for d in documents]
    assert kinds.count("Deployment") == 1 and "Service" in kinds
    for doc in documents:
        assert doc["apiVersion"] and doc["metadata"]["name"], doc
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace"), f"{doc['kind']} {doc['metadata']['name']} has no namespace"


def test_every_value_is_documented():
    """A `# --` comment right above every top-level key, or above each key of its section."""
    lines = (rm.CHART_DIR / "values.yaml").read_text().splitlines()
    undocumented = []
    section_documented = False
    for index, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z]\w*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        documented = index > 0 and lines[index - 1].lstrip().startswith("#")
        if indent == 0:
            section_documented = documented
            is_section = line.rstrip().endswith(":")
            if not documented and not is_section:
                undocumented.append(key)
        elif indent == 2 and not section_documented and not documented:
            undocumented.append(key)
    assert undocumented == []


def test_schema_names_exactly_the_values():
    schema = json.loads((rm.CHART_DIR / "values.schema.json").read_text())
    defaults = yaml.safe_load((rm.CHART_DIR / "values.yaml").read_text())
    assert set(schema["properties"]) == set(defaults)
    for key, sub_schema in schema["properties"].items():
        if sub_schema.get("additionalProperties") is False:
            assert set(sub_schema["properties"]) == set(defaults[key]), key
    with helm.Chart.load(rm.CHART_DIR) as chart:
        chart.validate_schema(defaults)


def test_chart_crds_are_the_top_level_crds():
    top_level = sorted(p.read_text() for p in (rm.ROOT / "crds").glob("*.yaml"))
    assert sorted(rm.crd_documents()) == top_level


def test_generated_files_match_the_chart():
    stale = [str(p.relative_to(rm.ROOT)) for p in rm.stale_files()]
    assert stale == [], "run deploy/render-manifests.sh"
    for path, text in rm.expected_files().items():
        on_disk = path.read_text() if path.exists() else ""
        assert on_disk == text, f"{path.relative_to(rm.ROOT)} is stale: run deploy/render-manifests.sh"


def test_image_tag_defaults_to_app_version():
    with helm.Chart.load(rm.CHART_DIR) as chart:
        app_version = chart.metadata["appVersion"]
    (deployment,) = [yaml.safe_load(b) for t, b in rm.render({}) if t == "deployment.yaml"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/atlas-access/atlas-access-operator:{app_version}"
    (deployment,) = [yaml.safe_load(b) for t, b in rm.render({"image": {"tag": "1.2.3"}}) if t == "deployment.yaml"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.2.3")


def _rbac(values: dict) -> tuple[list[dict], list[dict]]:
    documents = [yaml.safe_load(body) for _, body in rm.render(values)]
    roles = [d for d in documents if d["kind"] in ("ClusterRole", "Role")]
    bindings = [d for d in documents if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    return roles, bindings


@pytest.mark.parametrize(
    ("values", "tenant_namespaces"),
    [
        ({}, []),
        ({"tenancy": {"tenantNamespaces": ["team-a", "team-b"]}}, ["team-a", "team-b"]),
        ({"watch": {"namespace": "team-a"}}, ["team-a"]),
        ({"watch": {"namespace": "team-a"}, "tenancy": {"tenantNamespaces": ["team-a", "x"]}}, ["team-a", "x"]),
    ],
)
def test_secrets_are_read_only_in_the_release_namespace_and_granted_tenants(values, tenant_namespaces):
    """Least privilege in each mode: no ClusterRole bound cluster-wide grants Secrets; a Role in
    the release namespace does; tenant namespaces get a RoleBinding to the tenant ClusterRole."""
    roles, bindings = _rbac(values)
    cluster_bound = {b["roleRef"]["name"] for b in bindings if b["kind"] == "ClusterRoleBinding"}
    for role in roles:
        grants_secrets = any("secrets" in rule.get("resources", []) for rule in role["rules"])
        if role["kind"] == "ClusterRole" and role["metadata"]["name"] in cluster_bound:
            assert not grants_secrets, role["metadata"]["name"]
    secret_roles = [r for r in roles if r["kind"] == "Role" and r["metadata"]["name"].endswith("-secrets")]
    assert [r["metadata"]["namespace"] for r in secret_roles] == [rm.RELEASE_NAMESPACE]
    tenant = sorted(
        b["metadata"]["namespace"]
        for b in bindings
        if b["kind"] == "RoleBinding" and b["roleRef"]["kind"] == "ClusterRole"
    )
    assert tenant == tenant_namespaces


@pytest.mark.parametrize(("enabled", "count"), [(True, 2), (False, 0)])
def test_admission_policy_follows_its_value(enabled, count):
    documents = [yaml.safe_load(body) for _, body in rm.render({"tenancy": {"admissionPolicy": {"enabled": enabled}}})]
    kinds = [d["kind"] for d in documents if d["kind"].startswith("ValidatingAdmissionPolicy")]
    assert len(kinds) == count


def _args(values: dict) -> list[str]:
    (deployment,) = [yaml.safe_load(b) for t, b in rm.render(values) if t == "deployment.yaml"]
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"concurrency": 4}, "--concurrency=4"),
        ({"indexRefreshInterval": "2m"}, "--index-refresh-interval=2m"),
        ({"invitationsPerMinute": 6}, "--invitations-per-minute=6"),
        ({"invitationsPerMinute": 0}, "--invitations-per-minute=0"),
        ({"invitationWarning": "3d"}, "--invitation-warning=3d"),
        ({"reconcileTimeout": "90s"}, "--reconcile-timeout=90s"),
    ],
)
def test_optional_flags_reach_the_container_args(values, flag):
    """Each optional value becomes exactly its flag; left null, the flag is not passed (the
    operator's default applies)."""
    assert flag in _args(values)
    name = flag.split("=")[0]
    assert not [a for a in _args({}) if a.split("=")[0] == name]


@pytest.mark.parametrize(
    "values",
    [
        {"reconcileTimeout": "0s"},
        {"reconcileTimeout": "5 minutes"},
        {"indexRefreshInterval": "soon"},
        {"invitationWarning": "7"},
        {"invitationsPerMinute": -1},
        {"invitationsPerMinute": "10"},
    ],
)
def test_schema_refuses_bad_pacing_values(values):
    defaults = yaml.safe_load((rm.CHART_DIR / "values.yaml").read_text())
    with helm.Chart.load(rm.CHART_DIR) as chart, pytest.raises(Exception):
        chart.validate_schema({**defaults, **values})
