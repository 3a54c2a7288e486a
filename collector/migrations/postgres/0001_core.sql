-- The core record: devices, events in arrival order, enrolment tokens, policy versions, derived states.
--
-- Text keys are COLLATE "C" so that listings come back in byte order, as the embedded store's do.
-- Times are bigint nanoseconds since the Unix epoch (columns named *_ns), as in 0002: the
-- collector's clock reads nanoseconds, timestamptz keeps microseconds, and a record must read
-- back exactly as it was written. Documents (details, states, policies) are `json`, not `jsonb`:
-- nothing queries inside them, `json` keeps the text as written and costs only a validation on
-- insert, and `jsonb` refuses a string holding U+0000, which an agent may report (a USB
-- descriptor, a file name) and which would then fail every group it travels in.

CREATE TABLE devices (
    id            text COLLATE "C" PRIMARY KEY,
    hostname      text NOT NULL,
    os            text NOT NULL,
    agent_version text NOT NULL,
    enrolled_at_ns bigint NOT NULL,
    last_seen_ns  bigint,
    enrolled_with text NOT NULL,
    revoked_at_ns bigint,
    -- How many events are stored for the device.
    event_count   bigint NOT NULL DEFAULT 0,
    -- The high-water mark: a sequence at or below it is a resend. Read and raised under the
    -- row's lock in every append, it is what keeps each (device, seq) stored once: a unique
    -- index cannot, since one on a partitioned table must contain the partition key.
    highest_seq   bigint NOT NULL DEFAULT 0,
    state         json NOT NULL DEFAULT '{}'
);

-- The next arrival id. Appends take its row lock just before allocating their ids and hold it
-- to their commit, so ids are handed out in commit order: a reader that has seen every event
-- up to id X and then reads "after X" misses none (a sequence would let a lower id commit
-- after a higher one).
CREATE TABLE arrival_clock (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    next_id bigint NOT NULL
);
INSERT INTO arrival_clock (next_id) VALUES (1);

-- Events in arrival order (`id`), partitioned by the month the collector received them so
-- that retention drops a partition instead of deleting rows. The monthly partitions are made
-- on demand by the collector before it inserts into them; the default partition is a net.
CREATE TABLE events (
    id          bigint NOT NULL,
    device_id   text COLLATE "C" NOT NULL,
    seq         bigint NOT NULL,
    kind        text COLLATE "C" NOT NULL,
    occurred_at_ns bigint NOT NULL,
    received_at_ns bigint NOT NULL,
    "user"      text COLLATE "C",
    severity    text NOT NULL,
    audience    text[] NOT NULL,
    details     json NOT NULL,
    assessment  json
) PARTITION BY RANGE (received_at_ns);
CREATE TABLE events_default PARTITION OF events DEFAULT;

-- The fleet's timeline (newest first) and the digests' "after id X" reads.
CREATE INDEX events_by_id ON events (id);
-- One device's listing and `device_events_after`.
CREATE INDEX events_by_device ON events (device_id, seq);
CREATE INDEX events_by_kind ON events (kind, id);
CREATE INDEX events_by_user ON events ("user", id) WHERE "user" IS NOT NULL;
-- Audiences are a closed set of roles (rules.rs). A partial index per role walks one role's
-- events in arrival order, as the DSL's pages and digests need; a GIN index on the array
-- would find them but not in order, so every page would sort all of the DSL's events.
CREATE INDEX events_for_dsl ON events (id) WHERE audience @> ARRAY['dsl']::text[];
CREATE INDEX events_for_network_manager ON events (id)
    WHERE audience @> ARRAY['network_manager']::text[];

CREATE TABLE tokens (
    hash       text COLLATE "C" PRIMARY KEY,
    label      text NOT NULL,
    max_uses   bigint NOT NULL,
    uses       bigint NOT NULL,
    created_at_ns bigint NOT NULL,
    expires_at_ns bigint NOT NULL
);

CREATE TABLE policies (
    version    bigint PRIMARY KEY,
    policy     json NOT NULL,
    changed_by text NOT NULL,
    changed_at_ns bigint NOT NULL
);

CREATE TABLE derived (
    name        text COLLATE "C" NOT NULL,
    device_id   text COLLATE "C" NOT NULL,
    through_seq bigint NOT NULL,
    state       json NOT NULL,
    PRIMARY KEY (name, device_id)
);
