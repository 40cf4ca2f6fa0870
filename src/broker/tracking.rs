//! Delivery tracking for messages published by an in-process client: the bridge learns when
//! each MQTT subscriber has a message (its PUBACK for QoS 1, its PUBREC for QoS 2), which is
//! what an XEP-0184 receipt toward XMPP must wait for, and when a copy was dropped or expired
//! instead (which must never produce a receipt).
//!
//! 1. The in-process client publishes with a [`Tracker`] (a token of its choosing and the
//!    channel back to it).
//! 2. The router counts the QoS 1/2 copies it makes and reports [`Tracked::Routed`] before
//!    handing any out; QoS 0 copies are never acknowledged and are not counted.
//! 3. Each copy carries the tracker in the subscriber's in-flight or queue entry, across
//!    disconnects of a persistent session; the session reports [`Tracked::Settled`] once per
//!    copy: acknowledged, expired, or dropped with a reason (queue full, too large, refused by
//!    the subscriber, session ended).
//!
//! The channel is unbounded because the router must never wait; it holds at most one event
//! per copy made plus one per publish, all bounded by the sessions' own limits.

use bytestring::ByteString;
use tokio::sync::mpsc;

/// How one copy of a tracked message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The subscriber acknowledged it (PUBACK, or PUBREC for QoS 2).
    Acknowledged,
    /// Its MQTT 5 Message Expiry Interval ran out before it was sent.
    Expired,
    /// Dropped before the subscriber had it.
    Dropped(&'static str),
}

/// What the router tells the publisher of a tracked message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracked {
    /// The message was routed: `copies` QoS 1/2 copies were made (0: nobody will ever ack it).
    Routed {
        /// The publisher's token.
        token: u64,
        /// Copies that will each be settled once.
        copies: usize,
    },
    /// One copy ended.
    Settled {
        /// The publisher's token.
        token: u64,
        /// The subscriber's client id.
        client_id: ByteString,
        /// How.
        how: Settlement,
    },
}

/// A tracking token with the way back to its publisher. Shared (`Arc`) by every copy.
#[derive(Debug)]
pub struct Tracker {
    token: u64,
    to: mpsc::UnboundedSender<Tracked>,
}

impl Tracker {
    /// A tracker reporting to `to`.
    pub fn new(token: u64, to: mpsc::UnboundedSender<Tracked>) -> Self {
        Tracker { token, to }
    }

    /// The publisher's token.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Reports how many copies were made.
    pub fn routed(&self, copies: usize) {
        // The publisher may be gone; then nobody waits for the answer.
        let _gone = self.to.send(Tracked::Routed {
            token: self.token,
            copies,
        });
    }

    /// Reports how one copy ended.
    pub fn settle(&self, client_id: &ByteString, how: Settlement) {
        let _gone = self.to.send(Tracked::Settled {
            token: self.token,
            client_id: client_id.clone(),
            how,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_reach_the_publisher_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let t = Tracker::new(7, tx);
        t.routed(2);
        t.settle(&ByteString::from("a"), Settlement::Acknowledged);
        t.settle(&ByteString::from("b"), Settlement::Dropped("queue_full"));
        assert_eq!(
            rx.try_recv().unwrap(),
            Tracked::Routed {
                token: 7,
                copies: 2
            }
        );
        assert!(matches!(rx.try_recv().unwrap(),
            Tracked::Settled { token: 7, ref client_id, how: Settlement::Acknowledged } if client_id == "a"));
        assert!(matches!(
            rx.try_recv().unwrap(),
            Tracked::Settled {
                how: Settlement::Dropped("queue_full"),
                ..
            }
        ));
        drop(rx);
        t.routed(1); // the publisher is gone: nothing happens
    }
}
