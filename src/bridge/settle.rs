//! MQTT deliveries on their way to XMPP, in the order they were queued on the link, settled in
//! batches by the link's reports ([`Settlement`]).
//!
//! Each queued stanza carries a ticket: the next number of this structure. The link confirms
//! stanzas in queue order (a ping answer confirms everything written before the ping), so a
//! report says "confirmed up to ticket N", and every delivery up to N leaves in one pass. The
//! link gives up only the oldest unconfirmed stanzas (see `xmpp::queue`), named by ticket in
//! the same report; those are settled first, as not confirmed. Sans-IO.

use std::collections::VecDeque;

use crate::xmpp::Settlement;

/// Deliveries waiting for the XMPP server's confirmation, by ticket, in send order.
#[derive(Debug)]
pub(crate) struct InFlight<T> {
    items: VecDeque<(u64, T)>,
    next: u64,
}

/// What one report settled, each list in send order.
#[derive(Debug, PartialEq)]
pub(crate) struct Settled<T> {
    /// Confirmed by the server: acknowledge to the broker.
    pub(crate) confirmed: Vec<T>,
    /// Given up by the link, or left when it stopped: never confirmed.
    pub(crate) unconfirmed: Vec<T>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            next: 1,
        }
    }
}

impl<T> InFlight<T> {
    /// The ticket the next [`InFlight::push`] takes: give it to the stanza before sending.
    pub(crate) fn next_ticket(&self) -> u64 {
        self.next
    }

    /// Records a delivery whose stanza the link took with ticket [`InFlight::next_ticket`].
    pub(crate) fn push(&mut self, item: T) {
        self.items.push_back((self.next, item));
        self.next += 1;
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Deliveries waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Applies a report: given-up tickets first, then everything up to the confirmed ticket,
    /// then, if the link stopped, all that is left as unconfirmed.
    pub(crate) fn settle(&mut self, report: &Settlement) -> Settled<T> {
        let mut unconfirmed = Vec::new();
        for ticket in &report.given_up {
            // The oldest ones: found at or near the front.
            let found = self.items.iter().position(|(t, _)| t == ticket);
            if let Some((_, item)) = found.and_then(|i| self.items.remove(i)) {
                unconfirmed.push(item);
            }
        }
        let n = report.confirmed_upto.map_or(0, |upto| {
            self.items.iter().take_while(|(t, _)| *t <= upto).count()
        });
        let confirmed = self.items.drain(..n).map(|(_, item)| item).collect();
        if report.stopped {
            unconfirmed.extend(self.items.drain(..).map(|(_, item)| item));
        }
        Settled {
            confirmed,
            unconfirmed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(items: &[&'static str]) -> InFlight<&'static str> {
        let mut f = InFlight::default();
        for item in items {
            f.push(*item);
        }
        f
    }

    fn report(upto: Option<u64>, given_up: &[u64], stopped: bool) -> Settlement {
        Settlement {
            confirmed_upto: upto,
            given_up: given_up.to_vec(),
            stopped,
        }
    }

    fn settled(confirmed: &[&'static str], unconfirmed: &[&'static str]) -> Settled<&'static str> {
        Settled {
            confirmed: confirmed.to_vec(),
            unconfirmed: unconfirmed.to_vec(),
        }
    }

    #[test]
    fn tickets_follow_send_order() {
        let mut f = InFlight::default();
        assert_eq!(f.next_ticket(), 1);
        f.push("a");
        assert_eq!(f.next_ticket(), 2);
        // A refused send takes no ticket: the next delivery gets the same one.
        assert_eq!(f.next_ticket(), 2);
        f.push("b");
        assert_eq!(f.next_ticket(), 3);
    }

    #[test]
    fn a_report_settles_everything_up_to_its_ticket_in_order() {
        let mut f = queued(&["a", "b", "c", "d"]);
        assert_eq!(
            f.settle(&report(Some(3), &[], false)),
            settled(&["a", "b", "c"], &[])
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f.settle(&report(Some(4), &[], false)), settled(&["d"], &[]));
        assert!(f.is_empty());
    }

    #[test]
    fn partial_and_repeated_confirmations() {
        let mut f = queued(&["a", "b", "c"]);
        assert_eq!(f.settle(&report(Some(1), &[], false)), settled(&["a"], &[]));
        // An older or equal ticket again settles nothing more.
        assert_eq!(f.settle(&report(Some(1), &[], false)), settled(&[], &[]));
        assert_eq!(f.settle(&report(None, &[], false)), settled(&[], &[]));
        // Beyond the last ticket: what is there.
        assert_eq!(
            f.settle(&report(Some(99), &[], false)),
            settled(&["b", "c"], &[])
        );
        assert!(f.is_empty());
    }

    #[test]
    fn given_up_tickets_are_settled_before_the_confirmation_that_follows_them() {
        let mut f = queued(&["a", "b", "c", "d"]);
        // Reconnects: "a" and "b" given up, "c" re-sent and confirmed with "d".
        let r = report(Some(4), &[1, 2], false);
        assert_eq!(f.settle(&r), settled(&["c", "d"], &["a", "b"]));
        assert!(f.is_empty());
    }

    #[test]
    fn a_reconnect_rewind_keeps_deliveries_waiting_until_the_resend_is_confirmed() {
        let mut f = queued(&["a", "b"]);
        // The link lost its connection and wrote both again: no report until a ping answer.
        f.push("c");
        assert_eq!(f.settle(&report(None, &[], false)), settled(&[], &[]));
        assert_eq!(f.len(), 3);
        assert_eq!(
            f.settle(&report(Some(2), &[], false)),
            settled(&["a", "b"], &[])
        );
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn unknown_given_up_tickets_are_ignored() {
        let mut f = queued(&["a"]);
        assert_eq!(f.settle(&report(None, &[7], false)), settled(&[], &[]));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn a_stopped_link_leaves_the_rest_unconfirmed() {
        let mut f = queued(&["a", "b", "c"]);
        let r = report(Some(1), &[], true);
        assert_eq!(f.settle(&r), settled(&["a"], &["b", "c"]));
        assert!(f.is_empty());
        // Pushed after the stop (raced with it): settled by the repeated stop report.
        f.push("d");
        assert_eq!(f.settle(&report(None, &[], true)), settled(&[], &["d"]));
    }
}
