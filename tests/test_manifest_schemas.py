"""deploy/kuberay/*.yaml validated offline against the schemas of what they target.

- Kubernetes built-in kinds (Deployment, Service, StatefulSet, PersistentVolumeClaim,
  NetworkPolicy, ...): the API's own OpenAPI schemas as bundled by
  ``kubernetes-validate`` (dev extra), strict (an unknown field is an error, as
  ``kubectl apply`` does with its default strict field validation).
- Custom resources: the CRDs' ``openAPIV3Schema`` vendored under ``tests/schemas/``
  from the releases we target, with their licences: KubeRay v1.7.0 (RayService
  ``ray.io/v1``) and prometheus-operator v0.93.0 (ServiceMonitor, PodMonitor
  ``monitoring.coreos.com/v1``). Validated with ``jsonschema``, made strict the way the
  API server is (no unknown fields where the schema lists ``properties`` and does not
  say ``x-kubernetes-preserve-unknown-fields``).

Every document of every manifest must be covered by one of the two; a kind with no
schema fails the test rather than passing silently.
"""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "deploy" / "kuberay"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES_VERSION = "1.30.0"  # oldest Kubernetes the manifests must apply to

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (extra 'dev')"
)
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (extra 'dev')")


def _strict(schema: Any) -> Any:
    """A copy where objects listing ``properties`` accept no other key (the API server
    drops or, with strict field validation, rejects unknown fields)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(SCHEMAS.glob("*/*.json.gz")):
        with gzip.open(path, "rt") as f:
            entry = json.load(f)
        found[(entry["apiVersion"], entry["kind"])] = _strict(entry["openAPIV3Schema"])
    return found


CRDS = _crd_schemas()


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.name}#{i}:{doc.get('kind')}/{doc['metadata']['name']}", doc))
    return docs


DOCUMENTS = _documents()


def validation_errors(doc: dict[str, Any]) -> list[str]:
    """Schema violations of one manifest document (empty when valid)."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key in CRDS:
        validator = jsonschema.Draft7Validator(CRDS[key])
        return [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)
        ]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"no schema for {key}: {exc}"]
    return []


def test_the_manifests_have_documents_of_every_expected_kind() -> None:
    kinds = {doc["kind"] for _, doc in DOCUMENTS}
    assert {"RayService", "Deployment", "Service", "StatefulSet", "ServiceMonitor"} <= kinds
    assert {k for _, k in CRDS} == {"RayService", "ServiceMonitor", "PodMonitor"}


@pytest.mark.parametrize(("name", "doc"), DOCUMENTS, ids=[n for n, _ in DOCUMENTS])
def test_manifest_document_is_valid_against_its_schema(name: str, doc: dict[str, Any]) -> None:
    assert validation_errors(doc) == []


def test_kustomization_lists_exactly_the_manifest_files() -> None:
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERAY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


# -- the validators do reject what the cluster would reject ---------------------------


def _first(kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(doc for _, doc in DOCUMENTS if doc["kind"] == kind))


def test_a_misspelt_rayservice_field_is_rejected() -> None:
    doc = _first("RayService")
    doc["spec"]["serveConfigv2"] = doc["spec"].pop("serveConfigV2")  # wrong case
    errors = validation_errors(doc)
    assert any("serveConfigv2" in e for e in errors), errors


def test_a_wrong_type_in_the_ray_cluster_is_rejected() -> None:
    doc = _first("RayService")
    (group,) = doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    group["maxReplicas"] = "eight"
    errors = validation_errors(doc)
    assert any("maxReplicas" in e and "integer" in e for e in errors), errors


def test_an_unknown_container_field_in_a_deployment_is_rejected() -> None:
    doc = _first("Deployment")
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert validation_errors(doc) != []


def test_a_servicemonitor_endpoint_with_a_bad_interval_is_rejected() -> None:
    doc = _first("ServiceMonitor")
    doc["spec"]["endpoints"][0]["interval"] = "15 seconds"
    errors = validation_errors(doc)
    assert any("interval" in e for e in errors), errors
