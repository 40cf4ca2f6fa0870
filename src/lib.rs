//! xmpp-mqtt-bridge: lets legacy XMPP clients and new MQTT clients talk to each other during a
//! migration, with an MQTT 3.1.1/5.0 broker built in.
//!
//! ```text
//!  MQTT clients ──TCP──▶ broker/ (listeners → connections → router: sessions, trie, retained)
//!                                    ▲
//!  main.rs: CLI → config::load → telemetry::init → app::App::start → wait for signal → stop
//! ```
//! Modules:
//! - `config`: TOML + environment, validated before any port is bound.
//! - `broker`: the embedded MQTT broker.
//! - `upstream`: the bridge as a client of an existing broker (`[mqtt] mode = "upstream"`).
//! - `mapping`: JID <-> topic rules, compiled once, validated with file and line.
//! - `xmpp`: the XEP-0114 component link to the legacy XMPP server.
//! - `bridge`: the core; moves messages between the two through the mapping table, with
//!   receipts (XEP-0184), ids, chat states, corrections and delay.
//! - `store`: the embedded store; persistent sessions, messages and retained messages survive
//!   a crash (`[persistence]`).
//! - `audit`: the tamper-evident trail of translated traffic (writer, verify, query).
//! - `telemetry`: logging, Prometheus metrics, the admin listener (`/metrics`, `/healthz`,
//!   `/readyz`).
//! - `app`: wiring and shutdown.

pub mod app;
pub mod audit;
pub mod bridge;
pub mod broker;
pub mod config;
pub mod mapping;
pub mod shutdown;
pub mod store;
mod suggest;
pub mod telemetry;
pub mod upstream;
pub mod xmpp;
