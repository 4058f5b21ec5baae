//! The central crate's integration tests, in one binary (one link of the
//! workspace instead of one per file).

mod api_conformance;
mod attempt_history;
mod browser;
mod bulk_actions;
mod central_ui;
mod cluster;
mod common;
mod configuration_database;
mod connection_limits;
mod export;
mod failure_groups;
mod fleet;
mod link;
mod link_security;
mod link_tls;
mod listing;
mod notification_outbox;
mod notifications;
mod replay_on_recovery;
mod rest_api;
mod rest_hardening;
mod silent_link;
mod site_call_audit;
