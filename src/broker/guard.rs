//! A check the router runs on every PUBLISH from a network client before routing it.
//!
//! The bridge installs one built from the mapping table: a publish on a bridged topic that
//! the bridge would refuse (another user's topic, an anonymous client, a payload that does not
//! parse) is refused at the broker, so it reaches nobody, and an MQTT 5 client learns why from
//! the PUBACK/PUBREC reason code. MQTT 3.1.1 has no negative acknowledgement: the message is
//! dropped, acknowledged as usual, counted and logged (as Mosquitto does for ACL denials).

use std::any::Any;
use std::sync::Arc;

/// What a guard worked out about a publish it let through (the bridge: its translation),
/// handed with the publish to in-process subscribers only, so that they need not work it
/// out again. The broker never looks inside; network subscribers never see it (it is not
/// part of the PUBLISH), and a publish the guard has nothing to say about carries `None`.
pub type GuardNote = Arc<dyn Any + Send + Sync>;

/// Why a publish is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// MQTT 5 reason code for PUBACK/PUBREC (e.g. 0x87 Not authorized, 0x99 Payload format
    /// invalid).
    pub reason: u8,
    /// For the log line.
    pub why: String,
}

/// Decides whether a client's PUBLISH may be routed.
pub trait PublishGuard: Send + Sync {
    /// `user` is the authenticated user name of the publisher. `Ok` may carry what the
    /// check worked out, for in-process subscribers (see [`GuardNote`]).
    fn check(
        &self,
        topic: &str,
        payload: &[u8],
        user: Option<&str>,
    ) -> Result<Option<GuardNote>, Refused>;
}
