//! The configuration's parsing and validation.

use super::*;

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    Config::from_args(std::iter::once("chat-service").chain(args.iter().copied()))
}

#[test]
fn bad_values_name_the_variable() {
    let e = parse(&["--port", "abc"]).unwrap_err().to_string();
    assert!(e.contains("PORT"), "{e}");
    let e = parse(&["--storage", "oracle"]).unwrap_err().to_string();
    assert!(e.contains("STORAGE"), "{e}");
    let e = parse(&["--auth-mode", "magic"]).unwrap_err().to_string();
    assert!(e.contains("AUTH_MODE"), "{e}");
    let e = parse(&["--cors-origin", "not a url"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("CORS_ORIGIN"), "{e}");
    let e = parse(&["--log-format", "xml"]).unwrap_err().to_string();
    assert!(e.contains("LOG_FORMAT"), "{e}");
    let e = parse(&["--embedded-commit-window-us", "10001"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("EMBEDDED_COMMIT_WINDOW_US"), "{e}");
    let c = parse(&["--embedded-commit-window-us", "300"]).unwrap();
    assert_eq!(c.commit_window, Duration::from_micros(300));
    let c = parse(&[]).unwrap();
    assert_eq!(
        c.commit_window,
        Duration::from_micros(DEFAULT_COMMIT_WINDOW_US)
    );
}

#[test]
fn redis_cluster_nodes_select_a_cluster_and_bad_ones_are_named() {
    let c = parse(&[
        "--redis-cluster-nodes",
        "10.0.0.1:7001,10.0.0.2:7002",
        "--redis-password",
        "pw",
    ])
    .unwrap();
    let url = c.redis.unwrap().url;
    assert_eq!(url, "redis+cluster://:pw@10.0.0.1:7001,10.0.0.2:7002");
    assert!(crate::redis_link::Target::parse(&url).unwrap().is_cluster());
    let e = parse(&["--redis-cluster-nodes", "10.0.0.1:notaport"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("REDIS_CLUSTER_NODES"), "{e}");
    let e = parse(&["--redis-url", "redis+cluster:///"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("REDIS_URL") && e.contains("names no node"),
        "{e}"
    );
    let e = parse(&["--redis-url", "http://x"]).unwrap_err().to_string();
    assert!(e.contains("REDIS_URL"), "{e}");
}

#[test]
fn log_format_is_text_unless_json_is_asked_for() {
    assert_eq!(parse(&[]).unwrap().log_format, LogFormat::Text);
    let c = parse(&["--log-format", "json"]).unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
}

#[test]
fn mongodb_uri_alone_selects_mongo() {
    let c = parse(&["--mongodb-uri", "mongodb://x/db"]).unwrap();
    assert_eq!(c.storage, StorageKind::Mongo);
    assert_eq!(parse(&[]).unwrap().storage, StorageKind::Embedded);
}

#[test]
fn debug_output_redacts_secrets() {
    let c = parse(&[
        "--redis-url",
        "redis://:hunter2@r:6379",
        "--auth-mode",
        "jwt",
        "--jwt-secret",
        "s3cr3t-value",
        "--rabbitmq-url",
        "amqp://guest:pa55@mq:5672",
        "--metrics-token",
        "m3trics-token",
        "--admin-token",
        "adm1n-token",
    ])
    .unwrap();
    let shown = format!("{c:?}");
    for secret in [
        "hunter2",
        "s3cr3t-value",
        "pa55",
        "m3trics-token",
        "adm1n-token",
    ] {
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
    }
    assert!(shown.contains("redis://:***@r:6379"), "{shown}");
    let cli = Cli::try_parse_from([
        "chat-service",
        "--jwt-secret",
        "s3cr3t-value",
        "--admin-token",
        "adm1n-token",
    ])
    .unwrap();
    let shown = format!("{cli:?}");
    assert!(!shown.contains("s3cr3t-value") && !shown.contains("adm1n-token"));
}

#[test]
fn redis_url_from_host_port_password() {
    let c = parse(&[
        "--redis-host",
        "r",
        "--redis-port",
        "7000",
        "--redis-password",
        "pw",
    ])
    .unwrap();
    let redis = c.redis.unwrap();
    assert_eq!(redis.url, "redis://:pw@r:7000");
    assert_eq!(redis.max_message_history, 1000);
    assert_eq!(redis.message_history_ttl, Duration::from_secs(604_800));
    assert!(parse(&["--redis-url", "http://x"]).is_err());
}
