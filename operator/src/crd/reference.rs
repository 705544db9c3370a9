//! The CRD field reference in Markdown, generated from the same schema as the CRD (so the
//! README cannot drift from the types; `cargo xtask test` checks it).

use kube::CustomResourceExt;
use serde_json::Value;

use super::CqrsApp;

/// Fields whose schema is a standard Kubernetes type: documented by name, not expanded.
const KUBERNETES_TYPES: &[(&str, &str)] = &[
    (
        "env",
        "list of Kubernetes [EnvVar](https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#environment-variables)",
    ),
    (
        "resources",
        "Kubernetes [ResourceRequirements](https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#resources)",
    ),
    (
        "conditions",
        "list of Kubernetes [Condition](https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/object-meta/)",
    ),
];

/// A Markdown table of every field under `spec` and `status`.
pub fn markdown() -> String {
    let crd = CqrsApp::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let mut out = String::from("| Field | Type | Default | Description |\n|---|---|---|---|\n");
    for root in ["spec", "status"] {
        if let Some(node) = schema.pointer(&format!("/properties/{root}")) {
            walk(root, node, &mut out);
        }
    }
    out
}

fn walk(path: &str, node: &Value, out: &mut String) {
    let Some(props) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = node
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, child) in props {
        let field = format!("{path}.{name}");
        let known = KUBERNETES_TYPES
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t);
        let (ty, items) = type_of(child);
        let ty = known.map(str::to_string).unwrap_or(ty);
        let default = child
            .get("default")
            .map(|d| format!("`{d}`"))
            .unwrap_or_default();
        let mut description = first_paragraph(
            child
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or(""),
        );
        if required.contains(&name.as_str()) {
            description = format!("**Required.** {description}");
        }
        if let Some(constraints) = constraints(child) {
            description.push_str(&format!(" ({constraints})"));
        }
        out.push_str(&format!(
            "| `{field}` | {ty} | {default} | {} |\n",
            description.replace('|', "\\|")
        ));
        if known.is_some() {
            continue;
        }
        match items {
            Some(item) => walk(&format!("{field}[]"), item, out),
            None => walk(&field, child, out),
        }
    }
}

fn type_of(node: &Value) -> (String, Option<&Value>) {
    let ty = node.get("type").and_then(Value::as_str).unwrap_or("object");
    if ty == "array" {
        let item = node.get("items");
        let inner = item
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("object");
        let has_props = item.is_some_and(|i| i.get("properties").is_some());
        return (
            format!("list of {inner}"),
            has_props.then_some(item).flatten(),
        );
    }
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values
            .iter()
            .filter_map(Value::as_str)
            .map(|v| format!("`{v}`"))
            .collect();
        return (values.join(" \\| "), None);
    }
    (ty.to_string(), None)
}

fn constraints(node: &Value) -> Option<String> {
    let mut parts = Vec::new();
    let num = |k: &str| node.get(k).and_then(Value::as_f64).map(|v| v as i64);
    match (num("minimum"), num("maximum")) {
        (Some(lo), Some(hi)) => parts.push(format!("{lo}..{hi}")),
        (Some(lo), None) => parts.push(format!(">= {lo}")),
        (None, Some(hi)) => parts.push(format!("<= {hi}")),
        _ => {}
    }
    match (num("minLength"), num("maxLength")) {
        (Some(lo), Some(hi)) => parts.push(format!("{lo}-{hi} characters")),
        (None, Some(hi)) => parts.push(format!("at most {hi} characters")),
        (Some(lo), None) if lo > 0 => parts.push(format!("at least {lo} character(s)")),
        _ => {}
    }
    if let Some(max) = num("maxItems") {
        parts.push(format!("at most {max} items"));
    }
    if let Some(pattern) = node.get("pattern").and_then(Value::as_str) {
        parts.push(format!("pattern `{pattern}`"));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn first_paragraph(text: &str) -> String {
    text.split("\n\n")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_nested_fields_with_defaults_and_constraints() {
        let md = markdown();
        assert!(
            md.contains("| `spec.workers[].scaling.pollingInterval` | integer | `5` |"),
            "{md}"
        );
        assert!(
            md.contains("| `spec.queues[].name` | string |  | **Required.**"),
            "{md}"
        );
        assert!(md.contains("3-56 characters"), "{md}");
        assert!(
            md.contains("| `spec.deletionPolicy` | `Retain` \\| `Delete` | `\"Retain\"` |"),
            "{md}"
        );
        assert!(
            md.contains("| `status.workers[].lastScaleReason` |"),
            "{md}"
        );
        assert!(
            !md.contains("spec.web.env[].valueFrom"),
            "Kubernetes types are not expanded"
        );
    }
}
