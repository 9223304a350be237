// Package ormtest checks that threepc's branch handles (txmanager.Tx.DB)
// work with query builders and ORMs, on real PostgreSQL and MariaDB
// servers, inside real distributed transactions. It is a module of its
// own so that the library's go.mod does not carry these dependencies.
//
// The adapters here are the code a user writes where a library needs
// more than the handle's four methods: SQLX for sqlx.
package ormtest
