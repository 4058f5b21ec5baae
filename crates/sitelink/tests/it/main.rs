//! The host crate's integration tests, in one binary (one link of the
//! workspace instead of one per file). `auth_flood` stays apart: it
//! measures the resident memory of the process it drives, and shares that
//! machine with nothing else of this binary.

mod benches;
mod bulk_crash;
mod common;
mod component_docs;
mod convergence;
mod crash_recovery;
mod demo;
mod error_answers;
mod failover;
mod layering;
mod notify_crash;
mod outbox_crash;
mod readme;
