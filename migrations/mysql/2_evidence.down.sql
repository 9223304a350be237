-- Version 1 knows neither evidence rows nor tombstones: drop them (the
-- primary key on gtid alone and the old CHECK constraint would refuse them).
-- Two statements: package migrations runs them one by one, whatever the
-- pool's multiStatements setting.
DELETE FROM threepc_markers WHERE branch <> '' OR state NOT IN ('precommit', 'abort');
ALTER TABLE threepc_markers
    DROP CONSTRAINT threepc_markers_state,
    ADD CONSTRAINT threepc_markers_state CHECK (state IN ('precommit', 'abort')),
    DROP PRIMARY KEY,
    DROP COLUMN branch,
    DROP COLUMN space,
    ADD PRIMARY KEY (gtid);
