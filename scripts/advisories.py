#!/usr/bin/env python3
"""Known-vulnerable dependencies, offline: every crates.io crate version in
Cargo.lock and bench/loadgen/Cargo.lock is checked against the RustSec
advisory snapshot in supply-chain/advisory-db/ (what `cargo deny check
advisories` does with fetching off), then `npm audit` runs on the Node
lockfiles.

Fails (exit 1) on a vulnerability advisory that covers a locked version, or on
a high/critical npm advisory. Informational advisories (unmaintained, unsound,
notice) that cover a locked version are listed and do not fail. An advisory
file or version requirement that does not parse is an error (exit 2): a check
that cannot read its data must not pass.

A version is covered by an advisory when no requirement in its `[versions]`
`patched` or `unaffected` lists matches it (the rustsec crate's rule, used by
cargo-audit and cargo-deny). Requirements are Cargo's syntax, read as
intervals of semver precedence, as the rustsec crate reads them; the one
difference is that partial `>`, `<=` and `=` mean what Cargo means (`> 0` is
`>= 1.0.0`, where rustsec reads `> 0.0.0`; only a withdrawn advisory uses
such a bound). `withdrawn` advisories are skipped, and one whose
`[affected] os` list leaves out Linux is reported as not applicable, since
vaultlet runs on Linux only. `[affected] arch` is not used to narrow: vaultlet
builds for any Linux architecture. `[affected.functions]` is not used either
(no call-graph analysis here), so a covered version counts even if the code
never calls the affected function.

    scripts/advisories.py                    # both lockfiles + npm audit
    scripts/advisories.py --no-npm           # crates only (offline)
    scripts/advisories.py --lockfile X.lock  # only these lockfiles

VAULTLET_REQUIRE_NPM_AUDIT=1 makes an npm audit that cannot run (registry
unreachable or without the audit endpoint) a failure instead of a warning.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB = ROOT / "supply-chain" / "advisory-db"
LOCKFILES = ["Cargo.lock", "bench/loadgen/Cargo.lock"]
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"
TARGET_OS = "linux"
NPM_FAIL_SEVERITIES = ("high", "critical")


class SemverError(ValueError):
    pass


class AdvisoryError(ValueError):
    pass


# === impl Version ===

_NUM = r"0|[1-9][0-9]*"
_IDENT = r"[0-9A-Za-z-]+"
_VERSION = re.compile(
    rf"^({_NUM})\.({_NUM})\.({_NUM})"
    rf"(?:-({_IDENT}(?:\.{_IDENT})*))?"
    rf"(?:\+({_IDENT}(?:\.{_IDENT})*))?$"
)


def _parse_pre(text: str | None) -> tuple:
    """Pre-release identifiers as sortable pairs: numeric ones sort below
    alphanumeric ones and compare as numbers (semver 2.0.0, item 11)."""
    if not text:
        return ()
    out = []
    for ident in text.split("."):
        if ident.isdigit():
            if len(ident) > 1 and ident[0] == "0":
                raise SemverError(f"leading zero in pre-release identifier {ident!r}")
            out.append((0, int(ident), ""))
        else:
            out.append((1, 0, ident))
    return tuple(out)


def _pre_key(pre: tuple) -> tuple:
    # A version without a pre-release is greater than any with one.
    return (1,) if not pre else (0, pre)


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple = ()

    @staticmethod
    def parse(text: str) -> "Version":
        m = _VERSION.match(text.strip())
        if not m:
            raise SemverError(f"not a semver version: {text!r}")
        return Version(int(m[1]), int(m[2]), int(m[3]), _parse_pre(m[4]))

    def key(self) -> tuple:
        # Build metadata is not kept: it never takes part in precedence.
        return (self.major, self.minor, self.patch, _pre_key(self.pre))

    def __lt__(self, other: "Version") -> bool:
        return self.key() < other.key()

    def __le__(self, other: "Version") -> bool:
        return self.key() <= other.key()

    def __gt__(self, other: "Version") -> bool:
        return self.key() > other.key()

    def __ge__(self, other: "Version") -> bool:
        return self.key() >= other.key()

    def __str__(self) -> str:
        s = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            s += "-" + ".".join(str(n) if k == 0 else t for k, n, t in self.pre)
        return s


# === impl Comparator ===

_COMPARATOR = re.compile(r"^(>=|<=|>|<|=|~|\^)?\s*(.*)$", re.S)
_WILDCARD = ("*", "x", "X")


@dataclass(frozen=True)
class Comparator:
    """One Cargo comparator; `minor`/`patch` are None when left out (`1.2`,
    `1.*`). The matching follows Cargo's semver crate field by field."""

    op: str  # "=", ">", ">=", "<", "<=", "~", "^", "*" (wildcard)
    major: int
    minor: int | None
    patch: int | None
    pre: tuple = ()

    @staticmethod
    def parse(text: str) -> "Comparator":
        m = _COMPARATOR.match(text.strip())
        op, rest = m[1], m[2].strip()
        if not rest:
            raise SemverError(f"missing version in {text!r}")
        rest, _, _build = rest.partition("+")
        core, dash, pre_text = rest.partition("-")
        parts = core.split(".")
        if len(parts) > 3:
            raise SemverError(f"too many version parts in {text!r}")
        nums: list[int | None] = []
        wildcard = False
        for p in parts:
            if p in _WILDCARD:
                wildcard = True
                nums.append(None)
            elif re.fullmatch(_NUM, p):
                if wildcard:
                    raise SemverError(f"number after a wildcard in {text!r}")
                nums.append(int(p))
            else:
                raise SemverError(f"bad version part {p!r} in {text!r}")
        if dash and (len(nums) != 3 or wildcard or not pre_text):
            raise SemverError(f"a pre-release needs a full version in {text!r}")
        pre = _parse_pre(pre_text) if dash else ()
        if pre_text and not re.fullmatch(rf"{_IDENT}(?:\.{_IDENT})*", pre_text):
            raise SemverError(f"bad pre-release in {text!r}")
        while len(nums) < 3:
            nums.append(None)
        if wildcard:
            if op not in (None, "="):
                raise SemverError(f"wildcard after an operator in {text!r}")
            if nums[0] is None:
                raise SemverError(f"`*` must stand alone in {text!r}")
            op = "*"
        return Comparator(op or "^", nums[0], nums[1], nums[2], pre)

    def matches(self, v: Version) -> bool:
        op = self.op
        if op in ("=", "*"):
            return self._exact(v)
        if op == ">":
            return self._greater(v)
        if op == ">=":
            return self._exact(v) or self._greater(v)
        if op == "<":
            return self._less(v)
        if op == "<=":
            return self._exact(v) or self._less(v)
        if op == "~":
            return self._tilde(v)
        return self._caret(v)

    def _exact(self, v: Version) -> bool:
        return (
            v.major == self.major
            and self.minor in (None, v.minor)
            and self.patch in (None, v.patch)
            and v.pre == self.pre
        )

    def _greater(self, v: Version) -> bool:
        if v.major != self.major:
            return v.major > self.major
        if self.minor is None:
            return False
        if v.minor != self.minor:
            return v.minor > self.minor
        if self.patch is None:
            return False
        if v.patch != self.patch:
            return v.patch > self.patch
        return _pre_key(v.pre) > _pre_key(self.pre)

    def _less(self, v: Version) -> bool:
        if v.major != self.major:
            return v.major < self.major
        if self.minor is None:
            return False
        if v.minor != self.minor:
            return v.minor < self.minor
        if self.patch is None:
            return False
        if v.patch != self.patch:
            return v.patch < self.patch
        return _pre_key(v.pre) < _pre_key(self.pre)

    def _tilde(self, v: Version) -> bool:
        if v.major != self.major:
            return False
        if self.minor is not None and v.minor != self.minor:
            return False
        if self.patch is not None and v.patch != self.patch:
            return v.patch > self.patch
        return _pre_key(v.pre) >= _pre_key(self.pre)

    def _caret(self, v: Version) -> bool:
        if v.major != self.major:
            return False
        if self.minor is None:
            return True
        if self.patch is None:
            return v.minor >= self.minor if self.major > 0 else v.minor == self.minor
        if self.major > 0:
            if v.minor != self.minor:
                return v.minor > self.minor
            if v.patch != self.patch:
                return v.patch > self.patch
        elif self.minor > 0:
            if v.minor != self.minor:
                return False
            if v.patch != self.patch:
                return v.patch > self.patch
        elif v.minor != self.minor or v.patch != self.patch:
            return False
        return _pre_key(v.pre) >= _pre_key(self.pre)

    def same_release_with_pre(self, v: Version) -> bool:
        return (
            bool(self.pre)
            and (self.major, self.minor, self.patch) == (v.major, v.minor, v.patch)
        )

    def contains(self, v: Version) -> bool:
        """Membership by precedence alone: the comparator as an interval of
        versions, the way the rustsec crate reads advisory ranges. For
        release versions this agrees with `matches`; it differs only for
        pre-releases, which Cargo's field-by-field rules do not order."""
        lo, lo_incl, hi, hi_incl = self.interval()
        if lo is not None and (v < lo if lo_incl else v <= lo):
            return False
        if hi is not None and (v > hi if hi_incl else v >= hi):
            return False
        return True

    def interval(self) -> tuple:
        """(low, low inclusive, high, high inclusive); None is unbounded.
        An exclusive end at `X.Y.Z-0` (the lowest pre-release) keeps the next
        release's pre-releases out, as `^`, `~` and partial versions mean."""
        major, minor, patch = self.major, self.minor, self.patch
        base = Version(major, minor or 0, patch or 0, self.pre)
        zero = ((0, 0, ""),)
        if minor is None:
            after = Version(major + 1, 0, 0, zero)
        elif patch is None:
            after = Version(major, minor + 1, 0, zero)
        else:
            after = None  # a full version: the bound is the version itself
        op = self.op
        if op in ("=", "*"):
            return (base, True, after, False) if after else (base, True, base, True)
        if op == ">=":
            return base, True, None, False
        if op == "<":
            return None, False, base, False
        if op == ">":
            # `>1.2` is `>=1.3.0`: past every 1.2.x.
            return (Version(after.major, after.minor, after.patch), True, None, False) if after else (base, False, None, False)
        if op == "<=":
            return (None, False, after, False) if after else (None, False, base, True)
        if op == "~":
            return base, True, Version(major + 1, 0, 0, zero) if minor is None else Version(major, minor + 1, 0, zero), False
        # Caret: the leftmost non-zero part may not change.
        if major > 0 or minor is None:
            end = Version(major + 1, 0, 0, zero)
        elif minor > 0 or patch is None:
            end = Version(0, minor + 1, 0, zero)
        else:
            end = Version(0, 0, patch + 1, zero)
        return base, True, end, False


# === impl Req ===


@dataclass(frozen=True)
class Req:
    """A Cargo version requirement: comma-separated comparators, all of
    which must match; `*` alone matches every release."""

    text: str
    comparators: tuple

    @staticmethod
    def parse(text: str) -> "Req":
        t = text.strip()
        if not t:
            raise SemverError("empty version requirement")
        if t in _WILDCARD:
            return Req(text, ())
        return Req(text, tuple(Comparator.parse(p) for p in t.split(",")))

    def matches(self, v: Version, prerelease_rule: bool = True) -> bool:
        """With `prerelease_rule` (Cargo's resolver), a pre-release version
        matches only if some comparator names the same major.minor.patch with
        a pre-release; without it, versions are compared by precedence only
        (each comparator an interval, see `Comparator.contains`)."""
        if not prerelease_rule:
            return all(c.contains(v) for c in self.comparators)
        if not all(c.matches(v) for c in self.comparators):
            return False
        if not v.pre:
            return True
        return any(c.same_release_with_pre(v) for c in self.comparators)

    def __str__(self) -> str:
        return self.text.strip()


# === impl Advisory ===


@dataclass
class Advisory:
    id: str
    package: str
    title: str
    informational: str | None
    withdrawn: str | None
    source: str | None
    os: list
    patched: list
    unaffected: list
    path: Path = field(repr=False, default=None)

    def covers(self, v: Version) -> bool:
        # Cargo's pre-release rule decides what a resolver may pick, not
        # whether 1.3.0-beta.1 carries a fix released in 1.2.4: compare by
        # precedence, as the rustsec crate does.
        return not any(r.matches(v, prerelease_rule=False) for r in self.patched + self.unaffected)

    def applies_to_target(self) -> bool:
        return not self.os or TARGET_OS in self.os

    def fixed_in(self) -> str:
        return ", ".join(f"`{r}`" for r in self.patched) or "no fixed version"


def parse_advisory(path: Path) -> Advisory:
    text = path.read_text(encoding="utf-8")
    m = re.match(r"\A```toml\n(.*?)\n```\s*\n", text, re.S)
    if not m:
        raise AdvisoryError(f"{path}: no TOML front matter")
    try:
        data = tomllib.loads(m[1])
        adv = data["advisory"]
        versions = data["versions"]
        title = re.search(r"^# (.+)$", text[m.end():], re.M)
        affected = data.get("affected", {})
        return Advisory(
            id=adv["id"],
            package=adv["package"],
            title=title[1].strip() if title else "",
            informational=adv.get("informational"),
            withdrawn=adv.get("withdrawn"),
            source=adv.get("source"),
            os=list(affected.get("os", [])),
            patched=[Req.parse(r) for r in versions["patched"]],
            unaffected=[Req.parse(r) for r in versions.get("unaffected", [])],
            path=path,
        )
    except (tomllib.TOMLDecodeError, KeyError, TypeError, SemverError) as e:
        raise AdvisoryError(f"{path}: {type(e).__name__}: {e}") from e


def load_db(db: Path) -> tuple[list[Advisory], str]:
    files = sorted((db / "crates").glob("*/*.md"))
    if not files:
        raise AdvisoryError(f"{db}: no advisories under crates/")
    snapshot = (db / "SNAPSHOT").read_text(encoding="utf-8")
    date = re.search(r"\((\d{4}-\d{2}-\d{2})\)", snapshot)
    if not date:
        raise AdvisoryError(f"{db}/SNAPSHOT: no (YYYY-MM-DD) date")
    return [parse_advisory(f) for f in files], date[1]


# === impl lockfiles ===


def read_lockfile(path: Path) -> tuple[dict, list]:
    """(name, Version) -> version text for crates.io packages, and the
    packages that are not from crates.io (the workspace's own crates)."""
    lock = tomllib.loads(path.read_text(encoding="utf-8"))
    crates, others = {}, []
    for p in lock.get("package", []):
        if p.get("source") == CRATES_IO:
            crates[(p["name"], Version.parse(p["version"]))] = p["version"]
        else:
            others.append(f'{p["name"]} {p["version"]}')
    return crates, others


@dataclass
class Finding:
    advisory: Advisory
    name: str
    version: str
    lockfiles: list


def check(crates: dict, where: dict, advisories: list[Advisory]) -> dict:
    """Sorts every (advisory, locked version) pair the advisory covers into
    vulnerable / notices / not_applicable; withdrawn advisories are skipped."""
    by_name: dict[str, list] = {}
    for (name, v), text in crates.items():
        by_name.setdefault(name, []).append((v, text))
    out = {"vulnerable": [], "notices": [], "not_applicable": []}
    for adv in advisories:
        if adv.withdrawn or (adv.source not in (None, "crates.io")):
            continue
        for v, text in by_name.get(adv.package, []):
            if not adv.covers(v):
                continue
            f = Finding(adv, adv.package, text, where[(adv.package, v)])
            if not adv.applies_to_target():
                out["not_applicable"].append(f)
            elif adv.informational:
                out["notices"].append(f)
            else:
                out["vulnerable"].append(f)
    return out


def check_crates(lockfiles: list[Path], db: Path) -> bool:
    advisories, date = load_db(db)
    active = [a for a in advisories if not a.withdrawn]
    crates, where = {}, {}
    for lf in lockfiles:
        found, _ours = read_lockfile(lf)
        rel = lf.relative_to(ROOT) if lf.is_relative_to(ROOT) else lf
        for k, text in found.items():
            crates[k] = text
            where.setdefault(k, []).append(str(rel))
    res = check(crates, where, advisories)
    for f in res["vulnerable"]:
        a = f.advisory
        print(f"  VULNERABLE {f.name} {f.version}: {a.id} {a.title} "
              f"(fixed in {a.fixed_in()}; in {', '.join(f.lockfiles)})")
    for f in res["notices"]:
        a = f.advisory
        print(f"  notice ({a.informational}) {f.name} {f.version}: {a.id} {a.title} "
              f"(in {', '.join(f.lockfiles)})")
    for f in res["not_applicable"]:
        a = f.advisory
        print(f"  not applicable (os: {', '.join(a.os)}) {f.name} {f.version}: {a.id}")
    print(
        f"advisories: {len(crates)} crate versions checked against {len(active)} advisories "
        f"(snapshot {date}): {len(res['vulnerable'])} vulnerable, {len(res['notices'])} notices"
        + (f", {len(res['not_applicable'])} not applicable to Linux" if res["not_applicable"] else "")
    )
    return not res["vulnerable"]


# === impl npm ===


def node_projects(root: Path) -> list[Path]:
    skip = {"node_modules", "target", ".git"}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        if "package.json" in filenames:
            out.append(Path(dirpath))
    return out


def interpret_npm_audit(stdout: str) -> dict:
    """`npm audit --json` output → {"status": "ok"|"unavailable", ...}.
    npm prints an error object (no `metadata`) when the registry has no
    audit endpoint or cannot be reached; that is not a clean result."""
    try:
        data = json.loads(stdout)
    except json.JSONDecodeError:
        return {"status": "unavailable", "reason": "npm printed no JSON"}
    counts = data.get("metadata", {}).get("vulnerabilities") if isinstance(data, dict) else None
    if not isinstance(counts, dict):
        reason = (data.get("message") or data.get("error", {}).get("summary") or "no audit report") \
            if isinstance(data, dict) else "no audit report"
        return {"status": "unavailable", "reason": str(reason).splitlines()[0][:200]}
    vulns = []
    for name, v in sorted((data.get("vulnerabilities") or {}).items()):
        vulns.append((v.get("severity", "?"), name, v.get("range", "?")))
    failing = sum(int(counts.get(s, 0)) for s in NPM_FAIL_SEVERITIES)
    return {"status": "ok", "counts": counts, "vulns": vulns, "failing": failing}


def check_npm(root: Path) -> bool:
    require = os.environ.get("VAULTLET_REQUIRE_NPM_AUDIT") == "1"
    ok = True
    audited, failing, other, unavailable = [], 0, 0, []
    for d in node_projects(root):
        rel = d.relative_to(root)
        if not (d / "package-lock.json").is_file():
            print(f"  {rel}: no package-lock.json, not audited")
            continue
        try:
            run = subprocess.run(
                ["npm", "audit", "--json", "--package-lock-only", "--include=dev"],
                cwd=d, capture_output=True, text=True, timeout=120,
            )
            res = interpret_npm_audit(run.stdout)
        except (OSError, subprocess.TimeoutExpired) as e:
            res = {"status": "unavailable", "reason": f"{type(e).__name__}: {e}"}
        if res["status"] != "ok":
            unavailable.append(f"{rel} ({res['reason']})")
            continue
        audited.append(str(rel))
        for sev, name, rng in res["vulns"]:
            bad = sev in NPM_FAIL_SEVERITIES
            print(f"  {'VULNERABLE' if bad else 'advisory'} ({sev}) {rel}: {name} {rng}")
        failing += res["failing"]
        other += len(res["vulns"]) - res["failing"]
    if audited:
        print(f"npm audit: {len(audited)} lockfiles ({', '.join(audited)}): "
              f"{failing} high/critical, {other} lower")
    for u in unavailable:
        print(f"npm audit: NOT RUN for {u}" + ("" if require else
              "; set VAULTLET_REQUIRE_NPM_AUDIT=1 to make this fail"))
    if failing:
        ok = False
    if unavailable and require:
        ok = False
    return ok


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lockfile", action="append", type=Path,
                    help="Cargo.lock to check (repeatable); default: " + ", ".join(LOCKFILES))
    ap.add_argument("--db", type=Path, default=DB, help="advisory database directory")
    ap.add_argument("--no-npm", action="store_true", help="skip npm audit")
    args = ap.parse_args(argv)
    lockfiles = [p.resolve() for p in args.lockfile] if args.lockfile else [ROOT / p for p in LOCKFILES]
    try:
        ok = check_crates(lockfiles, args.db)
    except (AdvisoryError, SemverError, OSError, tomllib.TOMLDecodeError) as e:
        print(f"advisories: cannot check: {e}", file=sys.stderr)
        return 2
    if not args.no_npm:
        ok = check_npm(ROOT) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
