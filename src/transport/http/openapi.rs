//! The OpenAPI document of the REST API (`openapi.json` beside this file). It states every
//! constraint the handlers enforce and every status they answer (`tests/api/openapi.rs`, and
//! the fuzzer of the test command: `scripts/fuzz_api.py`), so how a caller identifies itself is
//! stated exactly too: the file describes both ways, and an instance serves only its own. With
//! a token-checking `AUTH_MODE` (`jwt`, `grpc`) that is the `bearer` security scheme; with
//! `AUTH_MODE=none` it is the `X-User-Id` / `X-Username` header parameters, which are claims
//! the server trusts rather than credentials, so that variant declares no security at all.
//! `GET /metrics` has its own scheme, `metricsToken`, declared only by an instance that sets
//! `METRICS_TOKEN` (else the operation declares no security and no 401).

use serde_json::Value;

const SOURCE: &str = include_str!("openapi.json");

/// The header parameters of `AUTH_MODE=none` (under `components/parameters`).
const IDENTITY_HEADERS: [&str; 3] = ["XUserIdRequired", "XUserId", "XUsername"];

/// The document an instance serves: `requires_token` is its authenticator's, `metrics_token`
/// whether it sets `METRICS_TOKEN`.
pub fn document(requires_token: bool, metrics_token: bool) -> String {
    let mut doc: Value = serde_json::from_str(SOURCE).expect("openapi.json is valid JSON");
    if requires_token {
        let refs: Vec<String> = IDENTITY_HEADERS
            .iter()
            .map(|name| format!("#/components/parameters/{name}"))
            .collect();
        for operation in operations(&mut doc) {
            if let Some(Value::Array(parameters)) = operation.get_mut("parameters") {
                parameters.retain(|p| !refs.iter().any(|r| p["$ref"] == r.as_str()));
                if parameters.is_empty() {
                    operation.as_object_mut().map(|o| o.remove("parameters"));
                }
            }
        }
        if let Some(Value::Object(parameters)) = doc.pointer_mut("/components/parameters") {
            for name in IDENTITY_HEADERS {
                parameters.remove(name);
            }
        }
    } else {
        doc.as_object_mut().map(|o| o.remove("security"));
        for operation in operations(&mut doc) {
            // Every requirement but the metrics token's goes (it is handled below).
            let metrics = operation["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("metricsToken").is_some()));
            if !metrics {
                operation.as_object_mut().map(|o| o.remove("security"));
            }
        }
        if let Some(Value::Object(schemes)) = doc.pointer_mut("/components/securitySchemes") {
            schemes.remove("bearer");
        }
    }
    if !metrics_token {
        if let Some(Value::Object(metrics)) = doc.pointer_mut("/paths/~1metrics/get") {
            metrics.insert("security".into(), Value::Array(Vec::new()));
            if let Some(Value::Object(responses)) = metrics.get_mut("responses") {
                responses.remove("401");
            }
        }
        if let Some(Value::Object(schemes)) = doc.pointer_mut("/components/securitySchemes") {
            schemes.remove("metricsToken");
        }
    }
    if doc
        .pointer("/components/securitySchemes")
        .and_then(Value::as_object)
        .is_some_and(|schemes| schemes.is_empty())
        && let Some(Value::Object(components)) = doc.get_mut("components")
    {
        components.remove("securitySchemes");
    }
    serde_json::to_string_pretty(&doc).expect("a JSON value serializes")
}

fn operations(doc: &mut Value) -> impl Iterator<Item = &mut Value> {
    doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|path| path.values_mut())
}
