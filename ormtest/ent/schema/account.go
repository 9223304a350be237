// Package schema is the ent schema of the tests: one table, accounts, the
// same in both databases.
package schema

import (
	"entgo.io/ent"
	"entgo.io/ent/schema/field"
)

// Account is a row of the accounts table.
type Account struct {
	ent.Schema
}

// Fields of Account; the id is ent's default auto-increment integer.
func (Account) Fields() []ent.Field {
	return []ent.Field{
		field.String("owner"),
		field.Int64("balance"),
	}
}
