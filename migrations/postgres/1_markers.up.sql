-- The pre-commit marker table of threepc. One row per global transaction
-- that has been decided (state 'precommit') or fenced by recovery
-- (state 'abort'). The primary key makes every insert a compare-and-set.
CREATE TABLE IF NOT EXISTS threepc_markers (
    gtid         varchar(26)  PRIMARY KEY,
    state        varchar(16)  NOT NULL CHECK (state IN ('precommit', 'abort')),
    primary_name varchar(32)  NOT NULL,
    participants text         NOT NULL,
    owner        varchar(128) NOT NULL,
    created_at   timestamptz  NOT NULL DEFAULT now()
);
