//! `[mqtt]` and `[mqtt.upstream]`: which face the MQTT side has.

use std::path::{Path, PathBuf};

use super::resolve;
use super::sections::{RawDuration, in_range, positive_duration};
use super::source::{Context, Section};
use crate::mapping::MappingTable;
use crate::upstream::config::{DEFAULT_CA_FILE, TlsConfig, check_pong_relay, check_share_group};
use crate::upstream::{Protocol, UpstreamConfig};

/// The MQTT side of the bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MqttMode {
    /// The built-in broker (`[broker]`), the bridge an in-process participant.
    #[default]
    Embedded,
    /// A client of an existing broker; `[broker]` is not used.
    Upstream(Box<UpstreamConfig>),
}

impl MqttMode {
    /// `[mqtt]` as printed by `check-config` (password redacted).
    pub(super) fn describe(&self) -> String {
        let MqttMode::Upstream(u) = self else {
            return "[mqtt]\nmode = \"embedded\"\n".to_string();
        };
        let d = |v| humantime::format_duration(v).to_string();
        let mut out = format!(
            "[mqtt]\nmode = \"upstream\"\n\n[mqtt.upstream]\nserver = \"{}:{}\"\nclient_id = {:?}\n",
            u.host, u.port, u.client_id
        );
        if let Some((user, _)) = &u.credentials {
            out.push_str(&format!("username = {user:?}\npassword = \"<redacted>\"\n"));
        }
        if let Some(tls) = &u.tls {
            out.push_str(&format!(
                "tls = true\nca_file = {:?}\n",
                tls.ca_file.display().to_string()
            ));
        }
        out.push_str(&format!(
            "session_expiry = \"{}\"\nkeep_alive = \"{}\"\nreconnect_min = \"{}\"\nreconnect_max = \"{}\"\nmax_inflight = {}\n",
            d(u.session_expiry), d(u.keep_alive), d(u.reconnect_min), d(u.reconnect_max), u.max_inflight
        ));
        let protocol = match u.protocol {
            Protocol::Auto => "auto",
            Protocol::V5 => "5",
            Protocol::V311 => "3.1.1",
        };
        out.push_str(&format!("protocol = \"{protocol}\"\n"));
        if let Some(g) = &u.share_group {
            out.push_str(&format!("share_group = {g:?}\n"));
        }
        out.push_str(&format!(
            "pong_relay = {:?}\n",
            u.pong_relay.as_deref().unwrap_or("")
        ));
        out
    }
}

/// `[mqtt]`.
pub(super) fn mqtt(cx: &mut Context, mut s: Section, base: &Path) -> MqttMode {
    let mode = s.take_with(cx, "mode", "embedded".to_string(), |m: String| {
        match m.as_str() {
            "embedded" | "upstream" => Ok(m),
            other => Err(format!(
                "`{other}` is not a mode; use \"embedded\" or \"upstream\""
            )),
        }
    });
    let upstream = s.section(cx, "upstream").map(|u| upstream(cx, u, base));
    s.finish(cx, &["mode", "upstream"]);
    match (mode.as_str(), upstream) {
        ("upstream", Some(u)) => MqttMode::Upstream(Box::new(u)),
        ("upstream", None) => {
            cx.error(
                "mqtt.upstream",
                "mode = \"upstream\" needs an [mqtt.upstream] table with at least `server`",
            );
            MqttMode::Embedded
        }
        _ => MqttMode::Embedded,
    }
}

const KNOWN: &[&str] = &[
    "server",
    "client_id",
    "username",
    "password",
    "password_file",
    "tls",
    "ca_file",
    "client_cert",
    "client_key",
    "session_expiry",
    "keep_alive",
    "reconnect_min",
    "reconnect_max",
    "max_inflight",
    "share_group",
    "pong_relay",
    "protocol",
];

/// `[mqtt.upstream]`.
fn upstream(cx: &mut Context, mut s: Section, base: &Path) -> UpstreamConfig {
    let (host, port) = match s.take::<String>(cx, "server") {
        Some(server) => match split_server(&server) {
            Ok(hp) => hp,
            Err(e) => {
                cx.error("mqtt.upstream.server", e);
                (String::new(), 0)
            }
        },
        None => {
            cx.error(
                "mqtt.upstream.server",
                "required: the broker as `host:port`, e.g. \"broker.example.org:8883\"",
            );
            (String::new(), 0)
        }
    };
    let mut cfg = UpstreamConfig::new(host, port);
    if let Some(id) = s.take::<String>(cx, "client_id") {
        if id.is_empty() || id.len() > 65535 {
            cx.error(
                "mqtt.upstream.client_id",
                "must be a non-empty MQTT client identifier: the broker keeps the session under it",
            );
        } else {
            cfg.client_id = id;
        }
    }
    let username = s.take::<String>(cx, "username");
    let inline = s.take::<String>(cx, "password");
    let file = s
        .take::<PathBuf>(cx, "password_file")
        .map(|p| resolve(base, p));
    let password = match (inline, file) {
        (Some(_), Some(_)) => {
            cx.error(
                "mqtt.upstream.password_file",
                "give `password` or `password_file`, not both",
            );
            None
        }
        (Some(p), None) => Some(p),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => Some(text.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => {
                cx.error(
                    "mqtt.upstream.password_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        },
        (None, None) => None,
    };
    cfg.credentials = match (username, password) {
        (Some(u), p) => Some((u, p.unwrap_or_default())),
        (None, Some(_)) => {
            cx.error("mqtt.upstream.password", "a password needs a `username`");
            None
        }
        (None, None) => None,
    };
    let tls = s.take::<bool>(cx, "tls").unwrap_or(false);
    let file_key = |s: &mut Section, cx: &mut Context, key: &str| {
        let path = s.take::<PathBuf>(cx, key).map(|p| resolve(base, p));
        if let Some(p) = &path {
            if !p.is_file() {
                cx.error(
                    &format!("mqtt.upstream.{key}"),
                    format!("{} is not a readable file", p.display()),
                );
            }
        }
        path
    };
    let ca_file = file_key(&mut s, cx, "ca_file");
    let cert = file_key(&mut s, cx, "client_cert");
    let key = file_key(&mut s, cx, "client_key");
    let client_auth = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            cx.error(
                "mqtt.upstream.client_cert",
                "`client_cert` and `client_key` go together",
            );
            None
        }
    };
    if tls {
        cfg.tls = Some(TlsConfig {
            ca_file: ca_file.unwrap_or_else(|| PathBuf::from(DEFAULT_CA_FILE)),
            client_auth,
        });
    } else if ca_file.is_some() || client_auth.is_some() {
        cx.error(
            "mqtt.upstream.tls",
            "`ca_file`, `client_cert` and `client_key` need `tls = true`",
        );
    }
    cfg.session_expiry = s.take_with(
        cx,
        "session_expiry",
        cfg.session_expiry,
        |raw: RawDuration| {
            super::sections::duration(raw).and_then(|d| {
                if d.as_secs() > u64::from(u32::MAX) {
                    Err(format!("at most {} seconds (MQTT 5's limit)", u32::MAX))
                } else {
                    Ok(d)
                }
            })
        },
    );
    cfg.keep_alive = s.take_with(cx, "keep_alive", cfg.keep_alive, |raw: RawDuration| {
        positive_duration(raw).and_then(|d| {
            if d.as_secs() == 0 || d.as_secs() > u64::from(u16::MAX) {
                Err(format!("between 1 and {} seconds", u16::MAX))
            } else {
                Ok(d)
            }
        })
    });
    cfg.reconnect_min = s.take_with(cx, "reconnect_min", cfg.reconnect_min, positive_duration);
    cfg.reconnect_max = s.take_with(cx, "reconnect_max", cfg.reconnect_max, positive_duration);
    cfg.max_inflight = s.take_with(cx, "max_inflight", cfg.max_inflight, in_range(1, u16::MAX));
    cfg.share_group = s.take_with(cx, "share_group", None, |g: String| {
        check_share_group(&g).map(|()| Some(g))
    });
    cfg.pong_relay = s.take_with(cx, "pong_relay", cfg.pong_relay, |p: String| {
        check_pong_relay(&p).map(|()| (!p.is_empty()).then_some(p))
    });
    cfg.protocol = s.take_with(cx, "protocol", cfg.protocol, |p: String| match p.as_str() {
        "auto" => Ok(Protocol::Auto),
        "5" => Ok(Protocol::V5),
        "3.1.1" => Ok(Protocol::V311),
        other => Err(format!(
            "`{other}` is not a protocol; use \"auto\", \"5\" or \"3.1.1\""
        )),
    });
    s.finish(cx, KNOWN);
    cfg
}

fn split_server(server: &str) -> Result<(String, u16), String> {
    let bad = || format!("`{server}` is not `host:port` (e.g. \"broker.example.org:8883\")");
    let (host, port) = server.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// Upstream mode cannot see who published: every rule from MQTT must take its sender from a
/// topic level. One error per rule, at the rule's file and line.
pub(super) fn check_rules(cx: &mut Context, table: &MappingTable) {
    for rule in table.unbound_senders() {
        cx.external_error(format!(
            "{}: rule `{}`: jid `{}` is not bound to a topic level; with mqtt.mode = \"upstream\" \
             the bridge cannot see who published, so the sender must come from the topic \
             (e.g. jid = \"{{user}}@{{domain}}\" with a `{{user}}` level in topic, guarded by the \
             broker's ACL)",
            rule.location(),
            rule.name,
            rule.jid_pattern(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        assert_eq!(
            split_server("b.example:8883").unwrap(),
            ("b.example".into(), 8883)
        );
        assert_eq!(split_server("[::1]:1883").unwrap(), ("::1".into(), 1883));
        for bad in ["b.example", "b:0", ":1883", "b:x", "b:70000"] {
            assert!(split_server(bad).is_err(), "{bad}");
        }
    }
}
