DROP TABLE IF EXISTS threepc_markers;
