//! Prometheus metrics: the counters and gauges the collector keeps, rendered for `/metrics`.
//!
//! One process-wide set ([`metrics`]), because what it counts (connections accepted by an
//! accept loop, handshakes refused inside rustls, batches stored by the writer) happens in
//! places that share nothing else. Counting is a relaxed atomic add; rendering is only done
//! when `/metrics` is asked.

use std::sync::OnceLock;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which listener a connection arrived on.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Listener {
    /// The agents' gRPC port (enrolment and telemetry).
    Grpc,
    /// The dashboard and JSON API.
    Web,
}

/// Why a connection was closed or refused before it did useful work.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Refusal {
    /// The listener already holds its cap of connections.
    ListenerFull,
    /// One address already holds its cap of connections.
    AddressFull,
    /// The TLS handshake did not finish in time.
    HandshakeTimeout,
    /// The TLS handshake failed (a foreign or revoked certificate, a scanner, garbage).
    HandshakeFailed,
    /// A request's headers did not arrive in time, or the connection sat idle too long.
    Idle,
    /// `accept` itself failed (EMFILE and friends); the loop backed off.
    AcceptError,
}

/// What a failed authentication was trying.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum AuthKind {
    /// A wrong or spent enrolment token.
    EnrolmentToken,
    /// Enrolment refused because the address or token is locked out.
    EnrolmentLockedOut,
    /// A wrong bearer token on the JSON API.
    ApiToken,
    /// API authentication refused because the address is locked out.
    ApiLockedOut,
    /// A wrong password on the dashboard's sign-in page.
    SignIn,
    /// A device certificate the CA did not issue, or one that was revoked.
    DeviceCertificate,
}

/// A kind of record the purge removes (`crate::retention`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum PurgedKind {
    TechnicalEvents,
    SafeguardingEvents,
    Incidents,
    IncidentEntries,
    AuditEntries,
    Digests,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurgedLabels {
    pub kind: PurgedKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: Listener,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub listener: Listener,
    pub reason: Refusal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub kind: AuthKind,
}

/// Everything `/metrics` shows.
pub struct Metrics {
    registry: Registry,
    /// Events made durable (each once, resends not counted).
    pub events_stored: Counter,
    /// Batches acknowledged to agents.
    pub batches_acked: Counter,
    /// Seconds from a batch's arrival to its acknowledgement.
    pub ack_latency: Histogram,
    /// Store writes that failed (the batch was not acknowledged).
    pub store_errors: Counter,
    /// 1 while the store accepts writes, 0 while it is refusing them (disk full, below the floor).
    pub store_writable: Gauge,
    /// Connections open now, per listener.
    pub connections_open: Family<ListenerLabels, Gauge>,
    /// Connections accepted, per listener.
    pub connections_accepted: Family<ListenerLabels, Counter>,
    /// Connections refused or closed early, per listener and reason.
    pub connections_refused: Family<RefusalLabels, Counter>,
    /// Failed authentications, per kind.
    pub auth_failures: Family<AuthLabels, Counter>,
    /// Security log lines suppressed by the log's rate limit (still counted above).
    pub security_log_suppressed: Counter,
    /// Devices with an event stream open now.
    pub devices_connected: Gauge,
    /// Records removed past their retention, per kind.
    pub records_purged: Family<PurgedLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("caretaker");
        let m = Self {
            registry: Registry::default(),
            events_stored: Counter::default(),
            batches_acked: Counter::default(),
            // 1 ms .. about 33 s.
            ack_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            store_errors: Counter::default(),
            store_writable: Gauge::default(),
            connections_open: Family::default(),
            connections_accepted: Family::default(),
            connections_refused: Family::default(),
            auth_failures: Family::default(),
            security_log_suppressed: Counter::default(),
            devices_connected: Gauge::default(),
            records_purged: Family::default(),
        };
        m.store_writable.set(1);
        registry.register(
            "events_stored",
            "Events made durable in the store",
            m.events_stored.clone(),
        );
        registry.register(
            "batches_acked",
            "Batches acknowledged to agents",
            m.batches_acked.clone(),
        );
        registry.register(
            "ack_latency_seconds",
            "Time from a batch's arrival to its acknowledgement",
            m.ack_latency.clone(),
        );
        registry.register(
            "store_errors",
            "Store writes that failed",
            m.store_errors.clone(),
        );
        registry.register(
            "store_writable",
            "1 while the store accepts writes",
            m.store_writable.clone(),
        );
        registry.register(
            "connections_open",
            "Connections open now",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_accepted",
            "Connections accepted",
            m.connections_accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused or closed before finishing their work",
            m.connections_refused.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed authentications",
            m.auth_failures.clone(),
        );
        registry.register(
            "security_log_suppressed",
            "Security log lines left out by the log's rate limit",
            m.security_log_suppressed.clone(),
        );
        registry.register(
            "devices_connected",
            "Devices with an event stream open",
            m.devices_connected.clone(),
        );
        registry.register(
            "records_purged",
            "Records removed past their retention",
            m.records_purged.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts what a purge batch removed.
    pub fn purged(&self, c: &crate::store::PurgeCounts) {
        for (kind, n) in [
            (PurgedKind::TechnicalEvents, c.technical_events),
            (PurgedKind::SafeguardingEvents, c.safeguarding_events),
            (PurgedKind::Incidents, c.incidents),
            (PurgedKind::IncidentEntries, c.incident_entries),
            (PurgedKind::AuditEntries, c.audit_entries),
            (PurgedKind::Digests, c.digests),
        ] {
            self.records_purged
                .get_or_create(&PurgedLabels { kind })
                .inc_by(n);
        }
    }

    /// Counts a failed authentication.
    pub fn auth_failed(&self, kind: AuthKind) {
        self.auth_failures.get_or_create(&AuthLabels { kind }).inc();
    }

    /// Counts a refused or early-closed connection.
    pub fn refused(&self, listener: Listener, reason: Refusal) {
        self.connections_refused
            .get_or_create(&RefusalLabels { listener, reason })
            .inc();
    }

    /// The text exposition format (`text/plain; version=0.0.4` compatible, OpenMetrics).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The content type `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_counted() {
        let m = Metrics::new();
        m.auth_failed(AuthKind::ApiToken);
        m.auth_failed(AuthKind::ApiToken);
        m.refused(Listener::Web, Refusal::Idle);
        m.events_stored.inc_by(7);
        let text = m.render();
        assert!(
            text.contains(r#"caretaker_auth_failures_total{kind="ApiToken"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"caretaker_connections_refused_total{listener="Web",reason="Idle"} 1"#),
            "{text}"
        );
        assert!(text.contains("caretaker_events_stored_total 7"), "{text}");
        assert!(text.contains("caretaker_store_writable 1"), "{text}");
        m.purged(&crate::store::PurgeCounts {
            technical_events: 3,
            digests: 1,
            ..Default::default()
        });
        assert!(
            m.render()
                .contains(r#"caretaker_records_purged_total{kind="TechnicalEvents"} 3"#),
            "{}",
            m.render()
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
