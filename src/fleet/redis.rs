//! The fleet on Redis. Two keys of its own, beside the SPEC 7 keys (which it never touches):
//!
//! - `chat:admin:instance:{instanceId}`: string, the instance's report as JSON, with a TTL
//!   (`PX`) of a few report intervals, rewritten at every report;
//! - `chat:admin:instances`: set of the instance ids that published, so readers need no
//!   `KEYS`/`SCAN`. Its TTL is refreshed with every report, so it goes when every instance has.
//!
//! A reader takes every listed instance's report in one Lua script, which also drops from the
//! set the ids whose report has expired (an instance that died); running in Redis, it cannot
//! remove an id that its instance re-adds at the same moment.

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;

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
    conn: ConnectionManager,
    read: Script,
}

impl RedisFleet {
    pub fn new(url: &str) -> Result<Self, FleetError> {
        let client = crate::redis_link::client(url).map_err(|e| FleetError(e.to_string()))?;
        let conn = crate::redis_link::connection_manager(&client)
            .map_err(|e| FleetError(e.to_string()))?;
        Ok(Self {
            conn,
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
            .arg(format!("{REPORT_PREFIX}{}", report.instance_id))
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
            .arg(REPORT_PREFIX)
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
            .arg(format!("{REPORT_PREFIX}{instance_id}"))
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
