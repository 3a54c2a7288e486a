-- Accounts, incidents and digests: the tables behind AccountStore, IncidentStore and DigestStore.
--
-- Times are bigint nanoseconds since the Unix epoch (columns named *_ns): the collector's
-- clock reads nanoseconds and timestamptz keeps only microseconds, and a record must read back
-- exactly as it was written. u64 values from the collector are kept in bigint (never above
-- 2^63 in practice; the store refuses one that is). Names listed in order are COLLATE "C",
-- byte order, as the embedded store lists them.

-- Numbers that must be gapless and increase in commit order even with several collectors
-- writing: settings versions and audit ids. A writer bumps its row with
-- INSERT ... ON CONFLICT DO UPDATE ... RETURNING inside its own transaction, so it holds the
-- row's lock until it commits and the next writer reads the committed value.
CREATE TABLE counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);

CREATE TABLE settings_versions (
    version       bigint PRIMARY KEY,
    settings      jsonb  NOT NULL,
    changed_by    text   NOT NULL,
    changed_at_ns bigint NOT NULL
);

CREATE TABLE users (
    username             text COLLATE "C" PRIMARY KEY,
    role                 text    NOT NULL,
    password_hash        text    NOT NULL,
    disabled             boolean NOT NULL,
    email                text    NOT NULL,
    must_change_password boolean NOT NULL,
    created_at_ns        bigint  NOT NULL,
    created_by           text    NOT NULL,
    updated_at_ns        bigint  NOT NULL
);

-- Keyed by the SHA-256 of the cookie; the cookie itself is never stored.
CREATE TABLE sessions (
    hash          text   PRIMARY KEY,
    username      text   NOT NULL,
    created_at_ns bigint NOT NULL,
    last_seen_ns  bigint NOT NULL,
    expires_at_ns bigint NOT NULL,
    csrf          text   NOT NULL
);
CREATE INDEX sessions_by_username ON sessions (username);
CREATE INDEX sessions_by_expiry ON sessions (expires_at_ns);

-- Keyed by the SHA-256 of the token.
CREATE TABLE api_tokens (
    hash          text   PRIMARY KEY,
    label         text   NOT NULL,
    role          text   NOT NULL,
    created_at_ns bigint NOT NULL,
    created_by    text   NOT NULL,
    revoked_at_ns bigint
);

-- Only grows: ids from counters('audit'), so in commit order.
CREATE TABLE audit (
    id      bigint PRIMARY KEY,
    at_ns   bigint NOT NULL,
    actor   text   NOT NULL,
    action  text   NOT NULL,
    target  text   NOT NULL,
    detail  text   NOT NULL,
    address text   NOT NULL
);

CREATE SEQUENCE incident_ids;

CREATE TABLE incidents (
    id            bigint PRIMARY KEY,
    category      text   NOT NULL,
    device_id     text   NOT NULL,
    user_name     text,
    kind          text   NOT NULL,
    subject       text   NOT NULL,
    title         text   NOT NULL,
    severity      text   NOT NULL,
    audience      text[] NOT NULL,
    first_at_ns   bigint NOT NULL,
    last_at_ns    bigint NOT NULL,
    count         bigint NOT NULL,
    first_seq     bigint NOT NULL,
    last_seq      bigint NOT NULL,
    status        text   NOT NULL,
    updated_at_ns bigint NOT NULL,
    -- The arrival ids of the events that opened it and last extended it.
    first_arrival bigint NOT NULL,
    last_arrival  bigint NOT NULL
);
-- The listings: newest first by id, per device, per user, per category, and the open ones
-- (the dashboard's default view).
CREATE INDEX incidents_by_device ON incidents (device_id, id);
CREATE INDEX incidents_by_user ON incidents (user_name, id);
CREATE INDEX incidents_by_category ON incidents (category, id);
CREATE INDEX incidents_open ON incidents (id) WHERE status <> 'closed';

-- The latest incident of each group (device, kind, subject). A folding append locks its row
-- (an upsert), so two collectors folding the same group take turns.
CREATE TABLE incident_groups (
    group_key text PRIMARY KEY,
    incident  bigint REFERENCES incidents (id)
);

-- Each incident's record: entries are only ever added.
CREATE TABLE incident_entries (
    incident bigint  NOT NULL REFERENCES incidents (id),
    n        integer NOT NULL,
    at_ns    bigint  NOT NULL,
    author   text    NOT NULL,
    action   text    NOT NULL,
    body     text    NOT NULL,
    PRIMARY KEY (incident, n)
);

CREATE SEQUENCE digest_ids;

CREATE TABLE digests (
    id              bigint PRIMARY KEY,
    recipient       text   NOT NULL,
    channel         jsonb  NOT NULL,
    kind            text   NOT NULL,
    created_at_ns   bigint NOT NULL,
    subject         text   NOT NULL,
    body_text       text   NOT NULL,
    body_html       text   NOT NULL,
    body_json       jsonb  NOT NULL,
    events          bigint NOT NULL,
    status          text   NOT NULL,
    attempts        integer NOT NULL,
    last_error      text,
    next_attempt_ns bigint,
    sent_at_ns      bigint,
    attachment      jsonb
);
-- The sender's queue: only pending digests are indexed.
CREATE INDEX digests_pending ON digests (id) WHERE status = 'pending';

CREATE TABLE digest_cursors (
    recipient      text     PRIMARY KEY,
    scheduled_from bigint   NOT NULL,
    urgent_from    bigint   NOT NULL,
    last_due_ns    bigint,
    urgent_sent_ns bigint[] NOT NULL
);
