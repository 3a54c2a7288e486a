//! Caretaker's laptop agent: probes write events to a durable spool; the uplink streams them to the collector.

#![forbid(unsafe_code)]

pub mod config;
pub mod connect;
pub mod enroll;
pub mod event;
pub mod instance;
pub mod os;
pub mod policy;
pub mod probe;
pub mod runtime;
pub mod spool;
pub mod state;
pub mod status;
pub mod tls;
pub mod uninstall;
pub mod uplink;
