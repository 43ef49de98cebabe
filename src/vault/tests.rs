//! The wall's own rules: errors, redirects, body caps, TTL clamps, the
//! issue rate, TLS roots and the operation table.

use std::time::Duration;

use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::error::{classify, transport_reason};
use super::guard::{IssueBucket, server_ttl, valid_lease_id};
use super::ops::{Kind, LoginWords, Op};
use super::transport::{push_capped, redirect_target};
use super::{DEFAULT_MAX_RESPONSE, LoginRequest, MAX_TTL, MIN_TTL, Vault};
use crate::auth::approle::WORDS as APPROLE;
use crate::config::VaultConfig;
use crate::secret::LeaseId;

fn op() -> Op {
    Op::db_creds("database", "api")
}

#[test]
fn forbidden_names_missing_capability() {
    let e = classify(
        &op(),
        &"http://127.0.0.1:1".parse().unwrap(),
        ClientError::APIError { code: 403, errors: vec!["permission denied".into()] },
    );
    let msg = e.to_string();
    assert!(msg.contains("`read` on `database/creds/api`"), "{msg}");
    assert!(!e.is_transient());
    assert!(e.is_forbidden());
}

#[test]
fn bodies_never_reach_errors() {
    let body = r#"{"data":{"password":"p4ssw0rd-SECRET"},"oops"#;
    let e = classify(
        &op(),
        &"http://127.0.0.1:1".parse().unwrap(),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ResponseParseError {
                source: anyhow::anyhow!("eof"),
                content: Some(body.into()),
            },
        },
    );
    assert!(!format!("{e} {e:?}").contains("p4ssw0rd"));
    let e = classify(
        &op(),
        &"http://127.0.0.1:1".parse().unwrap(),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code: 502, content: Some(body.into()) },
        },
    );
    assert!(!format!("{e} {e:?}").contains("p4ssw0rd"));
    assert!(e.is_transient());
}

/// A server's `errors` text imitating an audit line, with quotes,
/// backslashes and invisible line breaks: the error shows it as one
/// quoted, escaped string that ends the message, never as bare words.
#[test]
fn a_servers_error_text_is_quoted_and_escaped() {
    let forged = "x\" vaultlet::audit: socket read uid=4242 gid=0 pid=1 exe=node secret=db version=- \
                  outcome=denied\u{2028}\\\u{202e}";
    let e = classify(
        &op(),
        &"http://127.0.0.1:1".parse().unwrap(),
        ClientError::APIError { code: 500, errors: vec![forged.into(), "second\nline".into()] },
    );
    let msg = e.to_string();
    let (_, said) = msg.split_once("(500): ").expect(&msg);
    assert!(said.starts_with('"') && said.ends_with('"'), "{msg}");
    assert!(!msg.ends_with("outcome=denied"), "{msg}");
    assert!(!msg.contains(['\u{2028}', '\u{202e}', '\n']), "{msg:?}");
    // Inside the quotes, every quote is escaped.
    let inner = &said[1..said.len() - 1];
    let mut escaped = false;
    for c in inner.chars() {
        assert!(escaped || c != '"', "an unescaped quote ends the server's text early: {msg}");
        escaped = !escaped && c == '\\';
    }
    // What callers match on still matches.
    assert!(msg.contains("vaultlet::audit"), "the text is kept, quoted: {msg}");
    let gone = classify(
        &op(),
        &"http://127.0.0.1:1".parse().unwrap(),
        ClientError::APIError { code: 400, errors: vec!["lease not found".into()] },
    );
    assert!(gone.is_lease_gone(), "{gone}");
    assert!(gone.to_string().ends_with("(400): \"lease not found\""), "{gone}");
    let silent =
        classify(&op(), &"http://127.0.0.1:1".parse().unwrap(), ClientError::APIError { code: 502, errors: vec![] });
    assert!(silent.to_string().ends_with("(502): no reason given"), "{silent}");
}

#[test]
fn a_transport_cause_is_quoted() {
    let e = std::io::Error::other("certificate not valid for name \"vault\"; outcome=denied");
    let r = transport_reason(&e);
    assert_eq!(r, r#""certificate not valid for name \"vault\"; outcome=denied""#);
}

#[test]
fn long_multibyte_errors_are_cut_without_panicking() {
    let e = classify(
        &op(),
        &"http://127.0.0.1:1".parse().unwrap(),
        ClientError::APIError { code: 500, errors: vec![format!("a{}", "é".repeat(400))] },
    );
    assert!(e.to_string().len() < 1000);
}

const TEST_CA: &str = include_str!("../../tests/fixtures/hostile-ca.pem");

fn url(s: &str) -> reqwest::Url {
    s.parse().unwrap()
}

#[test]
fn redirect_is_followed_only_to_a_configured_address_and_never_down_to_http() {
    let allowed = [url("https://a.example:8200"), url("https://b.example:8200"), url("http://127.0.0.1:8200")];
    let from = url("https://a.example:8200/v1/auth/approle/login");
    let ok = redirect_target(&from, "https://b.example:8200/v1/auth/approle/login", &allowed).unwrap();
    assert_eq!(ok.as_str(), "https://b.example:8200/v1/auth/approle/login");
    // Relative locations stay on the same origin.
    assert!(redirect_target(&from, "/v1/x", &allowed).is_ok());
    for bad in [
        "https://evil.example:8200/v1/auth/approle/login",
        "https://b.example:8201/v1/x",
        "http://a.example:8200/v1/x",
        // Configured, but plain http reached from https: a downgrade.
        "http://127.0.0.1:8200/v1/x",
        "//evil.example/v1/x",
    ] {
        let e = redirect_target(&from, bad, &allowed).unwrap_err();
        assert!(e.to_string().contains("not followed"), "{bad}: {e}");
    }
    let e = redirect_target(&from, "http://127.0.0.1:8200/v1/x", &allowed).unwrap_err();
    assert!(e.to_string().contains("leave https"), "{e}");
}

#[test]
fn body_cap_refuses_one_byte_more_and_keeps_what_fits() {
    let mut buf = Zeroizing::new(Vec::new());
    for _ in 0..4 {
        push_capped(&mut buf, &[7u8; 256], 1024).unwrap();
    }
    assert_eq!(buf.len(), 1024);
    assert!(buf.capacity() <= 1024);
    assert!(push_capped(&mut buf, &[1], 1024).is_err());
    assert_eq!(buf.len(), 1024);
}

#[test]
fn absurd_ttls_are_clamped() {
    assert_eq!(server_ttl(Kind::DbCreds, u64::MAX), MAX_TTL);
    assert_eq!(server_ttl(Kind::DbCreds, 0), MIN_TTL);
    assert_eq!(server_ttl(Kind::Login, 3600), Duration::from_secs(3600));
}

#[test]
fn lease_ids_that_would_steer_the_path_are_refused() {
    assert!(valid_lease_id("database/creds/api/AbC.12-x_y"));
    for bad in ["", "/database/creds/api/x", "database/../../auth/token/revoke-self", "a//b", "a/b?c", "a/b#c", "a b"] {
        assert!(!valid_lease_id(bad), "{bad}");
    }
}

#[tokio::test(start_paused = true)]
async fn issue_bucket_caps_the_rate_after_the_burst() {
    let b = IssueBucket::new(5.0, 10.0);
    let t0 = tokio::time::Instant::now();
    for _ in 0..25 {
        b.take().await;
    }
    // 5 at once, then 20 at 10 per second.
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1990) && took <= Duration::from_millis(2100), "{took:?}");
}

fn cfg(addr: &str, ca: Option<&str>) -> VaultConfig {
    VaultConfig {
        addresses: vec![url(addr)],
        ca_cert: ca.map(Into::into),
        namespace: None,
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        client_cert: None,
        max_response_size: DEFAULT_MAX_RESPONSE,
    }
}

#[test]
fn missing_system_ca_certificates_name_the_paths_and_the_fix() {
    let nowhere = ["/nonexistent/vaultlet-test/ca.crt", "/nonexistent/vaultlet-test/cert.pem"];
    let Err(e) = Vault::with_system_roots(&cfg("https://vault.example:8200", None), &nowhere) else {
        panic!("built a client with no roots")
    };
    let msg = e.to_string();
    assert!(msg.contains(nowhere[0]) && msg.contains(nowhere[1]), "{msg}");
    assert!(msg.contains("ca-certificates") && msg.contains("vault.ca_cert"), "{msg}");
    // Plain http to loopback needs no roots at all.
    assert!(Vault::with_system_roots(&cfg("http://127.0.0.1:8200", None), &nowhere).is_ok());
}

#[test]
fn configured_ca_needs_no_system_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, TEST_CA).unwrap();
    let nowhere = ["/nonexistent/vaultlet-test/ca.crt"];
    let c = cfg("https://vault.example:8200", Some(ca.to_str().unwrap()));
    assert!(Vault::with_system_roots(&c, &nowhere).is_ok());
}

#[test]
fn operation_names_are_the_published_metric_labels() {
    // Users scrape these label values: renaming one breaks dashboards.
    let names: Vec<&str> = Kind::ALL.iter().map(|k| k.spec().name).collect();
    assert_eq!(
        names,
        [
            "login",
            "wrap_lookup",
            "unwrap",
            "renew_self",
            "lookup_self",
            "revoke_self",
            "pki_issue",
            "pki_revoke",
            "db_creds",
            "db_role",
            "lease_renew",
            "lease_lookup",
            "lease_revoke",
            "kv_read",
            "capabilities_self",
        ]
    );
}

#[test]
fn issuing_operations_are_never_sent_twice() {
    for k in Kind::ALL {
        let s = k.spec();
        if s.issues {
            assert!(!s.idempotent, "{}", s.name);
        }
    }
    // Unwrapping is single-use although it issues nothing new.
    assert!(!Kind::Unwrap.spec().idempotent);
    assert_eq!(Kind::ALL.iter().filter(|k| k.spec().issues).count(), 3);
}

#[test]
fn error_words_name_what_was_acted_on() {
    let lease = LeaseId::new("database/creds/api/AbC123".into());
    assert_eq!(Op::lease_renew(&lease).what, "lease renewal of database/creds/api");
    assert_eq!(Op::lease_renew(&lease).path, "sys/leases/renew/database/creds/api");
    assert_eq!(Op::lease_lookup(&lease).path, "sys/leases/lookup");
    assert_eq!(Op::kv_read("secret", "app", 2).path, "secret/data/app");
    assert_eq!(Op::kv_read("kv", "app", 1).path, "kv/app");
    assert_eq!(Op::kv_read("secret", "app", 2).what, "kv secret secret/app");
    assert_eq!(Op::pki_issue("pki", "web").what, "certificate pki/issue/web");
    assert_eq!(Op::login("approle", APPROLE).what, "AppRole login");
    assert_eq!(Op::login("approle", APPROLE).path, "auth/approle/login");
}

/// The method's words reach the login's errors; AppRole's are the ones
/// vaultlet always wrote.
#[test]
fn a_refused_login_names_the_method_and_what_to_check() {
    let op = Op::login("approle", APPROLE);
    assert_eq!(op.capability(), "none (check role_id and secret_id)");
    for code in [400, 403] {
        let e = classify(
            &op,
            &"http://127.0.0.1:1".parse().unwrap(),
            ClientError::APIError { code, errors: vec!["invalid role or secret ID".into()] },
        );
        assert_eq!(
            e.to_string(),
            format!(
                "vault refused AppRole login ({code}): \"invalid role or secret ID\" — check the role_id and \
                 secret_id files and that the secret_id has not expired or been used up"
            )
        );
    }
    // Another method speaks of its own credentials.
    let jwt = LoginWords { method: "JWT", credentials: "the role and the token", fix: "check the token file" };
    let e = classify(
        &Op::login("jwt", jwt),
        &"http://127.0.0.1:1".parse().unwrap(),
        ClientError::APIError { code: 403, errors: vec![] },
    );
    assert_eq!(e.to_string(), "vault refused JWT login (403): no reason given — check the token file");
}

/// A login body holds exactly the method's fields, as one JSON object.
#[test]
fn a_login_body_is_the_methods_fields_in_json() {
    let req = LoginRequest::new(APPROLE)
        .field("role_id", "r-1".to_owned().into())
        .field("secret_id", "s\"2".to_owned().into());
    let body: serde_json::Value = serde_json::from_slice(&req.body()).unwrap();
    assert_eq!(body, serde_json::json!({"role_id": "r-1", "secret_id": "s\"2"}));
    assert_eq!(req.body().capacity(), req.body().len(), "written once, at its size");
}

#[test]
fn lease_gone_is_recognised() {
    let e = classify(
        &op(),
        &"http://127.0.0.1:1".parse().unwrap(),
        ClientError::APIError { code: 400, errors: vec!["lease not found".into()] },
    );
    assert!(e.is_lease_gone());
}
