//! The `vaultlet` binary: command line, logging, exit codes. Nothing else.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use vaultlet::Config;

/// Exit code for a bad configuration or usage (BSD `EX_USAGE`).
const EX_CONFIG: u8 = 64;

/// A secrets sidecar for HashiCorp Vault and OpenBao.
///
/// vaultlet logs in (AppRole, JWT or Kubernetes), leases database
/// credentials and certificates and reads KV secrets, keeps them renewed and
/// replaced in time, and hands them to your app over a Unix socket and as
/// env files written with mode 0600.
#[derive(Parser)]
#[command(version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "VAULTLET_LOG_FORMAT")]
    log_format: LogFormat,

    /// Log filter, e.g. "info" or "info,vaultlet::lease=debug".
    #[arg(long, global = true, default_value = "info", env = "VAULTLET_LOG")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar: log in, fetch and renew secrets, serve the socket,
    /// write env files. Stops cleanly on SIGTERM or SIGINT.
    Run {
        /// Configuration file.
        #[arg(short, long, env = "VAULTLET_CONFIG")]
        config: PathBuf,
    },
    /// Run a program with secrets in its environment (for apps that cannot
    /// read the socket): `vaultlet exec -c FILE -- node server.js`. Signals
    /// are forwarded, the program's exit code is passed through, and when
    /// the environment changes the program is restarted, signalled or left
    /// alone as `[exec] on_change` says.
    Exec {
        /// Configuration file (needs an `[exec]` table).
        #[arg(short, long, env = "VAULTLET_CONFIG")]
        config: PathBuf,
        /// The program and its arguments (after `--`); default `exec.command`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Validate a configuration file without touching the network. Exits 0
    /// when it is valid, 64 otherwise, naming the key and line at fault.
    Check {
        /// Configuration file.
        #[arg(short, long, env = "VAULTLET_CONFIG")]
        config: PathBuf,
    },
    /// Print the least-privilege Vault policy (HCL) a configuration needs:
    /// exactly the paths and capabilities of the requests vaultlet will
    /// send, one comment per grant naming the secret that needs it. With
    /// `--check`, ask Vault instead what the token in VAULT_TOKEN (or
    /// BAO_TOKEN) may do, and name each capability it lacks (exit 1).
    Policy {
        /// Configuration file.
        #[arg(short, long, env = "VAULTLET_CONFIG")]
        config: PathBuf,
        /// Check the token in VAULT_TOKEN or BAO_TOKEN against the policy
        /// (`sys/capabilities-self`) instead of printing it.
        #[arg(long)]
        check: bool,
    },
    /// Bring an existing set-up over to vaultlet: `vaultlet import env FILE
    /// --kv MOUNT/PATH` for an app's .env file.
    Import {
        #[command(subcommand)]
        what: Import,
    },
    /// Exit 0 if a running vaultlet holds every secret, 1 otherwise (with
    /// the reasons on stderr). Prints no value: fit for health checks.
    Ready {
        /// The socket of the running vaultlet.
        #[arg(long, env = "VAULTLET_SOCKET", default_value = vaultlet::config::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Refuse to ask unless the socket is served by this uid (checked with SO_PEERCRED).
        #[arg(long, value_name = "UID", env = "VAULTLET_EXPECT_UID")]
        expect_uid: Option<u32>,
    },
    /// Print a secret from a running vaultlet: `NAME` prints it as JSON,
    /// `NAME.KEY` prints one value (for shell scripts).
    Get {
        /// `NAME` or `NAME.KEY`.
        what: String,
        /// The socket of the running vaultlet.
        #[arg(long, env = "VAULTLET_SOCKET", default_value = vaultlet::config::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Refuse to ask unless the socket is served by this uid (checked with SO_PEERCRED).
        #[arg(long, value_name = "UID", env = "VAULTLET_EXPECT_UID")]
        expect_uid: Option<u32>,
    },
}

#[derive(Subcommand)]
enum Import {
    /// Move the values of an app's .env file into Vault and let vaultlet
    /// write the file instead.
    ///
    /// The file is read the way the app's reader (--format) reads it; a
    /// line whose meaning is not certain is refused, naming the line and
    /// key, and nothing is written (exit 64). The values go to one KV v2
    /// secret (written with the operator's token from VAULT_TOKEN or
    /// BAO_TOKEN); --out gets vaultlet.toml, whose [[env_file]] writes the
    /// same variables back to the same path for the same reader (mode
    /// 0600), and vaultlet.hcl, its least-privilege policy. The AppRole
    /// set-up is printed as commands, or done with --apply (role_id and
    /// secret_id land in --out, mode 0600). Values are never printed.
    Env {
        /// The .env file the app reads today.
        file: PathBuf,
        /// Where the values go in Vault: a KV v2 mount and path.
        #[arg(long, value_name = "MOUNT/PATH")]
        kv: String,
        /// The app's reader: sh, docker, systemd, dotenv-node or dotenv-python.
        #[arg(long, default_value = "dotenv-node")]
        format: String,
        /// The secret's name in vaultlet's configuration.
        #[arg(long, default_value = "app")]
        name: String,
        /// Directory for vaultlet.toml and vaultlet.hcl (created, mode 0700).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The Vault address; default VAULT_ADDR or BAO_ADDR.
        #[arg(long, value_name = "URL")]
        vault: Option<String>,
        /// The AppRole role and policy to create.
        #[arg(long, default_value = "vaultlet")]
        role: String,
        /// The AppRole auth mount.
        #[arg(long, default_value = "approle")]
        approle_mount: String,
        /// Bind the secret_id and the token to this CIDR (repeatable).
        #[arg(long = "cidr", value_name = "CIDR")]
        cidrs: Vec<String>,
        /// Also write the policy and the AppRole role, and fetch role_id and
        /// secret_id into --out.
        #[arg(long)]
        apply: bool,
        /// Show what would be done (keys, files, commands; never values) and
        /// write nothing, in Vault or on disk.
        #[arg(long, conflicts_with = "apply")]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Check { config } => match load(config) {
            Some(c) => {
                println!(
                    "{}: ok ({} secrets, {} files, socket {})",
                    config.display(),
                    c.secrets.len(),
                    c.files.len(),
                    c.socket.as_ref().map_or("off".to_string(), |s| s.path.display().to_string())
                );
                ExitCode::SUCCESS
            }
            None => ExitCode::from(EX_CONFIG),
        },
        Command::Policy { config: path, check } => {
            let Some(config) = load_with(path, Config::load_unprovisioned) else { return ExitCode::from(EX_CONFIG) };
            if *check {
                check_policy(&config)
            } else {
                print!("{}", vaultlet::policy::Policy::of(&config).hcl(&path.display().to_string()));
                ExitCode::SUCCESS
            }
        }
        Command::Import { what } => import(what),
        Command::Ready { socket, expect_uid } => match vaultlet::client::ready(socket, *expect_uid) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vaultlet: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Get { what, socket, expect_uid } => match vaultlet::client::get(socket, what, *expect_uid) {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vaultlet: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Exec { config, command } => with_runtime(config, &cli, |config| async move {
            let code = vaultlet::exec::run(config, command.clone()).await;
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }),
        Command::Run { config } => with_runtime(config, &cli, |config| async move {
            let shutdown = CancellationToken::new();
            tokio::spawn(signals(shutdown.clone()));
            match vaultlet::run(config, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "vaultlet failed");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

/// `vaultlet import`: plan everything, refuse before any write, then write.
fn import(what: &Import) -> ExitCode {
    let Import::Env { file, kv, format, name, out, vault, role, approle_mount, cidrs, apply, dry_run } = what;
    let usage = |msg: String| {
        eprintln!("vaultlet: {msg}");
        ExitCode::from(EX_CONFIG)
    };
    let Some(format) = vaultlet::config::EnvFormat::ALL.iter().find(|(n, _)| n == format).map(|(_, f)| *f) else {
        return usage(format!("--format: unknown reader {format:?} (sh, docker, systemd, dotenv-node, dotenv-python)"));
    };
    let Some((kv_mount, kv_path)) = vaultlet::import::EnvImport::split_kv(kv) else {
        return usage(format!("--kv: {kv:?} is not MOUNT/PATH"));
    };
    let address = vault.clone().or_else(|| ["VAULT_ADDR", "BAO_ADDR"].iter().find_map(|k| std::env::var(k).ok()));
    let Some(address) = address.filter(|a| !a.is_empty()) else {
        return usage("no Vault address: give --vault or set VAULT_ADDR".into());
    };
    let file_abs = match std::path::absolute(file) {
        Ok(p) => p,
        Err(e) => return usage(format!("{}: {e}", file.display())),
    };
    let out = match std::path::absolute(out) {
        Ok(p) => p,
        Err(e) => return usage(format!("{}: {e}", out.display())),
    };
    let text = match vaultlet::import::read_env_file(file) {
        Ok(t) => t,
        Err(e) => return usage(format!("{}: {e}", file.display())),
    };
    let parsed = vaultlet::import::env::parse(&text, format);
    drop(text);
    if !parsed.refused.is_empty() {
        for r in &parsed.refused {
            eprintln!("vaultlet: {}:{r}", file.display());
        }
        return usage(format!(
            "{} lines of {} cannot be imported; nothing was written",
            parsed.refused.len(),
            file.display()
        ));
    }
    if parsed.vars.is_empty() {
        return usage(format!("{}: no variables in it", file.display()));
    }
    let job = vaultlet::import::EnvImport {
        file: file_abs,
        format,
        kv_mount,
        kv_path,
        name: name.clone(),
        address,
        out: out.clone(),
        role: role.clone(),
        approle_mount: approle_mount.clone(),
        cidrs: cidrs.clone(),
    };
    let keys: Vec<String> = parsed.vars.iter().map(|(k, _)| k.clone()).collect();
    let mut plan = job.plan(keys);
    // The configuration must be one vaultlet runs, and its policy comes from it.
    let config = match Config::from_toml_unprovisioned(&out.join("vaultlet.toml"), &plan.config, 0) {
        Ok(loaded) => loaded.config,
        Err(errors) => {
            for e in errors.iter() {
                eprintln!("vaultlet: {e}");
            }
            return usage("the configuration written for these arguments does not check".into());
        }
    };
    plan.policy = vaultlet::policy::Policy::of(&config).hcl(&out.join("vaultlet.toml").display().to_string());
    let targets = ["vaultlet.toml", "vaultlet.hcl"].map(|f| out.join(f));
    if let Some(t) = targets.iter().find(|t| t.exists()) {
        return usage(format!("{} exists; give another --out", t.display()));
    }
    println!("{} variables from {}: {}", plan.keys.len(), file.display(), plan.keys.join(", "));
    println!("KV v2 secret: {}/{} ({} keys)", job.kv_mount, job.kv_path, plan.keys.len());
    if *dry_run {
        println!("\n--- {} ---\n{}", targets[0].display(), plan.config);
        println!("--- {} ---\n{}", targets[1].display(), plan.policy);
        println!("--- AppRole set-up ---\n{}", plan.commands);
        println!("dry run: nothing was written");
        return ExitCode::SUCCESS;
    }
    let Some(token) = operator_token() else {
        return usage("import env writes to Vault with the token in VAULT_TOKEN or BAO_TOKEN; none is set".into());
    };
    let Some(rt) = one_shot_runtime() else { return ExitCode::FAILURE };
    match rt.block_on(vaultlet::import::apply_env(&config, &job, &plan, &parsed.vars, &token, *apply)) {
        Ok(done) => {
            for line in done {
                println!("{line}");
            }
            if !*apply {
                println!("\nNext, set up the AppRole (or run again with --apply):\n{}", plan.commands);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vaultlet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An operator's token for `policy --check` and `import env`, from the
/// environment as for Vault's own CLI; never printed.
fn operator_token() -> Option<secrecy::SecretString> {
    ["VAULT_TOKEN", "BAO_TOKEN"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|t| !t.is_empty()))
        .map(secrecy::SecretString::from)
}

/// A single-threaded runtime for the one-shot commands that ask Vault.
fn one_shot_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .inspect_err(|e| eprintln!("vaultlet: cannot start runtime: {e}"))
        .ok()
}

/// `vaultlet policy --check`: the token comes from the environment, as for
/// Vault's own CLI, and is never printed.
fn check_policy(config: &Config) -> ExitCode {
    let Some(token) = operator_token() else {
        eprintln!("vaultlet: policy --check needs a token in VAULT_TOKEN or BAO_TOKEN");
        return ExitCode::from(EX_CONFIG);
    };
    let Some(rt) = one_shot_runtime() else { return ExitCode::FAILURE };
    match rt.block_on(vaultlet::policy::check(config, &token)) {
        Ok(missing) if missing.is_empty() => {
            println!("the token has every capability this configuration needs");
            ExitCode::SUCCESS
        }
        Ok(missing) => {
            for (path, cap) in &missing {
                println!("missing: {cap:?} on {path:?}");
            }
            eprintln!("vaultlet: the token lacks {} capabilities this configuration needs", missing.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("vaultlet: cannot check the token's capabilities: {e}");
            if e.is_forbidden() {
                eprintln!(
                    "vaultlet: the token asks about itself: give it vaultlet's policies plus `update` on \
                     sys/capabilities-self (the `default` policy has it, but also grants more than vaultlet's role should)"
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// Loads and validates the config (exit 64 on error, before any network
/// I/O), sets up logging, and runs `f` on a runtime of two worker threads:
/// a sidecar mostly waits, but a second thread lets socket reads use a
/// second core under load, at a cost of a few pages of stack.
fn with_runtime<F, Fut>(path: &std::path::Path, cli: &Cli, f: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let Some(config) = load(path) else { return ExitCode::from(EX_CONFIG) };
    init_logging(cli.log_format, &cli.log);
    let method = vaultlet::auth::method_for(&config.auth);
    let mut files = vec![("the config file", path)];
    files.extend(method.credential_files());
    vaultlet::harden::warn_loose_files(&files);
    // Before any secret is in memory.
    if let Err(e) = vaultlet::harden::harden(config.require_memory_lock) {
        eprintln!("vaultlet: {e}");
        return ExitCode::FAILURE;
    }
    match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt.block_on(f(config)),
        Err(e) => {
            eprintln!("vaultlet: cannot start runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config, printing every error in it (one per line) or its
/// warnings to stderr. Logging is not set up yet: a bad config must be
/// reported the same way by every subcommand, before anything else runs.
fn load(path: &std::path::Path) -> Option<Config> {
    load_with(path, Config::load)
}

/// [`load`] with another loader (`policy` and `import` need no
/// provisioned credential files).
fn load_with(
    path: &std::path::Path,
    loader: fn(&std::path::Path) -> Result<vaultlet::config::Loaded, vaultlet::config::ConfigErrors>,
) -> Option<Config> {
    match loader(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("vaultlet: WARNING: {w}");
            }
            Some(loaded.config)
        }
        Err(errors) => {
            for e in errors.iter() {
                eprintln!("vaultlet: {e}");
            }
            None
        }
    }
}

/// Logging goes to stderr (audit lines just after the answer they record,
/// see `src/api/audit_log.rs`). vaultrs, rustify and the HTTP stack are silenced
/// whatever the filter says: they log request details and whole error
/// bodies, which may hold secrets. Lines are written directly: a writer
/// thread for every line was measured to cost more (a preallocated queue of
/// several MiB, cross-thread wake-ups) than the write it saves. Only the
/// socket's audit lines, one per read, are logged and written in batches by
/// a thread of their own.
fn init_logging(format: LogFormat, filter: &str) {
    use tracing_subscriber::EnvFilter;
    let quiet = ",vaultrs=off,rustify=off,rustify_derive=off,reqwest=off,hyper=off,hyper_util=off,rustls=off,h2=off";
    let filter = EnvFilter::try_new(format!("{filter}{quiet}")).unwrap_or_else(|e| {
        eprintln!("vaultlet: ignoring bad log filter ({e}); using info");
        EnvFilter::new(format!("info{quiet}"))
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(vaultlet::api::LogWriter);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
