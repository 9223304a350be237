-- Evidence rows: a branch inserts (gtid, its resource name) inside its own
-- transaction before it prepares, so another session can prove that the
-- branch committed. Marker rows keep branch = ''. The primary's row can
-- also become a 'committed' tombstone once every branch is proven. Every
-- row carries the namespace tag of the deployment that wrote it, since
-- deployments that share a database share this table ('' for rows written
-- before namespaces existed).
ALTER TABLE threepc_markers
    ADD COLUMN branch VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '' AFTER gtid,
    ADD COLUMN space VARCHAR(8) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '' AFTER owner,
    DROP PRIMARY KEY,
    ADD PRIMARY KEY (gtid, branch),
    DROP CONSTRAINT threepc_markers_state,
    ADD CONSTRAINT threepc_markers_state CHECK (state IN ('precommit', 'abort', 'committed', 'evidence'));
