//! The integration tests, as one test binary (one link instead of one per file): each module
//! is one area of the gateway; [`common`] is the harness they share (the in-process
//! `Gateway`, the real-binary `Binary`, test servers, clients, config builders).
//!
//! Everything here may run in parallel threads of this one process: no test sets a
//! process-wide value (environment, tracing subscriber, signal disposition); the ones that need
//! signals or process memory run the real binary. The one test that measures this process's
//! own memory is a separate target (tests/streaming.rs).

mod common;

mod audit;
mod auth;
mod compat;
mod config;
mod decision_log;
mod docs;
mod explain;
mod faults_config;
mod faults_idp;
mod faults_upstream;
mod forwarding;
mod harness;
mod import;
mod issuer;
mod key_cache;
mod limits;
mod ops;
mod parking;
mod paths;
mod reload;
mod tunnels;
mod upstream_retry;
mod walkthrough;
