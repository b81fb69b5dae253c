-- RFC-0004 phase 2 tooling: backfill checkpoints, and what happened to every legacy
-- item that was not loaded exactly as it was (repaired or quarantined).

-- One backfill run: its filters (a resumed run must use the same ones) and its
-- throttle, which the operator can change while it runs (`gcdr-data backfill rate`).
CREATE TABLE backfill_runs (
    run_id       text PRIMARY KEY,
    entities     text[] NOT NULL,
    tenants      text[] NOT NULL,
    segments     integer NOT NULL CHECK (segments BETWEEN 1 AND 1000),
    rate_limit   double precision NOT NULL DEFAULT 0 CHECK (rate_limit >= 0),
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

-- Position and counts of one Scan segment of one table. Updated in the same
-- transaction as the rows the page loaded, so a crash (even kill -9) resumes after the
-- last committed page with nothing lost or counted twice. Segment -1 is the pass that
-- loads children whose parent came later in the scan.
CREATE TABLE backfill_checkpoints (
    run_id      text    NOT NULL REFERENCES backfill_runs (run_id) ON DELETE CASCADE,
    entity      text    NOT NULL,
    segment     integer NOT NULL,
    last_key    jsonb,
    done        boolean NOT NULL DEFAULT false,
    scanned     bigint  NOT NULL DEFAULT 0,
    loaded      bigint  NOT NULL DEFAULT 0,
    unchanged   bigint  NOT NULL DEFAULT 0,
    repaired    bigint  NOT NULL DEFAULT 0,
    quarantined bigint  NOT NULL DEFAULT 0,
    deferred    bigint  NOT NULL DEFAULT 0,
    skipped     bigint  NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, entity, segment)
);

-- Items whose parent (or customer, or asset) was not in PostgreSQL yet when their page
-- was loaded; retried once the table's scan is complete.
CREATE TABLE backfill_deferred (
    run_id    text NOT NULL REFERENCES backfill_runs (run_id) ON DELETE CASCADE,
    entity    text NOT NULL,
    tenant_id text NOT NULL,
    id        text NOT NULL,
    waits_for text NOT NULL,
    PRIMARY KEY (run_id, entity, tenant_id, id)
);

-- Legacy items that could not be loaded: the item as read (DynamoDB JSON) and why.
-- Kept until a later backfill loads the item (which deletes the row).
CREATE TABLE migration_quarantine (
    entity         text NOT NULL,
    tenant_id      text NOT NULL,
    id             text NOT NULL,
    reason         text NOT NULL,
    item           jsonb NOT NULL,
    run_id         text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity, tenant_id, id)
);

-- Legacy items loaded with some fields changed under a documented rule; `fields` are
-- the legacy attribute names that differ from DynamoDB on purpose, and verify reports
-- them as repaired rather than as mismatches.
CREATE TABLE migration_repairs (
    entity      text   NOT NULL,
    tenant_id   text   NOT NULL,
    id          text   NOT NULL,
    fields      text[] NOT NULL,
    rules       text[] NOT NULL,
    run_id      text   NOT NULL,
    repaired_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity, tenant_id, id)
);
