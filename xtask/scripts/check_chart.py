"""Renders, lints and validates the Helm chart (run by `cargo xtask test`).

- Renders charts/cqrs-operator with real Helm (PyPI helm-python-sdk, the Helm v4 SDK) for the
  default values and every charts/cqrs-operator/ci/*-values.yaml, and lints it strictly.
- Validates every rendered object and the CRD against the Kubernetes OpenAPI schemas
  (PyPI kubernetes-validate, strict: unknown fields are errors). CqrsApp objects are validated
  against the chart's own CRD schema and written to --out for `cqrs-operator validate`.
- Checks that bad values (unknown keys, wrong types) fail with a schema error naming the key.

Exit status 0 when everything holds; otherwise the failures are printed.
"""
import argparse
import glob
import json
import os
import sys

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

KUBE_VERSION = "1.33.0"


def fail(message):
    print(f"FAIL: {message}")
    return 1


def documents(text):
    return [d for d in yaml.safe_load_all(text) if d]


def crd_schema(chart_dir):
    crd = documents(open(os.path.join(chart_dir, "crds", "cqrsapps.cqrs.dev.yaml")).read())[0]
    return crd, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validate_objects(objects, cr_schema, out_dir, scenario):
    failures = 0
    for obj in objects:
        kind, name = obj.get("kind"), obj.get("metadata", {}).get("name")
        label = f"{scenario}: {kind}/{name}"
        if obj.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            # Prometheus Operator's CRD is not part of Kubernetes; check its shape by hand.
            if not obj.get("spec", {}).get("endpoints"):
                failures += fail(f"{label}: ServiceMonitor without endpoints")
            continue
        if kind == "CqrsApp":
            try:
                jsonschema.validate(obj, cr_schema)
            except jsonschema.ValidationError as e:
                failures += fail(f"{label}: against the CRD schema: {e.message} at {list(e.absolute_path)}")
            path = os.path.join(out_dir, f"{scenario}-{name}.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(obj, f)
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures += fail(f"{label}: {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            failures += fail(f"{label}: no Kubernetes {KUBE_VERSION} schema for {obj.get('apiVersion')}/{kind}")
    return failures


def check_service_monitors(objects, scenario):
    """Every ServiceMonitor selects exactly one Service: the operator's metrics Service."""
    failures = 0
    services = [o for o in objects if o.get("kind") == "Service"]
    for monitor in (o for o in objects if o.get("kind") == "ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        selected = [
            s["metadata"]["name"]
            for s in services
            if all(s["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]
        if len(selected) != 1 or not selected[0].endswith("-metrics"):
            failures += fail(f"{scenario}: ServiceMonitor selects {selected}, not only the operator's metrics Service")
    return failures


def values_table(chart_dir):
    """The README's values table: every key of values.schema.json with its default."""
    schema = yaml.safe_load(open(os.path.join(chart_dir, "values.schema.json")))
    defaults = yaml.safe_load(open(os.path.join(chart_dir, "values.yaml")))
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]

    def walk(node, value, path):
        for key, child in node.get("properties", {}).items():
            if key == "global":
                continue
            here = f"{path}.{key}" if path else key
            default = value.get(key) if isinstance(value, dict) else None
            if child.get("type") == "object" and child.get("properties"):
                walk(child, default or {}, here)
                continue
            shown = "" if default is None else "`" + json.dumps(default) + "`"
            typ = child.get("type", "")
            if "enum" in child:
                typ = " \\| ".join(f"`{v}`" for v in child["enum"])
            rows.append(f"| `{here}` | {typ} | {shown} | {child.get('description', '')} |")

    walk(schema, defaults, "")
    return "\n".join(rows) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("chart")
    parser.add_argument("--out", help="where rendered CqrsApps are written")
    parser.add_argument("--values-table", action="store_true", help="print the README values table and exit")
    args = parser.parse_args()
    if args.values_table:
        sys.stdout.write(values_table(args.chart))
        return 0
    if not args.out:
        parser.error("--out is required")
    os.makedirs(args.out, exist_ok=True)
    failures = 0

    lint = helm.lint(args.chart, strict=True, kube_version="v" + KUBE_VERSION)
    for message in lint.get("messages") or []:
        if message.get("severity", 0) >= 2:
            failures += fail(f"helm lint: {message.get('path')}: {message.get('error')}")
    for error in lint.get("errors") or []:
        failures += fail(f"helm lint: {error}")

    chart = helm.Chart.load(args.chart)
    crd, cr_schema = crd_schema(args.chart)
    failures += validate_objects([crd], cr_schema, args.out, "crd")

    scenarios = {"default": {}}
    for path in sorted(glob.glob(os.path.join(args.chart, "ci", "*-values.yaml"))):
        scenarios[os.path.basename(path)[: -len("-values.yaml")]] = yaml.safe_load(open(path)) or {}
    for scenario, values in scenarios.items():
        lint = helm.lint(args.chart, values, strict=True, kube_version="v" + KUBE_VERSION)
        for message in lint.get("messages") or []:
            if message.get("severity", 0) >= 2:
                failures += fail(f"helm lint ({scenario}): {message.get('path')}: {message.get('error')}")
        try:
            rendered = chart.render(values, name="cqrs", namespace="cqrs-system", is_install=True)
        except helm.HelmError as e:
            failures += fail(f"{scenario}: render: {e}")
            continue
        objects = []
        for path, text in sorted(rendered.items()):
            if path.endswith("NOTES.txt"):
                if "kubectl get cqrsapps" not in text:
                    failures += fail(f"{scenario}: NOTES.txt does not show `kubectl get cqrsapps`")
                continue
            objects.extend(documents(text))
        kinds = sorted({o["kind"] for o in objects})
        failures += check_service_monitors(objects, scenario)
        if values.get("replicaCount", 1) > 1 and "PodDisruptionBudget" not in kinds:
            failures += fail(f"{scenario}: replicaCount > 1 renders no PodDisruptionBudget")
        problems = validate_objects(objects, cr_schema, args.out, scenario)
        failures += problems
        if not problems:
            print(f"ok: {scenario}: {len(objects)} objects valid for Kubernetes {KUBE_VERSION} ({', '.join(kinds)})")

    bad_values = [
        ({"replicaCount": "two"}, "replicaCount"),
        ({"unknownKey": 1}, "unknownKey"),
        ({"image": {"tagg": "v1"}}, "tagg"),
        ({"demo": {"app": {"minReplicas": -1}}}, "minReplicas"),
        ({"logFormat": "xml"}, "logFormat"),
        ({"azureWorkloadIdentity": {"clientId": "not-a-guid"}}, "clientId"),
        ({"watchNamespace": "Not_A_Namespace"}, "watchNamespace"),
        # Two operators without a leader would fight: the chart refuses to render.
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "leaderElection"),
    ]
    for values, key in bad_values:
        try:
            chart.render(values, name="cqrs", namespace="cqrs-system", is_install=True)
            failures += fail(f"values {values} rendered, but the schema should reject them")
        except helm.HelmError as e:
            if key not in str(e):
                failures += fail(f"values {values} were rejected, but the error does not name {key!r}: {e}")
    print(f"ok: {len(bad_values)} kinds of bad values are rejected by values.schema.json or the templates, naming the key")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
