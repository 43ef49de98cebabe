//! The config's value types: each one knows how it is spelled in the file.
//!
//! Every setting that is more than a plain string, number or path has a type
//! here that implements `Deserialize` and refuses a bad spelling itself, with
//! a message that says how to write it and never repeats the value. The
//! loader (`check.rs`) then keeps only what one value cannot know alone:
//! checks across keys (`allow_insecure_http` for an `http://` address, a
//! `reissue_before` shorter than the `ttl`), files on disk, template
//! references.
//!
//! They deserialize from what toml hands them, so they can be read on their
//! own in tests (`toml::Value` is a deserializer) and inside `raw.rs`'s
//! `Checked`, which records a refusal instead of stopping the whole file.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{EnvFormat, OnChange, RevokeOld};

/// The message for a duration that does not parse (tests match on it).
pub const NOT_A_DURATION: &str = "not a duration; write e.g. \"30s\", \"5m\", \"1h30m\"";

/// A length of time greater than zero: `"250ms"`, `"30s"`, `"5m"`,
/// `"1h30m"`, `"2d"`, a bare number of seconds (`"45"`), or any other
/// spelling `humantime` reads (`"1h 30m"`, `"2days"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HumanDuration(pub Duration);

impl TryFrom<String> for HumanDuration {
    type Error = &'static str;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match parse_duration(&s) {
            Some(d) if !d.is_zero() => Ok(HumanDuration(d)),
            Some(_) => Err("must be greater than zero"),
            None => Err(NOT_A_DURATION),
        }
    }
}

/// Parses a duration as the config writes it; zero is allowed here (the
/// socket's `?wait=` uses this too). A bare number is seconds, which
/// humantime would refuse for want of a unit; everything else is humantime's.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).ok()
}

/// A file mode in octal (`"0600"`, `"600"`, `"0o640"`) that grants nothing
/// to others: files and sockets hold secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct FileMode(pub u32);

impl TryFrom<String> for FileMode {
    type Error = &'static str;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
            Ok(m) if m <= 0o777 && m & 0o7 == 0 => Ok(FileMode(m)),
            Ok(m) if m <= 0o777 => Err("must not grant access to others (last digit must be 0)"),
            _ => Err("not an octal file mode; write e.g. \"0600\""),
        }
    }
}

/// A signal `[exec]` may send, by name with or without `SIG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SignalName(pub i32);

impl TryFrom<String> for SignalName {
    type Error = &'static str;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        super::signal_number(&s)
            .map(SignalName)
            .ok_or("not a signal vaultlet forwards; use SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1 or SIGUSR2")
    }
}

/// `vault.address`: one `http(s)://host[:port]` URL or a list of them, tried
/// in order. Whether plain http is allowed depends on
/// `vault.allow_insecure_http`, so that check is the loader's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultAddresses(pub Vec<reqwest::Url>);

impl<'de> Deserialize<'de> for VaultAddresses {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The name shows in toml's message for a value of the wrong type.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let list = match OneOrMany::deserialize(d)? {
            OneOrMany::One(a) => vec![a],
            OneOrMany::Many(l) => l,
        };
        if list.is_empty() {
            return Err(serde::de::Error::custom("needs at least one address"));
        }
        let mut out = Vec::with_capacity(list.len());
        for a in list {
            match reqwest::Url::parse(&a) {
                Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() => out.push(u),
                _ => {
                    return Err(serde::de::Error::custom("not an http(s) URL like \"https://vault.internal:8200\""));
                }
            }
        }
        Ok(VaultAddresses(out))
    }
}

/// `metrics.listen`: a TCP address with a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ListenAddress(pub SocketAddr);

impl TryFrom<String> for ListenAddress {
    type Error = &'static str;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse().map(ListenAddress).map_err(|_| "not an address like \"127.0.0.1:9102\"")
    }
}

/// A size from 4 KiB to 64 MiB: bytes as a number, or `"512KiB"`, `"4MiB"`,
/// `"65536B"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseSize(pub usize);

impl<'de> Deserialize<'de> for ResponseSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The name shows in toml's message for a value of the wrong type.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum RawSize {
            Bytes(u64),
            Text(String),
        }
        let n = match RawSize::deserialize(d)? {
            RawSize::Bytes(n) => Some(n),
            RawSize::Text(t) => {
                let t = t.trim();
                let (num, mult) = [("KiB", 1u64 << 10), ("MiB", 1 << 20), ("B", 1)]
                    .iter()
                    .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n.trim(), *m)))
                    .unwrap_or((t, 1));
                num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult))
            }
        };
        match n {
            Some(n) if ((4 << 10)..=(64 << 20)).contains(&n) => Ok(ResponseSize(n as usize)),
            Some(_) => Err(serde::de::Error::custom("must be between 4KiB and 64MiB")),
            None => Err(serde::de::Error::custom("not a size; write e.g. \"1MiB\", \"512KiB\" or a number of bytes")),
        }
    }
}

/// A limit on connections or waiters: 1 to 1,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct Count(pub usize);

impl TryFrom<i64> for Count {
    type Error = &'static str;

    fn try_from(n: i64) -> Result<Self, Self::Error> {
        match usize::try_from(n) {
            Ok(c) if (1..=1_000_000).contains(&c) => Ok(Count(c)),
            _ => Err("must be a whole number from 1 to 1000000"),
        }
    }
}

// === the string options: serde enums with the config's messages ===

impl TryFrom<String> for EnvFormat {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        EnvFormat::ALL.iter().find(|(n, _)| *n == s).map(|(_, f)| *f).ok_or_else(|| {
            let names: Vec<&str> = EnvFormat::ALL.iter().map(|(n, _)| *n).collect();
            format!("must be one of {}", names.join(", "))
        })
    }
}

impl TryFrom<String> for OnChange {
    type Error = &'static str;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "restart" => Ok(OnChange::Restart),
            "signal" => Ok(OnChange::Signal),
            "none" => Ok(OnChange::None),
            _ => Err("must be \"restart\", \"signal\" or \"none\""),
        }
    }
}

impl TryFrom<String> for RevokeOld {
    type Error = &'static str;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "drain" => Ok(RevokeOld::Drain),
            "never" => Ok(RevokeOld::Never),
            _ => Err("must be \"drain\" or \"never\""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `v` (a TOML value) as `T`, the way a config key is read.
    fn read<T: serde::de::DeserializeOwned>(v: &str) -> Result<T, String> {
        let v: toml::Value = toml::from_str::<toml::Table>(&format!("v = {v}")).unwrap()["v"].clone();
        T::deserialize(v).map_err(|e| e.message().to_owned())
    }

    /// The parser before humantime, kept as the reference: every spelling
    /// it accepted must mean the same now.
    fn legacy(s: &str) -> Option<Duration> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        if let Ok(secs) = s.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        let (mut total, mut rest) = (Duration::ZERO, s);
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return None;
            }
            let n: u64 = rest[..digits].parse().ok()?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            total = total.checked_add(match &rest[..unit_len] {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.checked_mul(60)?),
                "h" => Duration::from_secs(n.checked_mul(3600)?),
                "d" => Duration::from_secs(n.checked_mul(86400)?),
                _ => return None,
            })?;
            rest = &rest[unit_len..];
        }
        Some(total)
    }

    #[test]
    fn durations_accept_every_old_spelling_and_humantime_ones() {
        let d = |s: &str| read::<HumanDuration>(&format!("{s:?}")).map(|h| h.0);
        for (s, want) in [
            ("30s", 30),
            ("1h30m", 5400),
            ("45", 45),
            ("+45", 45),
            (" 5m ", 300),
            ("2d", 172_800),
            ("1d2h3m4s", 93_784),
            ("1h 30m", 5400),
            ("5 m", 300),
            ("2days", 172_800),
        ] {
            assert_eq!(d(s), Ok(Duration::from_secs(want)), "{s}");
        }
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("1s500ms"), Ok(Duration::from_millis(1500)));
        for bad in ["m", "3x", "", "soon", "5 parsecs", "-5s", "1.5.5h"] {
            assert_eq!(d(bad), Err(NOT_A_DURATION.to_owned()), "{bad:?}");
        }
        for zero in ["0", "0s", "0ms", "0h0m"] {
            assert_eq!(d(zero), Err("must be greater than zero".to_owned()), "{zero}");
        }
        assert!(read::<HumanDuration>("30").unwrap_err().contains("expected a string"), "a bare TOML integer");
    }

    proptest::proptest! {
        /// Any run of number-unit pairs the old parser read means the same
        /// duration now.
        #[test]
        fn humantime_reads_old_spellings_the_same(parts in proptest::collection::vec((0u64..100_000, 0usize..5), 1..5)) {
            let s: String = parts.iter().map(|(n, u)| format!("{n}{}", ["ms", "s", "m", "h", "d"][*u])).collect();
            proptest::prop_assert_eq!(parse_duration(&s), legacy(&s), "{}", s);
        }
    }

    #[test]
    fn file_modes_are_octal_and_closed_to_others() {
        for (s, want) in
            [("\"0600\"", 0o600), ("\"600\"", 0o600), ("\"0o640\"", 0o640), ("\"0\"", 0), ("\"0770\"", 0o770)]
        {
            assert_eq!(read::<FileMode>(s), Ok(FileMode(want)), "{s}");
        }
        for s in ["\"0644\"", "\"0601\"", "\"7\""] {
            assert_eq!(
                read::<FileMode>(s),
                Err("must not grant access to others (last digit must be 0)".into()),
                "{s}"
            );
        }
        for s in ["\"0800\"", "\"rw-------\"", "\"01600\"", "\"\""] {
            assert_eq!(read::<FileMode>(s), Err("not an octal file mode; write e.g. \"0600\"".into()), "{s}");
        }
        assert!(read::<FileMode>("600").is_err(), "an integer is not a mode string (0600 would be decimal 600)");
    }

    #[test]
    fn signals_by_name_with_or_without_sig() {
        for (s, n) in
            [("SIGHUP", 1), ("HUP", 1), ("SIGINT", 2), ("QUIT", 3), ("SIGUSR1", 10), ("USR2", 12), ("SIGTERM", 15)]
        {
            assert_eq!(read::<SignalName>(&format!("{s:?}")), Ok(SignalName(n)), "{s}");
        }
        for s in ["SIGKILL", "sighup", "9", "SIG", ""] {
            assert!(
                read::<SignalName>(&format!("{s:?}")).unwrap_err().contains("not a signal vaultlet forwards"),
                "{s}"
            );
        }
    }

    #[test]
    fn vault_addresses_are_http_urls_with_a_host() {
        let one = read::<VaultAddresses>("\"https://vault.internal:8200\"").unwrap();
        assert_eq!(one.0.len(), 1);
        assert_eq!(one.0[0].host_str(), Some("vault.internal"));
        let two = read::<VaultAddresses>("[\"https://a:8200\", \"http://127.0.0.1:8200\"]").unwrap();
        assert_eq!(two.0.iter().map(|u| u.scheme()).collect::<Vec<_>>(), ["https", "http"]);
        for bad in ["\"vault.internal:8200\"", "\"ftp://vault\"", "\"https://\"", "[\"https://a\", \"nope\"]"] {
            assert_eq!(
                read::<VaultAddresses>(bad),
                Err("not an http(s) URL like \"https://vault.internal:8200\"".into()),
                "{bad}"
            );
        }
        assert_eq!(read::<VaultAddresses>("[]"), Err("needs at least one address".into()));
        assert!(read::<VaultAddresses>("5").is_err());
    }

    #[test]
    fn listen_addresses_need_ip_and_port() {
        assert_eq!(read::<ListenAddress>("\"127.0.0.1:9102\"").unwrap().0.port(), 9102);
        assert!(read::<ListenAddress>("\"[::1]:9102\"").is_ok());
        for bad in ["\"127.0.0.1\"", "\"localhost:9102\"", "\":9102\""] {
            assert_eq!(read::<ListenAddress>(bad), Err("not an address like \"127.0.0.1:9102\"".into()), "{bad}");
        }
    }

    #[test]
    fn response_sizes_take_bytes_or_units_within_bounds() {
        for (s, n) in [
            ("65536", 65536),
            ("\"512KiB\"", 512 << 10),
            ("\"4MiB\"", 4 << 20),
            ("\"4096B\"", 4096),
            ("\"64MiB\"", 64 << 20),
        ] {
            assert_eq!(read::<ResponseSize>(s), Ok(ResponseSize(n)), "{s}");
        }
        for s in ["\"1KiB\"", "\"65MiB\"", "0", "4095"] {
            assert_eq!(read::<ResponseSize>(s), Err("must be between 4KiB and 64MiB".into()), "{s}");
        }
        for s in ["\"lots\"", "\"99999999999999999999MiB\"", "\"1GiB\""] {
            assert!(read::<ResponseSize>(s).unwrap_err().starts_with("not a size"), "{s}");
        }
    }

    #[test]
    fn counts_are_one_to_a_million() {
        assert_eq!(read::<Count>("1"), Ok(Count(1)));
        assert_eq!(read::<Count>("1000000"), Ok(Count(1_000_000)));
        for bad in ["0", "-5", "1000001"] {
            assert_eq!(read::<Count>(bad), Err("must be a whole number from 1 to 1000000".into()), "{bad}");
        }
        assert!(read::<Count>("\"10\"").is_err());
    }

    #[test]
    fn string_options_accept_their_names_only() {
        for (s, f) in EnvFormat::ALL {
            assert_eq!(read::<EnvFormat>(&format!("{s:?}")), Ok(f));
        }
        let e = read::<EnvFormat>("\"dotenv\"").unwrap_err();
        assert_eq!(e, "must be one of sh, docker, systemd, dotenv-node, dotenv-python");
        assert_eq!(read::<OnChange>("\"restart\""), Ok(OnChange::Restart));
        assert_eq!(read::<OnChange>("\"signal\""), Ok(OnChange::Signal));
        assert_eq!(read::<OnChange>("\"none\""), Ok(OnChange::None));
        assert_eq!(read::<OnChange>("\"Restart\""), Err("must be \"restart\", \"signal\" or \"none\"".into()));
        assert_eq!(read::<RevokeOld>("\"drain\""), Ok(RevokeOld::Drain));
        assert_eq!(read::<RevokeOld>("\"never\""), Ok(RevokeOld::Never));
        assert_eq!(read::<RevokeOld>("\"always\""), Err("must be \"drain\" or \"never\"".into()));
    }
}
