-- Credentials of calling services. A key belongs to a tenant; an operator key (tenant '*',
-- which no tenant id can be) acts for the tenant a request names. Only a hash of a key's
-- secret is kept; a client-certificate principal keeps the SHA-256 of its certificate instead.
CREATE TABLE api_keys (
    tenant_id           text        NOT NULL,
    key_id              text        NOT NULL,
    name                text        NOT NULL DEFAULT '',
    scopes              text[]      NOT NULL,
    secret_sha256       bytea,
    client_cert_sha256  bytea,
    create_time         timestamptz NOT NULL DEFAULT now(),
    revoke_time         timestamptz,
    PRIMARY KEY (tenant_id, key_id),
    CONSTRAINT api_keys_credential_check
        CHECK ((secret_sha256 IS NULL) <> (client_cert_sha256 IS NULL))
);

CREATE UNIQUE INDEX api_keys_client_cert_key ON api_keys (tenant_id, client_cert_sha256)
    WHERE client_cert_sha256 IS NOT NULL;
