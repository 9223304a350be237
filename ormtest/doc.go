// Package ormtest checks that threepc's branch handles (txmanager.Tx.DB)
// work with sqlc, sqlx, GORM, bun and ent, on real PostgreSQL and MariaDB
// servers, inside real distributed transactions. It is a module of its
// own so that the library's go.mod does not carry these dependencies.
//
// The adapters here are the code a user writes where a library needs
// more than the handle's four methods: SQLX for sqlx, EntDriver for ent.
// GORM, bun and sqlc take the handle as it is (see the tests).
package ormtest
