//! Caretaker's collector: enrols devices, stores their events durably, serves the JSON API and pushes policy.

#![forbid(unsafe_code)]

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod bundle;
pub mod ca;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod datadir;
pub mod desk;
pub mod digest;
#[cfg(test)]
mod fuzz_tests;
pub mod grpc;
pub mod holds;
pub mod incidents;
pub mod ingest;
pub mod listen;
pub mod metrics;
pub mod report;
pub mod retention;
pub mod rules;
pub mod security;
pub mod server;
pub mod service;
pub mod settings;
pub mod store;
pub mod subject;
pub mod timefmt;
pub mod tls;
pub mod tokens;
pub mod uninstall;
pub mod web;
