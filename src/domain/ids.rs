//! Identifiers. `RoomId` follows SPEC 3; user ids and names are opaque strings with a length
//! bound and no control characters; `MessageId` is a MongoDB ObjectId in hex (24 characters),
//! so the same id is valid in every storage backend.

use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::Serialize;

use super::{ValidationError, is_forbidden_control};

macro_rules! string_id {
    ($name:ident) => {
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(RoomId);
string_id!(UserId);
string_id!(Username);
string_id!(ClientMessageId);

pub const MAX_ROOM_ID_CHARS: usize = 128;
pub const MAX_USER_ID_CHARS: usize = 128;
pub const MAX_USERNAME_CHARS: usize = 128;
pub const MAX_CLIENT_MESSAGE_ID_CHARS: usize = 128;

impl RoomId {
    /// 1–128 characters, each `A-Z a-z 0-9 _ - : . @`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let n = s.chars().count();
        if n == 0 || n > MAX_ROOM_ID_CHARS {
            return Err(ValidationError::new(format!(
                "roomId must be 1-{MAX_ROOM_ID_CHARS} characters"
            )));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '@'))
        {
            return Err(ValidationError::new(
                "roomId may contain only letters, digits and _ - : . @",
            ));
        }
        Ok(Self(s.into()))
    }
}

fn opaque(field: &str, s: &str, max: usize) -> Result<Arc<str>, ValidationError> {
    let n = s.chars().count();
    if s.trim().is_empty() || n > max {
        return Err(ValidationError::new(format!(
            "{field} must be 1-{max} characters and not blank"
        )));
    }
    if s.chars().any(is_forbidden_control) {
        return Err(ValidationError::new(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(s.into())
}

impl UserId {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        opaque("userId", s, MAX_USER_ID_CHARS).map(Self)
    }
}

impl Username {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        opaque("username", s, MAX_USERNAME_CHARS).map(Self)
    }
}

impl ClientMessageId {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        opaque("clientMessageId", s, MAX_CLIENT_MESSAGE_ID_CHARS).map(Self)
    }
}

/// A message id: 12 bytes (4-byte big-endian seconds, 5 random bytes chosen once per process,
/// 3-byte counter) written as 24 lowercase hex digits, the layout of a MongoDB ObjectId.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct MessageId(Arc<str>);

impl MessageId {
    pub fn generate(now_ms: u64) -> Self {
        static PROCESS: OnceLock<[u8; 5]> = OnceLock::new();
        static COUNTER: OnceLock<AtomicU32> = OnceLock::new();
        let process = PROCESS.get_or_init(rand::random);
        let counter = COUNTER
            .get_or_init(|| AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff))
            .fetch_add(1, Ordering::Relaxed);
        let secs = (now_ms / 1000) as u32;
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&secs.to_be_bytes());
        bytes[4..9].copy_from_slice(process);
        bytes[9..].copy_from_slice(&counter.to_be_bytes()[1..]);
        let mut s = String::with_capacity(24);
        for b in bytes {
            use fmt::Write;
            let _ = write!(s, "{b:02x}");
        }
        Self(s.into())
    }

    /// 24 hex digits (either case accepted, stored lowercase).
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase().into()))
        } else {
            Err(ValidationError::new("message id must be 24 hex digits"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// One client connection on this instance, whatever its transport.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ConnId(pub u64);

impl ConnId {
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids() {
        assert!(RoomId::parse("room-123").is_ok());
        assert!(RoomId::parse("a:b.c@d_e-f").is_ok());
        assert!(RoomId::parse(&"a".repeat(128)).is_ok());
        assert!(RoomId::parse(&"a".repeat(129)).is_err());
        assert!(RoomId::parse("").is_err());
        assert!(RoomId::parse("has space").is_err());
        assert!(RoomId::parse("a/b").is_err());
        assert!(RoomId::parse("é").is_err());
    }

    #[test]
    fn user_ids_reject_blank_and_controls() {
        assert!(UserId::parse("user-1").is_ok());
        assert!(UserId::parse("  ").is_err());
        assert!(UserId::parse("a\u{0}b").is_err());
        assert!(Username::parse("John Doe").is_ok());
    }

    #[test]
    fn message_ids_are_unique_ordered_hex() {
        let a = MessageId::generate(1_700_000_000_000);
        let b = MessageId::generate(1_700_000_000_000);
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 24);
        assert!(MessageId::parse(a.as_str()).is_ok());
        assert!(MessageId::parse("xyz").is_err());
        assert!(a.as_str().starts_with(&format!("{:08x}", 1_700_000_000u32)));
    }
}
