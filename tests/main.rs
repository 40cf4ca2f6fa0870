//! Every integration test, in one test binary: the shared harness (`common/`) is compiled
//! once instead of once per file, and one process runs all tests `--test-threads` at a time
//! (see README, design notes: "One integration test binary"). Each module is one former test
//! file; run one with `cargo test --test integration MODULE::`.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

mod common;
mod mqtt5_support;

mod acl;
mod audit_bridge;
mod audit_verify;
mod bad_input;
mod bridge_chat;
mod broker_core;
mod chat_semantics;
mod cli;
mod delivery_tracking;
mod ejabberd;
mod faults;
mod faults_audit;
mod faults_mqtt_cut;
mod faults_xmpp;
mod groupchat;
mod interop_clients;
mod mqtt5;
mod mqtt5_bad_input;
mod mqtt5_clients;
mod mqtt5_config;
mod persistence;
mod persistence_bridge;
mod persistence_receipts;
mod presence;
mod presence_config;
mod properties;
mod readme_examples;
mod session_events;
mod tls_ws;
mod upstream;
mod upstream_config;
mod upstream_instances;
mod upstream_presence;
mod xmpp_link;
