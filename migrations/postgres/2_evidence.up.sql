-- Evidence rows: a branch inserts (gtid, its resource name) inside its own
-- transaction before it prepares, so another session can prove that the
-- branch committed. Marker rows keep branch = ''. The primary's row can
-- also become a 'committed' tombstone once every branch is proven. Every
-- row carries the namespace tag of the deployment that wrote it, since
-- deployments that share a database share this table ('' for rows written
-- before namespaces existed).
ALTER TABLE threepc_markers
    ADD COLUMN branch varchar(32) NOT NULL DEFAULT '',
    ADD COLUMN space varchar(8) NOT NULL DEFAULT '',
    DROP CONSTRAINT threepc_markers_pkey,
    ADD CONSTRAINT threepc_markers_pkey PRIMARY KEY (gtid, branch),
    DROP CONSTRAINT threepc_markers_state_check,
    ADD CONSTRAINT threepc_markers_state_check CHECK (state IN ('precommit', 'abort', 'committed', 'evidence'));
