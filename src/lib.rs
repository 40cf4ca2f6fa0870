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
//! - `telemetry`: logging.
//! - `app`: wiring and shutdown.

pub mod app;
pub mod broker;
pub mod config;
pub mod mapping;
pub mod shutdown;
pub mod telemetry;
