-- Privacy: legal holds, and the indexes retention and erasure walk.
--
-- A hold is keyed by its target as `HoldTarget::key()` writes it (`incident:12`,
-- `device:<id>`, `user:<name>`), so placing one again replaces it.
CREATE TABLE holds (
    target  text COLLATE "C" PRIMARY KEY,
    by_user text   NOT NULL,
    at_ns   bigint NOT NULL,
    reason  text   NOT NULL
);

-- Events expire by when they occurred, but are partitioned by when they were received (a
-- laptop's backlog arrives late), so the purge walks each partition's events oldest first by
-- this index. It costs appends one more index entry per event.
CREATE INDEX events_by_occurred ON events (occurred_at_ns);

-- Closed incidents oldest first: only closed ones can expire.
CREATE INDEX incidents_closed_by_update ON incidents (updated_at_ns) WHERE status = 'closed';
-- The group whose latest incident a purge removes, so the group starts afresh.
CREATE INDEX incident_groups_by_incident ON incident_groups (incident);
-- Entries a person wrote, for a subject access request about a staff account.
CREATE INDEX incident_entries_by_author ON incident_entries (author);
CREATE INDEX audit_by_time ON audit (at_ns);
CREATE INDEX digests_sent_by_creation ON digests (created_at_ns) WHERE status = 'sent';
