//! Cross-rule checks: ambiguous and duplicate rules (see "Precedence and ambiguity" in the
//! module docs).

use super::error::MappingError;
use super::pattern::Overlap;
use super::rule::Rule;

/// Reports every pair of rules that can match one input with neither more specific. The error
/// is attached to the later rule and names both rules and both `file:line`s.
pub(crate) fn check(rules: &[Rule], errors: &mut Vec<MappingError>) {
    for (j, b) in rules.iter().enumerate() {
        for a in &rules[..j] {
            if let Some(message) = conflict(a, b) {
                errors.push(MappingError {
                    file: b.file.clone(),
                    line: Some(b.line),
                    rule: Some(b.name.clone()),
                    field: None,
                    message,
                });
            }
        }
    }
}

/// The conflict between `a` (earlier) and `b`, if any; XMPP → MQTT is checked first, and one
/// pair gets one message.
fn conflict(a: &Rule, b: &Rule) -> Option<String> {
    let here = |r: &Rule| format!("rule `{}` ({})", r.name, r.location());
    if a.direction.xmpp_to_mqtt() && b.direction.xmpp_to_mqtt() {
        let shared: Vec<&str> = a
            .kinds
            .iter()
            .filter(|k| b.kinds.contains(k))
            .map(|k| k.as_str())
            .collect();
        if !shared.is_empty() {
            let overlap = a.jid.compare(&b.jid).and(a.peer.compare(&b.peer));
            let input = || {
                format!(
                    "messages from `{}` to `{}` of kind {}",
                    a.peer.meet(&b.peer),
                    a.jid.meet(&b.jid),
                    shared.join(", ")
                )
            };
            match overlap {
                Overlap::Equal => {
                    return Some(format!(
                        "duplicate of {} for xmpp-to-mqtt: both have the same jid and peer \
                         patterns and match {}",
                        here(a),
                        input()
                    ));
                }
                Overlap::Crossed => {
                    return Some(format!(
                        "ambiguous with {} for xmpp-to-mqtt: both match {} and neither is more \
                         specific; make one of them more specific or give them different kinds",
                        here(a),
                        input()
                    ));
                }
                Overlap::Disjoint | Overlap::Narrower | Overlap::Wider => {}
            }
        }
    }
    if a.direction.mqtt_to_xmpp() && b.direction.mqtt_to_xmpp() {
        match a.topic.compare(&b.topic) {
            Overlap::Equal => {
                return Some(format!(
                    "duplicate of {} for mqtt-to-xmpp: both have the topic `{}`",
                    here(a),
                    a.topic.meet(&b.topic)
                ));
            }
            Overlap::Crossed => {
                return Some(format!(
                    "ambiguous with {} for mqtt-to-xmpp: both match topic `{}` and neither is \
                     more specific; make one of them more specific",
                    here(a),
                    a.topic.meet(&b.topic)
                ));
            }
            Overlap::Disjoint | Overlap::Narrower | Overlap::Wider => {}
        }
    }
    None
}
