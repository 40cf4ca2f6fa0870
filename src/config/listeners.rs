//! `[[broker.listeners]]` (typed listeners: tcp, tls, ws, wss) and `[broker] acl_file`.
//! Certificates, keys and the ACL are read here, so a bad file is reported with its key
//! before any port is bound.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::resolve;
use super::source::{Context, Section};
use crate::broker::acl::Acl;
use crate::broker::listener::{ListenerConfig, ListenerKind};
use crate::broker::transport::tls::{self, TlsSettings};
use crate::broker::transport::ws;

/// One `[[broker.listeners]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    kind: String,
    address: String,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    identity_as_username: bool,
    path: Option<String>,
}

/// `[broker] listeners`; `plain` are the `listen` addresses, checked for clashes.
pub(super) fn listeners(
    cx: &mut Context,
    s: &mut Section,
    base: &Path,
    plain: &[SocketAddr],
) -> Vec<ListenerConfig> {
    let Some(raw) = s.take::<Vec<RawListener>>(cx, "listeners") else {
        return Vec::new();
    };
    let mut seen: HashSet<SocketAddr> = plain.iter().copied().filter(|a| a.port() != 0).collect();
    let mut out = Vec::with_capacity(raw.len());
    for (i, l) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("broker.listeners.{i}.{k}");
        let kind = match l.kind.as_str() {
            "tcp" => ListenerKind::Tcp,
            "tls" => ListenerKind::Tls,
            "ws" => ListenerKind::Ws,
            "wss" => ListenerKind::Wss,
            other => {
                cx.error(
                    &key("kind"),
                    format!("`{other}` is not a listener kind; use tcp, tls, ws or wss"),
                );
                continue;
            }
        };
        let address: SocketAddr = match l.address.trim().parse() {
            Ok(a) => a,
            Err(_) => {
                cx.error(
                    &key("address"),
                    format!(
                        "`{}` is not an IP:port address (e.g. \"0.0.0.0:8883\")",
                        l.address
                    ),
                );
                continue;
            }
        };
        if address.port() != 0 && !seen.insert(address) {
            cx.error(
                &key("address"),
                format!("`{address}` is already a listener"),
            );
        }
        let path = match (kind.is_ws(), l.path) {
            (true, Some(p)) if p.starts_with('/') => p,
            (true, Some(p)) => {
                cx.error(&key("path"), format!("`{p}` must start with /"));
                continue;
            }
            (true, None) => ws::DEFAULT_PATH.to_string(),
            (false, Some(_)) => {
                cx.error(&key("path"), "only ws and wss listeners have a path");
                continue;
            }
            (false, None) => String::new(),
        };
        let tls = if kind.is_tls() {
            tls_settings(
                cx,
                &key,
                base,
                l.cert_file,
                l.key_file,
                l.client_ca_file,
                l.identity_as_username,
            )
        } else {
            let given = [
                ("cert_file", l.cert_file.is_some()),
                ("key_file", l.key_file.is_some()),
                ("client_ca_file", l.client_ca_file.is_some()),
                ("identity_as_username", l.identity_as_username),
            ];
            for (k, _) in given.iter().filter(|(_, set)| *set) {
                cx.error(&key(k), format!("only tls and wss listeners take {k}"));
            }
            None
        };
        if kind.is_tls() && tls.is_none() {
            continue;
        }
        out.push(ListenerConfig {
            kind,
            address,
            tls,
            path,
        });
    }
    out
}

fn tls_settings(
    cx: &mut Context,
    key: &dyn Fn(&str) -> String,
    base: &Path,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    identity_as_username: bool,
) -> Option<TlsSettings> {
    let mut missing = false;
    for (k, v) in [("cert_file", &cert_file), ("key_file", &key_file)] {
        if v.is_none() {
            cx.error(&key(k), "a TLS listener needs it (a PEM file)");
            missing = true;
        }
    }
    if identity_as_username && client_ca_file.is_none() {
        cx.error(
            &key("identity_as_username"),
            "needs client_ca_file: only a verified client certificate can name the user",
        );
        missing = true;
    }
    let (Some(cert_file), Some(key_file), false) = (cert_file, key_file, missing) else {
        return None;
    };
    let settings = TlsSettings {
        cert_file: resolve(base, cert_file),
        key_file: resolve(base, key_file),
        client_ca_file: client_ca_file.map(|p| resolve(base, p)),
        identity_as_username,
    };
    match tls::server_config(&settings) {
        Ok(_) => Some(settings),
        Err(e) => {
            cx.error(&key(e.key()), e.to_string());
            None
        }
    }
}

/// `[broker] acl_file`, read and checked.
pub(super) fn acl_file(cx: &mut Context, s: &mut Section, base: &Path) -> Option<PathBuf> {
    let path = s
        .take::<PathBuf>(cx, "acl_file")
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| resolve(base, p))?;
    if let Err(e) = Acl::load(&path) {
        cx.error("broker.acl_file", e.to_string());
    }
    Some(path)
}
