-- name: CreateAccount :execlastid
INSERT INTO accounts (owner, balance) VALUES (?, ?);

-- name: GetAccount :one
SELECT id, owner, balance FROM accounts WHERE id = ?;

-- name: ListAccounts :many
SELECT id, owner, balance FROM accounts ORDER BY id;

-- name: AddBalance :execrows
UPDATE accounts SET balance = balance + sqlc.arg(amount) WHERE id = sqlc.arg(id);
