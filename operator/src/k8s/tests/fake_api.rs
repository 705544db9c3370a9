//! A small in-memory Kubernetes API behind kube's `tower-test` mock service: it stores the
//! objects the operator writes, answers reads from them, and records every request (method,
//! path, content type, body) so tests can assert exactly what was called.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request the operator made.
#[derive(Clone, Debug)]
pub struct Call {
    /// HTTP method.
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// The query string.
    pub query: String,
    /// Content type of the body.
    pub content_type: String,
    /// The body, parsed as JSON.
    pub body: Option<Value>,
}

impl Call {
    /// `METHOD path`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    /// What each field manager applied (or, as `update:<manager>`, patched) to each path, in
    /// order: the object is their merge, so a field no manager sets is gone, as with
    /// server-side apply.
    applied: BTreeMap<String, Vec<(String, Value)>>,
    calls: Vec<Call>,
    /// Paths whose PATCH answers with this HTTP status (to inject failures).
    failing: BTreeMap<String, u16>,
}

/// The fake API server.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    /// A client talking to a fresh fake API, and the API to inspect.
    pub fn start() -> (Client, FakeApi) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = FakeApi::default();
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let response = server.handle(request).await;
                respond.send_response(response);
            }
        });
        (Client::new(service, "default"), api)
    }

    /// Stores an object at its API path.
    pub fn put(&self, path: &str, object: Value) {
        self.state
            .lock()
            .unwrap()
            .objects
            .insert(path.to_string(), object);
    }

    /// The object stored at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// `METHOD path` of every call, except event posts.
    pub fn call_lines(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|c| !c.path.contains("/events"))
            .map(Call::line)
            .collect()
    }

    /// The events posted, as (type, reason, note).
    pub fn events(&self) -> Vec<(String, String, String)> {
        self.calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path.contains("/events"))
            .filter_map(|c| c.body.as_ref())
            .map(|b| {
                let s = |k: &str| {
                    b.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                (s("type"), s("reason"), s("note"))
            })
            .collect()
    }

    /// Makes PATCHes of `path` fail with `status`.
    pub fn fail_patches(&self, path: &str, status: u16) {
        self.state
            .lock()
            .unwrap()
            .failing
            .insert(path.to_string(), status);
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body: Option<Value> = if bytes.is_empty() {
            None
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        let call = Call {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            content_type: parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            body,
        };
        let mut state = self.state.lock().unwrap();
        state.calls.push(call.clone());
        let (status, value) = respond(&mut state, &call);
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&value).unwrap()))
            .unwrap()
    }
}

fn status(code: u16, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}),
    )
}

fn respond(state: &mut State, call: &Call) -> (StatusCode, Value) {
    let path = call.path.as_str();
    if let Some(code) = state
        .failing
        .get(path)
        .copied()
        .filter(|_| call.method == "PATCH")
    {
        return status(code, "InternalError", "injected failure");
    }
    match call.method.as_str() {
        "GET" if path.ends_with("/scale") => {
            let base = path.trim_end_matches("/scale");
            match state.objects.get(base) {
                Some(d) => (StatusCode::OK, scale(d)),
                None => status(404, "NotFound", "deployment not found"),
            }
        }
        "GET" => match state.objects.get(path) {
            Some(object) => (StatusCode::OK, object.clone()),
            None if is_collection(path) => (StatusCode::OK, list(state, path, &call.query)),
            None => status(404, "NotFound", &format!("{path} not found")),
        },
        "POST" => (
            StatusCode::CREATED,
            call.body.clone().unwrap_or(Value::Null),
        ),
        "DELETE" => match state.objects.remove(path) {
            Some(_) => (
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            ),
            None => status(404, "NotFound", "not found"),
        },
        "PATCH" => patch(state, call),
        _ => status(405, "MethodNotAllowed", "unsupported"),
    }
}

fn is_collection(path: &str) -> bool {
    // .../namespaces/<ns>/<plural> has an odd number of segments after the group/version.
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    segments
        .iter()
        .position(|s| *s == "namespaces")
        .is_some_and(|i| segments.len() == i + 3)
}

fn list(state: &State, path: &str, query: &str) -> Value {
    let selector = query
        .split('&')
        .find_map(|p| p.strip_prefix("labelSelector="))
        .map(|s| s.replace("%3D", "=").replace("%2F", "/"))
        .unwrap_or_default();
    let (key, value) = selector.split_once('=').unwrap_or(("", ""));
    let items: Vec<Value> = state
        .objects
        .iter()
        .filter(|(p, _)| p.starts_with(&format!("{path}/")) && !p[path.len() + 1..].contains('/'))
        .map(|(_, o)| o.clone())
        .filter(|o| key.is_empty() || o.pointer(&format!("/metadata/labels/{}", key.replace('/', "~1"))).and_then(Value::as_str) == Some(value))
        .map(|o| json!({"apiVersion": o["apiVersion"], "kind": o["kind"], "metadata": o["metadata"]}))
        .collect();
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "1"}, "items": items})
}

fn scale(deployment: &Value) -> Value {
    let replicas = deployment
        .pointer("/spec/replicas")
        .cloned()
        .unwrap_or(json!(1));
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": deployment["metadata"]["name"], "namespace": deployment["metadata"]["namespace"]},
        "spec": {"replicas": replicas}, "status": {"replicas": replicas}
    })
}

fn patch(state: &mut State, call: &Call) -> (StatusCode, Value) {
    let path = call.path.as_str();
    let body = call.body.clone().unwrap_or(Value::Null);
    if let Some(base) = path.strip_suffix("/scale") {
        let Some(deployment) = state.objects.get_mut(base) else {
            return status(404, "NotFound", "deployment not found");
        };
        let replicas = body
            .pointer("/spec/replicas")
            .cloned()
            .unwrap_or(Value::Null);
        deployment["spec"]["replicas"] = replicas.clone();
        let answer = scale(deployment);
        record_update(state, base, call, &json!({"spec": {"replicas": replicas}}));
        return (StatusCode::OK, answer);
    }
    if let Some(base) = path.strip_suffix("/status") {
        let Some(object) = state.objects.get_mut(base) else {
            return status(404, "NotFound", "not found");
        };
        object["status"] = body["status"].clone();
        return (StatusCode::OK, object.clone());
    }
    if call.content_type.starts_with("application/json-patch") {
        let Some(object) = state.objects.get_mut(path) else {
            return status(404, "NotFound", "not found");
        };
        for op in body.as_array().cloned().unwrap_or_default() {
            apply_json_patch_op(object, &op);
        }
        return (StatusCode::OK, object.clone());
    }
    if call.content_type.starts_with("application/merge-patch") {
        let Some(object) = state.objects.get_mut(path) else {
            return status(404, "NotFound", "not found");
        };
        merge(object, &body);
        let answer = object.clone();
        record_update(state, path, call, &body);
        return (StatusCode::OK, answer);
    }
    // Server-side apply: the object is the merge of what every manager applied; a forced apply
    // takes its fields away from the other managers. Server-owned metadata is kept.
    let manager = field_manager(&call.query);
    let existing = state.objects.get(path).cloned();
    let bodies = state.applied.entry(path.to_string()).or_default();
    if call.query.contains("force=true") {
        for (other, applied) in bodies.iter_mut() {
            if *other != manager {
                remove_fields(applied, &body);
            }
        }
    }
    match bodies.iter_mut().find(|(m, _)| *m == manager) {
        Some((_, applied)) => *applied = body,
        None => bodies.push((manager, body)),
    }
    let mut object = Value::Null;
    for (_, applied) in bodies.iter() {
        merge(&mut object, applied);
    }
    object["metadata"]["managedFields"] = Value::Array(
        bodies
            .iter()
            .map(|(m, applied)| json!({"manager": m, "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": fields_v1(applied)}))
            .collect(),
    );
    if let Some(existing) = existing {
        object["metadata"]["uid"] = existing["metadata"]["uid"].clone();
        if object.get("status").is_none() && existing.get("status").is_some() {
            object["status"] = existing["status"].clone();
        }
    } else {
        object["metadata"]["uid"] = json!(format!("uid-{}", state.objects.len()));
    }
    // A Deployment in this fake becomes available at once.
    if object["kind"] == "Deployment" {
        let replicas = object
            .pointer("/spec/replicas")
            .cloned()
            .unwrap_or(json!(1));
        object["status"] =
            json!({"replicas": replicas, "availableReplicas": replicas, "readyReplicas": replicas});
    }
    state.objects.insert(path.to_string(), object.clone());
    (StatusCode::OK, object)
}

fn field_manager(query: &str) -> String {
    query
        .split('&')
        .find_map(|p| p.strip_prefix("fieldManager="))
        .unwrap_or("unknown")
        .to_string()
}

/// Records a non-apply write (merge patch, scale) so later applies keep it.
fn record_update(state: &mut State, path: &str, call: &Call, body: &Value) {
    let manager = format!("update:{}", field_manager(&call.query));
    let bodies = state.applied.entry(path.to_string()).or_default();
    match bodies.iter_mut().find(|(m, _)| *m == manager) {
        Some((_, applied)) => merge(applied, body),
        None => bodies.push((manager, body.clone())),
    }
}

/// Removes from `target` every leaf field `claimed` sets.
fn remove_fields(target: &mut Value, claimed: &Value) {
    let (Value::Object(t), Value::Object(c)) = (target, claimed) else {
        return;
    };
    for (key, value) in c {
        if ["apiVersion", "kind", "metadata"].contains(&key.as_str()) {
            continue;
        }
        match (t.get_mut(key), value) {
            (Some(child @ Value::Object(_)), Value::Object(_)) => remove_fields(child, value),
            (Some(_), _) => {
                t.remove(key);
            }
            (None, _) => {}
        }
    }
}

/// `managedFields[].fieldsV1` of an applied body.
fn fields_v1(body: &Value) -> Value {
    match body {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (format!("f:{k}"), fields_v1(v)))
                .collect(),
        ),
        _ => json!({}),
    }
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn apply_json_patch_op(object: &mut Value, op: &Value) {
    let path = op["path"].as_str().unwrap_or_default();
    match op["op"].as_str() {
        Some("add") if path.ends_with("/-") => {
            let parent = path.trim_end_matches("/-");
            if let Some(Value::Array(items)) = object.pointer_mut(parent) {
                items.push(op["value"].clone());
            }
        }
        Some("add" | "replace") => {
            let (parent, key) = path.rsplit_once('/').unwrap_or(("", path));
            if let Some(Value::Object(map)) = object.pointer_mut(parent) {
                map.insert(key.to_string(), op["value"].clone());
            }
        }
        Some("remove") => {
            let (parent, key) = path.rsplit_once('/').unwrap_or(("", path));
            match object.pointer_mut(parent) {
                Some(Value::Array(items)) => {
                    if let Ok(i) = key.parse::<usize>()
                        && i < items.len()
                    {
                        items.remove(i);
                    }
                }
                Some(Value::Object(map)) => {
                    map.remove(key);
                }
                _ => {}
            }
        }
        _ => {}
    }
}
