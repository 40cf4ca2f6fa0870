//! A check the router runs on every PUBLISH from a network client before routing it.
//!
//! The bridge installs one built from the mapping table: a publish on a bridged topic that
//! the bridge would refuse (another user's topic, an anonymous client, a payload that does not
//! parse) is refused at the broker, so it reaches nobody, and an MQTT 5 client learns why from
//! the PUBACK/PUBREC reason code. MQTT 3.1.1 has no negative acknowledgement: the message is
//! dropped, acknowledged as usual, counted and logged (as Mosquitto does for ACL denials).

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
    /// `user` is the authenticated user name of the publisher.
    fn check(&self, topic: &str, payload: &[u8], user: Option<&str>) -> Result<(), Refused>;
}
