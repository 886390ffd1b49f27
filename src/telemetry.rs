//! Logs on stderr in the `LOG_FORMAT` of the configuration, filtered by `RUST_LOG`
//! (default `info,redis=off`: the Redis driver's cluster client logs every failed reconnection
//! attempt of every node, several a second through an outage, where the adapters log the
//! state change once themselves).
//!
//! - `text` (default): tracing-subscriber's human-readable lines.
//! - `json`: one JSON object per line, the same keys on every line whoever logged it (ours or a
//!   dependency's): `timestamp` (RFC 3339, UTC), `level`, `target`, `message` (`""` for an
//!   event without one, as sqlx's query events), then the event's own fields, then `spans`
//!   (the spans the event happened in, outermost first, each `{"name", ...fields}`) when there
//!   are any. An event field named like one of those keys is written as `field.<name>`.
//!   tracing-subscriber's own JSON format writes `message` only when the event has one, hence
//!   this formatter.
//!
//! What goes into a log line is decided at the call sites: ids (connection, user, room,
//! message), never tokens, passwords or message text (docs/ARCHITECTURE.md, "Secrets").

use std::fmt;

use serde::Serializer as _;
use serde::ser::SerializeMap;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// The filter without `RUST_LOG`.
pub const DEFAULT_FILTER: &str = "info,redis=off";

/// Installs the global subscriber; call once, before anything logs.
pub fn init(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .init(),
    }
}

/// The `json` event format (module docs). Span fields are recorded by [`JsonFields`], so
/// each span's extensions hold its fields as a JSON object.
pub struct JsonLines;

const RESERVED: [&str; 5] = ["timestamp", "level", "target", "message", "spans"];

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = FieldsVisitor(Map::new());
        event.record(&mut fields);
        let mut fields = fields.0;
        let message = match fields.remove("message") {
            Some(Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let spans: Vec<Value> = ctx
            .event_scope()
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .map(|span| {
                let mut obj = Map::new();
                obj.insert("name".into(), span.name().into());
                if let Some(recorded) = span.extensions().get::<FormattedFields<N>>()
                    && let Ok(Value::Object(span_fields)) =
                        serde_json::from_str::<Value>(recorded.as_str())
                {
                    obj.extend(span_fields);
                }
                Value::Object(obj)
            })
            .collect();

        let mut line = Vec::with_capacity(256);
        let mut ser = serde_json::Serializer::new(&mut line);
        let mut map = ser.serialize_map(None).map_err(|_| fmt::Error)?;
        let meta = event.metadata();
        let head: [(&str, &str); 4] = [
            ("timestamp", timestamp.as_str()),
            ("level", meta.level().as_str()),
            ("target", meta.target()),
            ("message", message.as_str()),
        ];
        for (key, value) in head {
            map.serialize_entry(key, value).map_err(|_| fmt::Error)?;
        }
        for (key, value) in &fields {
            if RESERVED.contains(&key.as_str()) {
                map.serialize_entry(&format!("field.{key}"), value)
            } else {
                map.serialize_entry(key, value)
            }
            .map_err(|_| fmt::Error)?;
        }
        if !spans.is_empty() {
            map.serialize_entry("spans", &spans)
                .map_err(|_| fmt::Error)?;
        }
        map.end().map_err(|_| fmt::Error)?;
        writer.write_str(std::str::from_utf8(&line).map_err(|_| fmt::Error)?)?;
        writer.write_char('\n')
    }
}

/// An event's fields as JSON values: numbers and booleans stay typed, anything else is its
/// `Display` (`%x`) or `Debug` (`?x`) text.
struct FieldsVisitor(Map<String, Value>);

impl Visit for FieldsVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;

    /// Runs `f` under the `json` format and returns the lines it logged, and each parsed.
    fn json_lines(f: impl FnOnce()) -> Vec<(String, Map<String, Value>)> {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().clone()).unwrap();
        text.lines()
            .map(|line| match serde_json::from_str(line) {
                Ok(Value::Object(obj)) => (line.to_string(), obj),
                _ => panic!("not a JSON object: {line}"),
            })
            .collect()
    }

    #[test]
    fn json_lines_carry_the_fixed_keys_the_fields_and_the_spans() {
        let lines = json_lines(|| {
            let conn = tracing::info_span!("connection", conn = "c-1");
            let _c = conn.enter();
            let room = tracing::debug_span!("join", room = "r-1", members = 3u64);
            let _r = room.enter();
            tracing::warn!(user = "u-1", level = 7, ok = true, "joined");
            tracing::debug!(statement = "SELECT 1");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let (raw, first) = &lines[0];
        let at = |key: &str| raw.find(&format!(r#""{key}":"#)).unwrap();
        assert!(raw.starts_with(r#"{"timestamp":"#), "{raw}");
        assert!(
            at("timestamp") < at("level") && at("level") < at("target"),
            "{raw}"
        );
        assert!(
            at("target") < at("message") && at("message") < at("user"),
            "fixed keys first: {raw}"
        );
        assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["target"], module_path!());
        assert_eq!(first["message"], "joined");
        assert_eq!(first["user"], "u-1");
        assert_eq!(first["ok"], true);
        // A field named like a fixed key does not replace it.
        assert_eq!(first["field.level"], 7);
        assert_eq!(
            first["spans"],
            serde_json::json!([
                {"name": "connection", "conn": "c-1"},
                {"name": "join", "room": "r-1", "members": 3}
            ])
        );
        // An event without a message still has the key.
        let second = &lines[1].1;
        assert_eq!(second["message"], "");
        assert_eq!(second["statement"], "SELECT 1");
    }
}
