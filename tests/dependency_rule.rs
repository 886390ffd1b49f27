//! The dependency rule of `src/lib.rs` and DESIGN, checked on the source text so that it cannot
//! silently rot: every `crate::` path and every external crate a file names is held against
//! what its layer may use. Comments are skipped (they may name anything).
//!
//! - `domain/` names nothing of the crate but itself, and no IO crate.
//! - `metrics/` names nothing of the crate but itself (every layer counts into it).
//! - `chat/` uses `domain` and the port traits, never an adapter, `transport` or `app`, and no
//!   transport or adapter crate. `migrate/` (the operator's data use cases) the same, and never
//!   `chat`.
//! - Adapters (`store`, `bus`, `presence`, `events`, `auth`, `fleet`) never name `chat`, `transport` or
//!   `app`, nor another port's adapters.
//! - `transport/` never names a concrete adapter or `app`.
//! - Each IO crate appears only in its own adapter (axum/tungstenite only in `transport/` and
//!   the composition root).

use std::path::{Path, PathBuf};

use regex::Regex;

/// Adapter modules: (port, adapter file or folder).
const ADAPTERS: &[&str] = &[
    "store::embedded",
    "store::postgres",
    "store::mongo",
    "store::redis_cache",
    "bus::local",
    "bus::redis",
    "presence::memory",
    "presence::redis",
    "auth::none",
    "auth::jwt",
    "auth::grpc",
    "events::amqp",
    "events::relay",
    "fleet::redis",
];

/// IO crates and where they may appear (path prefixes under `src/`).
const CRATES: &[(&str, &[&str])] = &[
    ("axum", &["transport/", "app.rs", "main.rs", "telemetry.rs"]),
    ("tokio_tungstenite", &["transport/", "bin/"]),
    ("tungstenite", &["transport/", "bin/"]),
    (
        "sqlx",
        &[
            "store/embedded/",
            "store/postgres/",
            "store/rows.rs",
            "store/sql_reads.rs",
            "store/batch/",
        ],
    ),
    ("rusqlite", &["store/embedded/"]),
    ("mongodb", &["store/mongo/"]),
    (
        "redis",
        &[
            "store/redis_cache.rs",
            "bus/redis.rs",
            "presence/redis.rs",
            "fleet/redis.rs",
            "redis_link.rs",
            "app.rs",
        ],
    ),
    ("lapin", &["events/amqp.rs"]),
    ("indicatif", &["commands.rs"]),
    ("tonic", &["auth/grpc.rs", "app.rs"]),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without comments (line comments and doc comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal (a URL) is rare in these paths; good enough.
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every violation of the rule in the crate's sources.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let crate_path = Regex::new(r"crate::([a-z_]+)(?:::([a-z_]+))?").unwrap();
    let crate_uses: Vec<(&str, &[&str], Regex)> = CRATES
        .iter()
        .map(|(name, allowed)| {
            let used = Regex::new(&format!(r"(^|[^:\w]){name}::")).unwrap();
            (*name, *allowed, used)
        })
        .collect();
    let mut bad = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = code(&std::fs::read_to_string(&file).unwrap());
        let layer = rel.split('/').next().unwrap().trim_end_matches(".rs");
        for c in crate_path.captures_iter(&text) {
            let module = &c[1];
            let sub = c.get(2).map(|m| m.as_str()).unwrap_or("");
            let full = format!("{module}::{sub}");
            let is_adapter = ADAPTERS.iter().any(|a| full == *a);
            let why = match layer {
                "domain" if module != "domain" => Some("domain names nothing"),
                "metrics" if module != "metrics" => Some("metrics names nothing"),
                "chat" | "migrate" if is_adapter => Some("chat and migrate never name an adapter"),
                "migrate" if matches!(module, "chat" | "transport" | "app" | "config") => {
                    Some("migrate never names chat, transport, app or config")
                }
                "chat" if matches!(module, "transport" | "app" | "config") => {
                    Some("chat never names transport, app or config")
                }
                "store" | "bus" | "presence" | "events" | "auth" | "fleet"
                    if matches!(module, "chat" | "transport" | "app") =>
                {
                    Some("adapters never name chat, transport or app")
                }
                "store" | "bus" | "presence" | "events" | "auth" | "fleet"
                    if is_adapter && module != layer =>
                {
                    Some("an adapter never names another port's adapter")
                }
                "transport" if is_adapter || module == "app" => {
                    Some("transport never names an adapter or app")
                }
                _ => None,
            };
            if let Some(why) = why {
                bad.push(format!("{rel}: crate::{full}: {why}"));
            }
        }
        for (name, allowed, used) in &crate_uses {
            if used.is_match(&text) && !allowed.iter().any(|p| rel.starts_with(p)) {
                bad.push(format!(
                    "{rel}: names the crate `{name}` (allowed in {allowed:?})"
                ));
            }
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

#[test]
fn the_dependency_rule_holds_in_src() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "dependency rule broken:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_sees_a_violation() {
    // The checker itself can fail: a chat file naming an adapter and axum, a domain file naming
    // chat, and a store adapter naming transport.
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "chat/x.rs",
        "use crate::store::embedded::EmbeddedStore;\nuse axum::Router;\n// crate::app in a comment is fine\n",
    );
    write("domain/y.rs", "use crate::chat::ChatService;\n");
    write(
        "store/mongo/z.rs",
        "fn f() { crate::transport::dispatch(); }\n",
    );
    write(
        "chat/ok.rs",
        "use crate::store::MessageStore;\nuse crate::domain::RoomId;\n",
    );
    let bad = violations(dir.path());
    assert_eq!(bad.len(), 4, "{bad:#?}");
    assert!(
        bad.iter()
            .any(|b| b.starts_with("chat/x.rs: crate::store::embedded"))
    );
    assert!(
        bad.iter()
            .any(|b| b.starts_with("chat/x.rs: names the crate `axum`"))
    );
    assert!(bad.iter().any(|b| b.starts_with("domain/y.rs")));
    assert!(bad.iter().any(|b| b.starts_with("store/mongo/z.rs")));
}
