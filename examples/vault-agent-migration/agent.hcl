# Vault Agent (or `bao agent`) as many apps run it today: AppRole auto-auth
# and one template that renders an env file with a leased PostgreSQL
# credential and a KV v2 value. vaultlet.toml next to this file does the same
# job; README.md maps each stanza to its vaultlet key.

pid_file = "/run/vault-agent/agent.pid"

vault {
  address = "https://vault.internal:8200"
  ca_cert = "/etc/vault-agent/vault-ca.pem"
  retry {
    num_retries = 12
  }
}

auto_auth {
  method "approle" {
    mount_path = "auth/approle"
    config = {
      role_id_file_path                   = "/etc/vault-agent/role_id"
      secret_id_file_path                 = "/etc/vault-agent/secret_id"
      remove_secret_id_file_after_reading = false
    }
  }
  # No sink: the token stays inside the agent.
}

template_config {
  # How often KV (non-leased) secrets are re-read.
  static_secret_render_interval = "5m"
  # Give up (exit) when Vault stays unreachable past vault.retry.
  exit_on_retry_failure = true
}

template {
  destination          = "/run/app/app.env"
  perms                = "0600"
  error_on_missing_key = true
  contents             = <<-EOT
    {{ with secret "database/creds/api" -}}
    DATABASE_URL=postgresql://{{ .Data.username }}:{{ .Data.password }}@db.internal:5432/app
    {{ end -}}
    {{ with secret "secret/data/api" -}}
    STRIPE_KEY={{ .Data.data.stripe_key }}
    {{ end -}}
    EOT
}
