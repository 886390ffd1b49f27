//! The fleet on Redis. Two keys of its own, beside the SPEC 7 keys (which it never touches):
//!
//! - `chat:admin:instance:{instanceId}`: string, the instance's report as JSON, with a TTL
//!   (`PX`) of a few report intervals, rewritten at every report (on a Redis Cluster
//!   `{chat:admin:instances}:instance:{instanceId}`, in the set's slot, for the read script);
//! - `chat:admin:instances`: set of the instance ids that published, so readers need no
//!   `KEYS`/`SCAN`. Its TTL is refreshed with every report, so it goes when every instance has.
//!
//! A reader takes every listed instance's report in one Lua script, which also drops from the
//! set the ids whose report has expired (an instance that died); running in Redis, it cannot
//! remove an id that its instance re-adds at the same moment.

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{Fleet, FleetError, InstanceReport};

/// The set of the instance ids.
pub const INSTANCES_KEY: &str = "chat:admin:instances";
/// The prefix of one instance's report key.
pub const REPORT_PREFIX: &str = "chat:admin:instance:";

/// KEYS: the set. ARGV: the report key prefix. Returns the reports of the listed instances.
const READ: &str = r#"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local report = redis.call('GET', ARGV[1] .. id)
  if report then table.insert(out, report) else redis.call('SREM', KEYS[1], id) end
end
return out
"#;

pub struct RedisFleet {
    conn: crate::redis_link::Conn,
    read: Script,
    /// `REPORT_PREFIX`, or on a Redis Cluster `{chat:admin:instances}:instance:` (in the set's
    /// slot: the read script takes the reports).
    prefix: String,
}

impl RedisFleet {
    pub fn new(url: &str) -> Result<Self, FleetError> {
        let target = crate::redis_link::Target::parse(url).map_err(failed)?;
        let prefix = crate::redis_link::colocated(
            target.is_cluster(),
            format_args!("{INSTANCES_KEY}"),
            format_args!(":instance:"),
            format_args!("{REPORT_PREFIX}"),
        );
        Ok(Self {
            conn: target.connection().map_err(failed)?,
            prefix,
            read: Script::new(READ),
        })
    }
}

fn failed(e: redis::RedisError) -> FleetError {
    FleetError(e.to_string())
}

#[async_trait]
impl Fleet for RedisFleet {
    async fn publish(&self, report: &InstanceReport, ttl: Duration) -> Result<(), FleetError> {
        let json = serde_json::to_string(report).map_err(|e| FleetError(e.to_string()))?;
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(format!("{}{}", self.prefix, report.instance_id))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("SADD")
            .arg(INSTANCES_KEY)
            .arg(&report.instance_id)
            .ignore()
            .cmd("PEXPIRE")
            .arg(INSTANCES_KEY)
            .arg(ttl_ms)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(failed)
    }

    async fn reports(&self) -> Result<Vec<InstanceReport>, FleetError> {
        let mut conn = self.conn.clone();
        let raw: Vec<String> = self
            .read
            .key(INSTANCES_KEY)
            .arg(&self.prefix)
            .invoke_async(&mut conn)
            .await
            .map_err(failed)?;
        Ok(raw
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect())
    }

    async fn withdraw(&self, instance_id: &str) -> Result<(), FleetError> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(format!("{}{instance_id}", self.prefix))
            .ignore()
            .cmd("SREM")
            .arg(INSTANCES_KEY)
            .arg(instance_id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(failed)
    }
}
