//! The OpenAPI document is exact (SPEC 4): every constraint it states for an input is the one the
//! server enforces, checked in both directions on generated and hand-picked values, and every
//! answer the server gives is declared for its operation, error bodies in the declared shape.
//! The fuzzer of the test command (`scripts/fuzz_api.py`) explores the rest.

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use regex::Regex;
use serde_json::{Value, json};

use crate::auth::{SECRET, hs256, now};
use crate::support::{TestApp, spawn_app, spawn_app_with};

/// The refusal of a well-formed `before` that names no message: a state the document can only
/// describe (`scripts/fuzz_api_hooks.py` knows it too).
const UNKNOWN_CURSOR: &str = "before names no message of this room";

struct Doc(Value);

impl Doc {
    async fn of(app: &TestApp) -> Doc {
        let (status, doc) = app.get("/api/openapi.json").await;
        assert_eq!(status, 200);
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        Doc(doc)
    }

    /// `v` with its `$ref` (and a single-element `allOf`) followed.
    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        if let Some(target) = v["$ref"].as_str() {
            let found = self.0.pointer(&target[1..]);
            return self.resolve(found.unwrap_or_else(|| panic!("dangling {target}")));
        }
        match v["allOf"].as_array().map(Vec::as_slice) {
            Some([only]) => self.resolve(only),
            _ => v,
        }
    }

    fn operation(&self, method: &str, path: &str) -> &Value {
        let op = &self.0["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        op
    }

    fn parameter(&self, method: &str, path: &str, name: &str) -> &Value {
        self.operation(method, path)["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| self.resolve(p))
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path}: no parameter {name}"))
    }

    fn schema(&self, v: &Value) -> Value {
        self.resolve(&self.resolve(v)["schema"]).clone()
    }

    /// Asserts that `status` is declared for the operation and that `body` has its shape: an
    /// error is `{"success": false, "error": {code, message}}` with a declared code; a success
    /// carries the required fields of the declared schema.
    fn assert_declared(&self, method: &str, path: &str, status: u16, body: &Value) {
        let response = &self.operation(method, path)["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {path} answered {status}, which the document does not declare: {body}"
        );
        let schema = self.resolve(&self.resolve(response)["content"]["application/json"]["schema"]);
        for key in schema["required"].as_array().into_iter().flatten() {
            let key = key.as_str().unwrap();
            assert!(
                body.get(key).is_some(),
                "{method} {path} {status}: no {key} in {body}"
            );
        }
        if status >= 400 {
            assert_eq!(body["success"], false, "{body}");
            let codes = &schema["properties"]["error"]["properties"]["code"]["enum"];
            let code = &body["error"]["code"];
            assert!(
                codes.as_array().unwrap().contains(code),
                "{code} not declared"
            );
            assert!(body["error"]["message"].is_string(), "{body}");
        }
    }
}

/// Whether a string schema (`minLength`, `maxLength` in characters, `pattern`) admits `s`.
fn admits(schema: &Value, s: &str) -> bool {
    let chars = s.chars().count() as u64;
    let pattern = schema["pattern"]
        .as_str()
        .expect("the schema states a pattern");
    schema["minLength"].as_u64().is_none_or(|min| chars >= min)
        && schema["maxLength"].as_u64().is_none_or(|max| chars <= max)
        && Regex::new(pattern).unwrap().is_match(s)
}

/// `n` strings of the regular expression `regex` (anchors dropped), the same on every run.
fn samples(regex: &str, n: usize) -> Vec<String> {
    let regex = regex.trim_start_matches('^').trim_end_matches('$');
    let strategy = proptest::string::string_regex(regex).expect("a generator for the pattern");
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// Values for a string schema: hand-picked ones, values of its pattern (within its lengths)
/// and arbitrary text.
fn candidates(schema: &Value, picked: &[&str]) -> Vec<String> {
    let max = schema["maxLength"].as_u64().unwrap_or(u64::MAX) as usize;
    let mut all: Vec<String> = picked.iter().map(|s| s.to_string()).collect();
    all.extend(
        samples(schema["pattern"].as_str().unwrap(), 40)
            .into_iter()
            .filter(|s| s.chars().count() <= max),
    );
    all.extend(samples("(?s).{0,140}", 40));
    all
}

/// The values tried must include many the server accepts and many it refuses.
fn assert_both_ways(accepted: &[bool]) {
    let yes = accepted.iter().filter(|a| **a).count();
    let no = accepted.len() - yes;
    assert!(yes >= 10 && no >= 10, "{yes} accepted, {no} refused");
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn room_ids_the_document_admits_are_those_the_server_accepts() {
    let app = spawn_app().await;
    let doc = Doc::of(&app).await;
    let long = "r".repeat(128);
    let too_long = "r".repeat(129);
    let picked = [
        "room-1",
        "a:b.c@d_e-f",
        &long,
        &too_long,
        "has space",
        "é",
        "a/b",
        "a\nb",
        "a#b",
        "%",
    ];
    for path in ["/api/chat/{roomId}/history", "/api/chat/rooms/{roomId}"] {
        let schema = doc.schema(doc.parameter("get", path, "roomId"));
        assert_eq!(
            (&schema["minLength"], &schema["maxLength"]),
            (&json!(1), &json!(128))
        );
        // A URL cannot carry "." or ".." as a path segment (clients remove dot segments).
        let mut verdicts = Vec::new();
        for id in candidates(&schema, &picked)
            .into_iter()
            .filter(|id| !id.is_empty() && id != "." && id != "..")
        {
            let (status, body) = app.get(&path.replace("{roomId}", &encode(&id))).await;
            doc.assert_declared("get", path, status, &body);
            let accepted = status != 400;
            assert_eq!(
                admits(&schema, &id),
                accepted,
                "{path} {id:?}: {status} {body}"
            );
            verdicts.push(accepted);
        }
        assert_both_ways(&verdicts);
    }
}

#[tokio::test]
async fn the_history_cursor_and_limit_are_those_of_the_document() {
    let app = spawn_app().await;
    let doc = Doc::of(&app).await;
    let path = "/api/chat/{roomId}/history";
    let id = app.member("a", "cursor").await.say("cursor", "hi").await["messageId"]
        .as_str()
        .unwrap()
        .to_string();
    let message_id = &doc.0["components"]["schemas"]["MessageId"];
    assert!(admits(message_id, &id), "served ids match MessageId: {id}");

    let before = doc.schema(doc.parameter("get", path, "before"));
    let upper = id.to_uppercase();
    let picked = [
        &id,
        &upper,
        "",
        "zzz",
        "0123456789abcdef0123456",
        "0123456789abcdef012345678",
    ];
    let mut verdicts = Vec::new();
    for cursor in candidates(&before, &picked) {
        let url = format!("/api/chat/cursor/history?before={}", encode(&cursor));
        let (status, body) = app.get(&url).await;
        doc.assert_declared("get", path, status, &body);
        // Well formed but naming no message: refused for what is stored, not for its form.
        let well_formed = status == 200 || body["error"]["message"] == UNKNOWN_CURSOR;
        assert_eq!(
            admits(&before, &cursor),
            well_formed,
            "{cursor:?}: {status} {body}"
        );
        verdicts.push(well_formed);
    }
    assert_both_ways(&verdicts);

    let limit = doc.schema(doc.parameter("get", path, "limit"));
    assert_eq!(
        (&limit["minimum"], &limit["maximum"]),
        (&json!(1), &json!(1000))
    );
    for (raw, ok) in [
        ("1", true),
        ("1000", true),
        ("0", false),
        ("1001", false),
        ("x", false),
    ] {
        let (status, body) = app
            .get(&format!("/api/chat/cursor/history?limit={raw}"))
            .await;
        doc.assert_declared("get", path, status, &body);
        assert_eq!(status == 200, ok, "limit={raw}: {body}");
    }
}

#[tokio::test]
async fn participants_the_document_admits_are_those_the_server_accepts() {
    let app = spawn_app().await;
    let doc = Doc::of(&app).await;
    let body_schema =
        doc.resolve(
            &doc.operation("post", "/api/chat/rooms")["requestBody"]["content"]["application/json"]
                ["schema"],
        );
    let items = doc
        .resolve(&body_schema["properties"]["participants"]["items"])
        .clone();
    let long = "u".repeat(128);
    let too_long = "u".repeat(129);
    let picked = [
        "bob",
        "John Doe",
        &long,
        &too_long,
        "",
        " ",
        "\u{a0}",
        "\u{3000}",
        "x\u{3000}",
        "a\tb",
        "\u{7f}",
        "\u{85}",
        "\u{feff}",
        "é",
    ];
    let mut verdicts = Vec::new();
    for user in candidates(&items, &picked) {
        let room = json!({"type": "group", "participants": ["alice", user]});
        let (status, body) = app
            .post("/api/chat/rooms", &room, &[("x-user-id", "alice")])
            .await;
        doc.assert_declared("post", "/api/chat/rooms", status, &body);
        assert_eq!(
            admits(&items, &user),
            status == 201,
            "{user:?}: {status} {body}"
        );
        verdicts.push(status == 201);
    }
    assert_both_ways(&verdicts);
}

#[tokio::test]
async fn every_answer_is_declared_for_its_operation() {
    let app = spawn_app_with(&["--max-payload-bytes", "2048"]).await;
    let doc = Doc::of(&app).await;
    let alice = [("x-user-id", "alice")];
    let eve = [("x-user-id", "eve")];
    let rooms = "/api/chat/rooms";
    let direct = |a: &str, b: &str| json!({"type": "direct", "participants": [a, b]});
    let (status, created) = app.post(rooms, &direct("alice", "bob"), &alice).await;
    assert_eq!(status, 201);
    doc.assert_declared("post", rooms, status, &created);
    let id = created["room"]["roomId"].as_str().unwrap().to_string();
    let again = app
        .post(rooms, &direct("bob", "alice"), &[("x-user-id", "bob")])
        .await;
    assert_eq!(again.0, 200);
    let mut answers = vec![("post", rooms, again)];
    for (body, headers, expected) in [
        (
            json!({"type": "group", "participants": ["alice"]}),
            &[][..],
            401,
        ),
        (
            json!({"type": "group", "participants": ["alice"]}),
            &eve[..],
            403,
        ),
        (
            json!({"type": "direct", "participants": ["alice", "bob", "alice"]}),
            &alice[..],
            400,
        ),
        (
            json!({"type": "group", "participants": ["alice", ""]}),
            &alice[..],
            400,
        ),
        (
            json!({"type": "group", "participants": ["alice"], "roomId": id}),
            &alice[..],
            400,
        ),
        (
            json!({"type": "group", "participants": ["alice"], "pad": "x".repeat(4096)}),
            &alice[..],
            413,
        ),
    ] {
        let (status, answer) = app.post(rooms, &body, headers).await;
        assert_eq!(status, expected, "{body}: {answer}");
        answers.push(("post", rooms, (status, answer)));
    }

    let room = "/api/chat/rooms/{roomId}";
    let history = "/api/chat/{roomId}/history";
    for (path, url, headers, expected) in [
        (rooms, rooms.to_string(), &alice[..], 200),
        (rooms, rooms.to_string(), &[][..], 401),
        (room, format!("{rooms}/{id}"), &alice[..], 200),
        (room, format!("{rooms}/{id}"), &eve[..], 403),
        (room, format!("{rooms}/{id}"), &[][..], 403),
        (room, format!("{rooms}/nope"), &alice[..], 404),
        (room, format!("{rooms}/bad%20room"), &alice[..], 400),
        (history, format!("/api/chat/{id}/history"), &alice[..], 200),
        (history, format!("/api/chat/{id}/history"), &eve[..], 403),
        (
            history,
            "/api/chat/open/history?limit=0".into(),
            &[][..],
            400,
        ),
        (
            history,
            "/api/chat/open/history?before=zz".into(),
            &[][..],
            400,
        ),
        (
            history,
            "/api/chat/open/history".into(),
            &[("x-user-id", " ")][..],
            400,
        ),
    ] {
        let (status, answer) = app.get_with(&url, headers).await;
        assert_eq!(status, expected, "{url}: {answer}");
        answers.push(("get", path, (status, answer)));
    }
    // An identity header that is not text is refused, not taken for an anonymous caller.
    let res = reqwest::Client::new()
        .get(app.url("/api/chat/open/history"))
        .header(
            "x-user-id",
            reqwest::header::HeaderValue::from_bytes(b"\xe9").unwrap(),
        )
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    assert_eq!(status, 400);
    answers.push(("get", history, (status, res.json().await.unwrap())));

    for (method, path, (status, body)) in answers {
        doc.assert_declared(method, path, status, &body);
    }
}

#[tokio::test]
async fn each_auth_mode_serves_its_own_way_of_identifying_callers() {
    let header_parameters = |doc: &Doc| -> Vec<String> {
        let mut names = Vec::new();
        for path in doc.0["paths"].as_object().unwrap().values() {
            for op in path.as_object().unwrap().values() {
                for p in op["parameters"].as_array().into_iter().flatten() {
                    let p = doc.resolve(p);
                    if p["in"] == "header" {
                        names.push(format!("{}{}", p["name"].as_str().unwrap(), p["required"]));
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        names
    };

    let none = spawn_app().await;
    let doc = Doc::of(&none).await;
    assert_eq!(doc.0.get("security"), None);
    assert_eq!(
        header_parameters(&doc),
        ["X-User-Idfalse", "X-User-Idtrue", "X-Usernamefalse"]
    );
    let required = doc.resolve(&doc.operation("get", "/api/chat/rooms")["parameters"][0]);
    assert_eq!(
        (&required["name"], &required["required"]),
        (&json!("X-User-Id"), &json!(true))
    );

    let jwt = spawn_app_with(&["--auth-mode", "jwt", "--jwt-secret", SECRET]).await;
    let doc = Doc::of(&jwt).await;
    assert_eq!(doc.0["security"], json!([{"bearer": []}]));
    assert!(header_parameters(&doc).is_empty());
    let token = hs256(json!({"sub": "alice", "exp": now() + 600}), SECRET);
    let bearer = format!("Bearer {token}");
    for (url, path) in [
        ("/api/chat/rooms", "/api/chat/rooms"),
        ("/api/chat/rooms/nope", "/api/chat/rooms/{roomId}"),
        ("/api/chat/open/history", "/api/chat/{roomId}/history"),
    ] {
        for headers in [
            &[][..],
            &[("x-user-id", "alice")][..],
            &[("authorization", "Bearer x")][..],
        ] {
            let (status, body) = jwt.get_with(url, headers).await;
            assert_eq!(status, 401, "{url} {headers:?}: {body}");
            doc.assert_declared("get", path, status, &body);
        }
        let (status, body) = jwt.get_with(url, &[("authorization", &bearer)]).await;
        assert_ne!(status, 401, "{url}: {body}");
        doc.assert_declared("get", path, status, &body);
    }
}

#[tokio::test]
async fn the_document_is_served_at_both_paths_and_lists_every_route() {
    let app = spawn_app().await;
    let doc = Doc::of(&app).await;
    let (status, alias) = app.get("/openapi.json").await;
    assert_eq!((status, &alias), (200, &doc.0));
    let mut paths: Vec<&str> = doc.0["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/api/chat/rooms",
            "/api/chat/rooms/{roomId}",
            "/api/chat/{roomId}/history",
            "/api/chat/{roomId}/messages/{messageId}",
            "/api/chat/{roomId}/messages/{messageId}/reactions/{emoji}",
            "/api/chat/{roomId}/read",
            "/api/chat/{roomId}/receipts",
            "/api/openapi.json",
            "/health",
            "/metrics",
            "/ready",
        ]
    );
}
