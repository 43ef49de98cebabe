# Least-privilege policy for vaultlet's AppRole (test bed and demo).
#
# Mount and role names here match the test bed: database engine at
# "database/" with role "api", KV v2 at "secret/", KV v1 at "kv/".
# Adapt the paths to your own mounts and roles (see README.md).
#
# Not listed because no policy is needed or the built-in "default" policy
# already grants it:
#   POST auth/approle/login   - login is unauthenticated (role_id + secret_id)
#   POST sys/wrapping/unwrap  - "default" policy; called with the wrapping
#                               token itself when the secret_id is wrapped

# GET database/creds/api - lease dynamic PostgreSQL credentials.
path "database/creds/api" {
  capabilities = ["read"]
}

# GET database/roles/api - optional: read once at start to learn the role's
# max_ttl, so even the first credential is replaced `rotate_before` ahead of
# it. Without it vaultlet learns max_ttl from the first capped renewal. The
# role holds no secret (its SQL statements and TTLs).
path "database/roles/api" {
  capabilities = ["read"]
}

# GET secret/data/api - read the KV v2 secret. Only the data path is read;
# vaultlet never touches secret/metadata/*, so it is not granted.
path "secret/data/api" {
  capabilities = ["read"]
}

# GET kv/api - read the KV v1 secret.
path "kv/api" {
  capabilities = ["read"]
}

# PUT sys/leases/renew/<lease_id> - renew database credential leases before
# they expire. vaultlet puts the lease id in the path, so the grant is scoped
# to the leases of database/creds/api; never grant plain "sys/leases/renew"
# (the lease id travels in the body there, and it covers every lease).
path "sys/leases/renew/database/creds/api/*" {
  capabilities = ["update"]
}

# PUT sys/leases/revoke/<lease_id> - revoke leases vaultlet no longer needs
# (on shutdown with revoke_on_shutdown, or old leases after a credential
# rotation). Scoped the same way: plain "sys/leases/revoke" would let the
# token revoke any lease in Vault.
path "sys/leases/revoke/database/creds/api/*" {
  capabilities = ["update"]
}

# PUT sys/leases/lookup {"lease_id": ...} - verify that a held database lease
# still exists (every verify_every, default 60 s, and when the app reports a
# credential the database refused), so a lease an operator revoked is noticed
# in seconds. This call has no path form (the lease id travels in the body),
# so the grant is scoped by its parameter instead: only ids of the leases of
# database/creds/api. Looking up a lease reveals its times, never its secret.
path "sys/leases/lookup" {
  capabilities = ["update"]
  allowed_parameters = {
    "lease_id" = ["database/creds/api/*"]
  }
}

# Token self-management. The "default" policy already grants these three;
# they are repeated so this policy still works if a role is created with
# token_no_default_policy=true.

# POST auth/token/renew-self - keep vaultlet's own token alive.
path "auth/token/renew-self" {
  capabilities = ["update"]
}

# GET auth/token/lookup-self - inspect its own token (TTL, renewable).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

# POST auth/token/revoke-self - give up its token on shutdown.
path "auth/token/revoke-self" {
  capabilities = ["update"]
}

# POST pki/issue/internal - issue TLS certificates ([secret.NAME] pki = {...}).
# Each call mints a new certificate and private key; the CA key never leaves
# Vault.
path "pki/issue/internal" {
  capabilities = ["update"]
}

# POST pki/revoke - only needed with revoke_old = true or revoke_on_shutdown
# for PKI secrets (revocation grows the CRL, so it is opt-in). Drop this
# block when revocation is off.
path "pki/revoke" {
  capabilities = ["update"]
}
