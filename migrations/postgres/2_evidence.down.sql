-- Version 1 knows neither evidence rows nor tombstones: drop them (the
-- primary key on gtid alone and the old CHECK constraint would refuse them).
DELETE FROM threepc_markers WHERE branch <> '' OR state NOT IN ('precommit', 'abort');
ALTER TABLE threepc_markers
    DROP CONSTRAINT threepc_markers_state_check,
    ADD CONSTRAINT threepc_markers_state_check CHECK (state IN ('precommit', 'abort')),
    DROP CONSTRAINT threepc_markers_pkey,
    DROP COLUMN branch,
    DROP COLUMN space,
    ADD CONSTRAINT threepc_markers_pkey PRIMARY KEY (gtid);
