//! MQTT 5 shared subscriptions `$share/{group}/{filter}` (section 4.8.2): each message matching
//! a group's filter goes to one member of the group, round-robin, preferring members that are
//! connected.
//!
//! A group is the pair (ShareName, filter): the full `$share/...` string is its name. Groups
//! are matched through their own subscription trie keyed by group, so a publish costs one trie
//! walk for all groups, and nothing at all when there are none.

use std::collections::HashMap;

use bytestring::ByteString;

use super::session::{SessionId, SubEntry};
use super::trie::SubscriptionTree;

/// Identifies one group while it has members.
pub type GroupId = u64;

/// One share group.
#[derive(Debug)]
struct Group {
    /// The full `$share/{group}/{filter}` string.
    name: ByteString,
    /// The filter shared.
    filter: Box<str>,
    members: Vec<(SessionId, SubEntry)>,
    /// Round-robin position.
    next: usize,
}

/// Every share group of the broker.
#[derive(Default)]
pub struct SharedGroups {
    tree: SubscriptionTree<GroupId, ()>,
    groups: HashMap<GroupId, Group>,
    by_name: HashMap<ByteString, GroupId>,
    next_id: GroupId,
    /// Scratch space for matches.
    matched: Vec<GroupId>,
}

impl SharedGroups {
    /// No groups.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `sid` to the group `name` (`$share/{group}/{filter}`, `filter` its filter part), or
    /// replaces its options. True when it was a member already.
    pub fn join(
        &mut self,
        name: &ByteString,
        filter: &str,
        sid: SessionId,
        entry: SubEntry,
    ) -> bool {
        let gid = match self.by_name.get(name) {
            Some(&gid) => gid,
            None => {
                self.next_id += 1;
                let gid = self.next_id;
                self.by_name.insert(name.clone(), gid);
                self.groups.insert(
                    gid,
                    Group {
                        name: name.clone(),
                        filter: filter.into(),
                        members: Vec::new(),
                        next: 0,
                    },
                );
                self.tree.insert(filter, gid, ());
                gid
            }
        };
        let Some(group) = self.groups.get_mut(&gid) else {
            return false;
        };
        if let Some(m) = group.members.iter_mut().find(|(s, _)| *s == sid) {
            m.1 = entry;
            return true;
        }
        group.members.push((sid, entry));
        false
    }

    /// Removes `sid` from the group `name`; the group goes when its last member leaves. True
    /// when it was a member.
    pub fn leave(&mut self, name: &str, sid: SessionId) -> bool {
        let Some(&gid) = self.by_name.get(name) else {
            return false;
        };
        let Some(group) = self.groups.get_mut(&gid) else {
            return false;
        };
        let Some(i) = group.members.iter().position(|(s, _)| *s == sid) else {
            return false;
        };
        group.members.remove(i);
        if group.members.is_empty() {
            self.tree.remove(&group.filter, gid);
            self.by_name.remove(&group.name);
            self.groups.remove(&gid);
        }
        true
    }

    /// For each group whose filter matches `topic`, the member chosen to receive the
    /// message: `f(group, member, options)`. `online` says which sessions are connected.
    pub fn for_each_match(
        &mut self,
        topic: &str,
        online: impl Fn(SessionId) -> bool,
        mut f: impl FnMut(GroupId, SessionId, &SubEntry),
    ) {
        if self.groups.is_empty() {
            return;
        }
        let mut matched = std::mem::take(&mut self.matched);
        self.tree
            .for_each_match(topic, |_filter, gid, ()| matched.push(gid));
        for gid in matched.drain(..) {
            if let Some((sid, entry)) = self.pick(gid, &online, None) {
                f(gid, sid, &entry);
            }
        }
        self.matched = matched;
    }

    /// The next member of `gid` in turn, other than `except`: the first connected one from
    /// the round-robin position, else the one at that position (its session queues).
    pub fn pick(
        &mut self,
        gid: GroupId,
        online: impl Fn(SessionId) -> bool,
        except: Option<SessionId>,
    ) -> Option<(SessionId, SubEntry)> {
        let group = self.groups.get_mut(&gid)?;
        let n = group.members.len();
        let candidates = (0..n)
            .map(|k| (group.next + k) % n)
            .filter(|&i| Some(group.members[i].0) != except);
        let mut fallback = None;
        let mut chosen = None;
        for i in candidates {
            fallback.get_or_insert(i);
            if online(group.members[i].0) {
                chosen = Some(i);
                break;
            }
        }
        let i = chosen.or(fallback)?;
        group.next = (i + 1) % n;
        Some(group.members[i])
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// True when there are no groups.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::codec::{QoS, SubscriptionOptions};

    fn entry() -> SubEntry {
        SubEntry {
            options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
            id: None,
        }
    }

    fn picks(g: &mut SharedGroups, topic: &str, online: impl Fn(SessionId) -> bool) -> Vec<u64> {
        let mut out = Vec::new();
        g.for_each_match(topic, &online, |_, sid, _| out.push(sid));
        out
    }

    #[test]
    fn round_robin_among_connected_members() {
        let mut g = SharedGroups::new();
        let name = ByteString::from_static("$share/g/a/+");
        for sid in 1..=3 {
            assert!(!g.join(&name, "a/+", sid, entry()));
        }
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.extend(picks(&mut g, "a/x", |_| true));
        }
        assert_eq!(seen, vec![1, 2, 3, 1, 2, 3]);
        // Member 2 offline: skipped.
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.extend(picks(&mut g, "a/x", |s| s != 2));
        }
        assert_eq!(seen, vec![1, 3, 1, 3]);
        assert!(picks(&mut g, "b/x", |_| true).is_empty());
    }

    #[test]
    fn groups_are_independent_and_go_with_their_last_member() {
        let mut g = SharedGroups::new();
        let one = ByteString::from_static("$share/one/t");
        let two = ByteString::from_static("$share/two/t");
        g.join(&one, "t", 1, entry());
        g.join(&two, "t", 2, entry());
        let mut got = picks(&mut g, "t", |_| true);
        got.sort_unstable();
        assert_eq!(got, vec![1, 2], "one member of each group");
        assert!(g.leave("$share/one/t", 1));
        assert!(!g.leave("$share/one/t", 1));
        assert_eq!(g.len(), 1);
        assert_eq!(picks(&mut g, "t", |_| true), vec![2]);
    }

    #[test]
    fn pick_skips_the_leaving_member() {
        let mut g = SharedGroups::new();
        let name = ByteString::from_static("$share/g/t");
        g.join(&name, "t", 1, entry());
        g.join(&name, "t", 2, entry());
        assert_eq!(g.pick(1, |_| true, Some(1)).map(|m| m.0), Some(2));
        assert_eq!(g.pick(1, |_| true, Some(2)).map(|m| m.0), Some(1));
    }
}
