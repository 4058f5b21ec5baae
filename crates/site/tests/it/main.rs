//! The site crate's integration tests, in one binary (one link of the
//! workspace instead of one per file).

mod admin_api_guard;
mod common;
mod database_cached_write;
mod durable_pipeline;
mod engine;
mod http_cached_call;
mod lifecycle_property;
mod sandbox_and_config;
mod script_reload;
