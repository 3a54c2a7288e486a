//! Caretaker's collector: enrols devices, stores their events durably, serves the JSON API and pushes policy.

#![forbid(unsafe_code)]

pub mod admin;
pub mod ca;
pub mod classify;
pub mod datadir;
pub mod grpc;
pub mod ingest;
pub mod rules;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod tokens;
pub mod web;
