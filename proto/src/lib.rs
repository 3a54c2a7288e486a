//! The contracts shared by agent, collector and installer: generated gRPC types, the policy document
//! and the enrolment bundle.
//!
//! Only this crate knows protobuf types; `convert` turns them into plain Rust
//! values at the edge.

pub mod bundle;
pub mod convert;
pub mod host;
pub mod inventory;
pub mod policy;
pub mod uninstall;

/// Generated protobuf and gRPC code for package `caretaker.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("caretaker.v1");
}

/// ALPN identifier an enrolling client offers so the collector accepts it without a client certificate.
pub const ENROLL_ALPN: &[u8] = b"caretaker-enroll/1";

/// Largest gRPC message either side accepts (bytes).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
