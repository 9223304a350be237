-- The pre-commit marker table of threepc. One row per global transaction
-- that has been decided (state 'precommit') or fenced by recovery
-- (state 'abort'). The primary key makes every insert a compare-and-set.
CREATE TABLE IF NOT EXISTS threepc_markers (
    gtid         VARCHAR(26)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    state        VARCHAR(16)  CHARACTER SET ascii NOT NULL,
    primary_name VARCHAR(32)  CHARACTER SET ascii NOT NULL,
    participants TEXT         CHARACTER SET ascii NOT NULL,
    owner        VARCHAR(128) NOT NULL,
    created_at   TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    CONSTRAINT threepc_markers_state CHECK (state IN ('precommit', 'abort'))
) ENGINE=InnoDB;
