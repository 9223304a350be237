CREATE TABLE accounts (
  id      BIGSERIAL PRIMARY KEY,
  owner   TEXT NOT NULL,
  balance BIGINT NOT NULL
);
