#!/usr/bin/env python3
"""Tests of scripts/advisories.py: the Cargo version-requirement matcher, the
advisory rules (patched/unaffected/withdrawn/os/informational) and the whole
script on fake lockfiles against the shipped snapshot.

    python3 scripts/test_advisories.py
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path
from unittest import mock

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, str(Path(__file__).resolve().parent))
import advisories as adv  # noqa: E402
from advisories import Req, SemverError, Version  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "advisories.py"


def v(text):
    return Version.parse(text)


def lockfile(dir_, *packages, extra=""):
    body = ["version = 4", ""]
    for name, version in packages:
        body += ["[[package]]", f'name = "{name}"', f'version = "{version}"',
                 f'source = "{adv.CRATES_IO}"', ""]
    path = Path(dir_) / f"Cargo-{len(list(Path(dir_).iterdir()))}.lock"
    path.write_text("\n".join(body) + extra)
    return path


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), "--no-npm", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


class VersionOrder(unittest.TestCase):
    def test_semver_spec_precedence(self):
        # semver 2.0.0, item 11, in increasing order.
        chain = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
                 "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1",
                 "1.1.0", "2.0.0-0", "2.0.0"]
        for lo, hi in zip(chain, chain[1:]):
            self.assertLess(v(lo), v(hi), f"{lo} < {hi}")
            self.assertFalse(v(hi) < v(lo), f"not {hi} < {lo}")

    def test_numbers_compare_as_numbers(self):
        self.assertLess(v("0.9.0"), v("0.10.0"))
        self.assertLess(v("1.0.0-rc.9"), v("1.0.0-rc.10"))

    def test_build_metadata_is_ignored(self):
        self.assertEqual(v("1.2.2+spec-1.1.0").key(), v("1.2.2").key())

    def test_invalid_versions_are_refused(self):
        for bad in ["1.0", "1", "01.0.0", "1.0.0-", "1.0.0-01", "1.0.0-a..b", "v1.0.0", "1.0.0.0", ""]:
            with self.assertRaises(SemverError, msg=bad):
                v(bad)


class CargoRequirements(unittest.TestCase):
    """The tables of the Cargo book ("Specifying dependencies"), at their
    edges, plus pre-release rules of the semver crate Cargo uses."""

    def check(self, req, inside, outside):
        r = Req.parse(req)
        for x in inside:
            self.assertTrue(r.matches(v(x)), f"{req!r} should match {x}")
        for x in outside:
            self.assertFalse(r.matches(v(x)), f"{req!r} should not match {x}")

    def test_caret(self):
        self.check("^1.2.3", ["1.2.3", "1.9.9"], ["1.2.2", "2.0.0"])
        self.check("^1.2", ["1.2.0", "1.99.0"], ["1.1.9", "2.0.0"])
        self.check("^1", ["1.0.0", "1.9.9"], ["0.9.9", "2.0.0"])
        self.check("^0.2.3", ["0.2.3", "0.2.9"], ["0.2.2", "0.3.0"])
        self.check("^0.2", ["0.2.0", "0.2.9"], ["0.1.9", "0.3.0"])
        self.check("^0.0.3", ["0.0.3"], ["0.0.2", "0.0.4"])
        self.check("^0.0", ["0.0.0", "0.0.9"], ["0.1.0"])
        self.check("^0", ["0.0.0", "0.9.9"], ["1.0.0"])
        self.check("^ 0.3.1", ["0.3.1", "0.3.5"], ["0.4.0"])

    def test_bare_version_is_caret(self):
        self.check("1.2.3", ["1.2.3", "1.5.0"], ["1.2.2", "2.0.0"])
        self.check("0.13.10", ["0.13.10", "0.13.11"], ["0.13.9", "0.14.0"])

    def test_tilde(self):
        self.check("~1.2.3", ["1.2.3", "1.2.9"], ["1.2.2", "1.3.0"])
        self.check("~1.2", ["1.2.0", "1.2.9"], ["1.1.9", "1.3.0"])
        self.check("~1", ["1.0.0", "1.9.9"], ["0.9.9", "2.0.0"])

    def test_wildcards(self):
        self.check("*", ["0.0.0", "99.0.0"], [])
        self.check("1.*", ["1.0.0", "1.9.9"], ["0.9.9", "2.0.0"])
        self.check("1.2.*", ["1.2.0", "1.2.9"], ["1.1.0", "1.3.0"])
        self.check("1.2.x", ["1.2.0"], ["1.3.0"])

    def test_comparisons(self):
        self.check(">= 1.2.0", ["1.2.0", "9.0.0"], ["1.1.9"])
        self.check(">=0.3.20", ["0.3.20", "0.4.0"], ["0.3.19"])
        self.check("> 1.2.0", ["1.2.1"], ["1.2.0"])
        self.check("< 2.0.0", ["1.9.9"], ["2.0.0", "2.0.1"])
        self.check("<= 0.2.1", ["0.2.1", "0.1.0"], ["0.2.2"])
        self.check("=1.2.3", ["1.2.3"], ["1.2.4", "1.2.2"])
        # Partial versions mean what Cargo means: `>1.2` is `>=1.3.0`,
        # `<=1.2` is `<1.3.0`, `=1.2` is `1.2.*`, `>= 0.17` is `>= 0.17.0`.
        self.check(">1.2", ["1.3.0"], ["1.2.9"])
        self.check(">1", ["2.0.0"], ["1.9.9"])
        self.check("<=1.2", ["1.2.9"], ["1.3.0"])
        self.check("=1.2", ["1.2.0", "1.2.9"], ["1.3.0", "1.1.9"])
        self.check(">= 0.17", ["0.17.0", "0.17.14"], ["0.16.9"])
        self.check("< 0.12", ["0.11.9"], ["0.12.0"])

    def test_comma_is_and(self):
        self.check(">= 1.2, < 1.5", ["1.2.0", "1.4.9"], ["1.1.9", "1.5.0"])
        self.check("< 0.10.0, >= 0.9.18", ["0.9.18", "0.9.99"], ["0.9.17", "0.10.0"])
        self.check(">= 1.0.0, < 1.0.0", [], ["1.0.0", "0.9.0", "1.0.1"])

    def test_prerelease_needs_opt_in_under_cargo_rules(self):
        self.check(">=1.2.3-alpha.1", ["1.2.3-alpha.1", "1.2.3-beta", "1.2.3", "1.3.0"],
                   ["1.2.3-alpha.0", "1.2.4-alpha.1", "1.3.0-alpha.1"])
        self.check("^1.2.3", ["1.2.3"], ["1.2.4-alpha.1", "1.3.0-rc.1", "2.0.0-alpha.1"])
        self.check("*", [], ["1.0.0-alpha"])
        self.check("<1.2.0", ["1.1.0"], ["1.2.0-alpha.1", "1.1.5-rc.1"])

    def test_precedence_mode_for_advisories(self):
        # Advisory ranges are read by precedence (the rustsec crate's rule).
        r = Req.parse(">= 1.2.3")
        self.assertTrue(r.matches(v("1.3.0-beta.1"), prerelease_rule=False))
        self.assertFalse(r.matches(v("1.2.3-rc.1"), prerelease_rule=False))
        r = Req.parse("< 0.104.0-alpha.1")
        self.assertTrue(r.matches(v("0.104.0-alpha.0"), prerelease_rule=False))
        self.assertFalse(r.matches(v("0.104.0-alpha.1"), prerelease_rule=False))
        # Caret and tilde keep their upper end below the next release's pre-releases.
        self.assertFalse(Req.parse("^1.2.3").matches(v("2.0.0-alpha.1"), prerelease_rule=False))
        self.assertFalse(Req.parse("~1.2").matches(v("1.3.0-alpha.1"), prerelease_rule=False))

    def test_partial_bounds_order_prereleases_by_precedence(self):
        # `< 0.8` is `< 0.8.0`, so 0.8.0-alpha is below it; `>= 2` is
        # `>= 2.0.0`, so 2.1.0-rc.1 is above it (what the rustsec crate
        # reads; Cargo's field-by-field rules answer no to both).
        for req, ver, inside in [("< 0.8", "0.8.0-alpha", True), (">= 0.7.1, < 0.8", "0.8.0-rc.1", True),
                                 (">= 2", "2.1.0-rc.1", True), (">= 2", "2.0.0-rc.1", False),
                                 ("^0.7", "0.8.0-alpha", False), ("~1.2", "1.2.5-beta", True),
                                 ("=1.2", "1.3.0-alpha", False), ("<=1.2", "1.2.9-rc.1", True),
                                 (">1.2", "1.3.0-alpha", False), (">1.2", "1.3.1-alpha", True),
                                 ("^0", "0.9.9", True), ("^0", "1.0.0-alpha", False),
                                 ("^0.0", "0.0.9", True), ("^0.0", "0.1.0-alpha", False),
                                 ("^0.0.3", "0.0.4-alpha", False), ("^0.0.3", "0.0.3", True),
                                 ("~1", "1.9.0-rc.1", True), ("~1", "2.0.0-rc.1", False),
                                 ("1.*", "1.5.0-rc.1", True), ("*", "0.1.0-alpha", True)]:
            self.assertEqual(Req.parse(req).matches(v(ver), prerelease_rule=False), inside, f"{req} / {ver}")

    def test_both_modes_agree_on_releases_for_every_requirement_in_the_snapshot(self):
        advisories, _ = adv.load_db(adv.DB)
        reqs = {str(r): r for a in advisories for r in a.patched + a.unaffected}
        checked = 0
        for r in reqs.values():
            for c in r.comparators:
                for d in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 0, -1), (0, -1, 9), (-1, 9, 9)]:
                    parts = [c.major + d[0], (c.minor or 0) + d[1], (c.patch or 0) + d[2]]
                    if min(parts) < 0:
                        continue
                    x = Version(*parts)
                    self.assertEqual(r.matches(x), r.matches(x, prerelease_rule=False), f"{r} / {x}")
                    checked += 1
        self.assertGreater(checked, 2000)

    def test_invalid_requirements_are_refused(self):
        for bad in ["", " ", ">=", ">= 1.x.2", "1.*.3", "~>1.0", "1.2.3.4", ">=1.*",
                    ">= 1.2-alpha", "1.2.3-", ">= a.b.c", ">= 1.2.3,", "**"]:
            with self.assertRaises(SemverError, msg=repr(bad)):
                Req.parse(bad)


class Snapshot(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.advisories, cls.date = adv.load_db(adv.DB)

    def test_every_advisory_in_the_snapshot_parses(self):
        # load_db raises on any file or requirement it cannot read; this
        # checks it really read the whole snapshot.
        files = list((adv.DB / "crates").glob("*/*.md"))
        self.assertGreater(len(files), 1000)
        self.assertEqual(len(self.advisories), len(files))
        self.assertRegex(self.date, r"^\d{4}-\d\d-\d\d$")

    def find(self, id_):
        return next(a for a in self.advisories if a.id == id_)

    def test_real_advisories_cover_what_they_say(self):
        bytes_ = self.find("RUSTSEC-2026-0007")  # patched >= 1.11.1, unaffected < 1.2.1
        self.assertTrue(bytes_.covers(v("1.11.0")))
        self.assertTrue(bytes_.covers(v("1.2.1")))
        self.assertFalse(bytes_.covers(v("1.11.1")))
        self.assertFalse(bytes_.covers(v("1.2.0")))
        webpki = self.find("RUSTSEC-2026-0104")  # >= 0.103.13, < 0.104.0-alpha.1 | >= 0.104.0-alpha.7
        self.assertTrue(webpki.covers(v("0.103.12")))
        self.assertFalse(webpki.covers(v("0.103.13")))
        self.assertTrue(webpki.covers(v("0.104.0-alpha.6")))
        self.assertFalse(webpki.covers(v("0.104.0-alpha.7")))
        self.assertFalse(webpki.covers(v("0.104.0")))


class Checker(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def test_known_vulnerable_version_fails_the_check(self):
        lf = lockfile(self.dir, ("bytes", "1.11.0"), ("serde", "1.0.228"))
        r = run_script("--lockfile", lf)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("VULNERABLE bytes 1.11.0: RUSTSEC-2026-0007", r.stdout)
        self.assertIn("2 crate versions checked", r.stdout)
        self.assertIn(": 1 vulnerable, 0 notices", r.stdout)

    def test_patched_version_passes_the_check(self):
        lf = lockfile(self.dir, ("bytes", "1.11.1"), ("serde", "1.0.228"))
        r = run_script("--lockfile", lf)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn(": 0 vulnerable, 0 notices", r.stdout)
        self.assertNotIn("VULNERABLE", r.stdout)

    def test_vulnerable_prerelease_between_fixed_ranges_fails(self):
        lf = lockfile(self.dir, ("rustls-webpki", "0.104.0-alpha.5"))
        r = run_script("--lockfile", lf)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("RUSTSEC-2026-0104", r.stdout)
        lf = lockfile(self.dir, ("rustls-webpki", "0.104.0-alpha.7"))
        self.assertEqual(run_script("--lockfile", lf).returncode, 0)

    def test_unmaintained_crate_is_listed_without_failing(self):
        lf = lockfile(self.dir, ("adler", "1.0.2"))
        r = run_script("--lockfile", lf)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("notice (unmaintained) adler 1.0.2: RUSTSEC-2025-0056", r.stdout)
        self.assertIn(": 0 vulnerable, 1 notices", r.stdout)

    def test_second_lockfile_is_checked_too(self):
        ok = lockfile(self.dir, ("bytes", "1.11.1"))
        bad = lockfile(self.dir, ("bytes", "1.10.0"))
        r = run_script("--lockfile", ok, "--lockfile", bad)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("VULNERABLE bytes 1.10.0", r.stdout)

    def test_workspace_crates_are_not_matched_by_name(self):
        # A path crate of ours that shares a crates.io name is not that crate.
        lf = lockfile(self.dir, extra='[[package]]\nname = "bytes"\nversion = "1.0.0"\n')
        r = run_script("--lockfile", lf)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("0 crate versions checked", r.stdout)

    def write_db(self, *advisories):
        db = self.dir / "db"
        (db / "crates" / "demo").mkdir(parents=True)
        (db / "SNAPSHOT").write_text("test snapshot (2000-01-02).\n")
        for i, body in enumerate(advisories):
            (db / "crates" / "demo" / f"RUSTSEC-0000-000{i}.md").write_text(
                "```toml\n" + textwrap.dedent(body).strip() + "\n```\n\n# demo advisory\n")
        return db

    def test_withdrawn_and_foreign_os_advisories_do_not_fail(self):
        db = self.write_db(
            """
            [advisory]
            id = "RUSTSEC-0000-0000"
            package = "demo"
            date = "2000-01-01"
            withdrawn = "2000-01-02"
            [versions]
            patched = [">= 2.0.0"]
            """,
            """
            [advisory]
            id = "RUSTSEC-0000-0001"
            package = "demo"
            date = "2000-01-01"
            [affected]
            os = ["windows"]
            [versions]
            patched = [">= 2.0.0"]
            """,
        )
        lf = lockfile(self.dir, ("demo", "1.0.0"))
        r = run_script("--db", db, "--lockfile", lf)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("against 1 advisories (snapshot 2000-01-02): 0 vulnerable", r.stdout)
        self.assertIn("not applicable (os: windows) demo 1.0.0: RUSTSEC-0000-0001", r.stdout)

    def test_linux_advisory_fails(self):
        db = self.write_db(
            """
            [advisory]
            id = "RUSTSEC-0000-0000"
            package = "demo"
            date = "2000-01-01"
            [affected]
            os = ["linux", "android"]
            [versions]
            patched = ["^1.0.1", ">= 2.0.0"]
            unaffected = ["< 0.5.0"]
            """,
        )
        for version, rc in [("1.0.0", 1), ("1.0.1", 0), ("1.5.0", 0), ("0.4.9", 0), ("0.5.0", 1), ("2.0.0", 0)]:
            lf = lockfile(self.dir, ("demo", version))
            r = run_script("--db", db, "--lockfile", lf)
            self.assertEqual(r.returncode, rc, f"demo {version}: {r.stdout}{r.stderr}")

    def test_unreadable_advisory_is_an_error_not_a_pass(self):
        db = self.write_db(
            """
            [advisory]
            id = "RUSTSEC-0000-0000"
            package = "demo"
            date = "2000-01-01"
            [versions]
            patched = [">= two"]
            """,
        )
        lf = lockfile(self.dir, ("other", "1.0.0"))
        r = run_script("--db", db, "--lockfile", lf)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("RUSTSEC-0000-0000.md", r.stderr)

    def test_empty_database_is_an_error_not_a_pass(self):
        db = self.dir / "empty"
        (db / "crates").mkdir(parents=True)
        (db / "SNAPSHOT").write_text("(2000-01-01)")
        r = run_script("--db", db, "--lockfile", lockfile(self.dir, ("bytes", "1.0.0")))
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)


class Coverage(unittest.TestCase):
    def test_every_cargo_lockfile_in_the_repository_is_checked(self):
        # A new Rust project with its own lockfile must not slip past the check.
        found = set()
        for dirpath, dirnames, filenames in os.walk(adv.ROOT):
            dirnames[:] = [d for d in dirnames if d not in ("target", "node_modules", ".git")]
            if "Cargo.lock" in filenames:
                found.add(str((Path(dirpath) / "Cargo.lock").relative_to(adv.ROOT)))
        self.assertIn("Cargo.lock", found)
        self.assertEqual(found, set(adv.LOCKFILES))


class NpmAudit(unittest.TestCase):
    def test_high_advisory_fails(self):
        out = adv.interpret_npm_audit("""{"auditReportVersion": 2,
          "vulnerabilities": {"pg": {"name": "pg", "severity": "high", "range": "<8.0.0"}},
          "metadata": {"vulnerabilities": {"info": 0, "low": 0, "moderate": 0, "high": 1,
                                           "critical": 0, "total": 1}}}""")
        self.assertEqual(out["status"], "ok")
        self.assertEqual(out["failing"], 1)

    def test_moderate_advisory_is_listed_without_failing(self):
        out = adv.interpret_npm_audit("""{"auditReportVersion": 2,
          "vulnerabilities": {"x": {"name": "x", "severity": "moderate", "range": "*"}},
          "metadata": {"vulnerabilities": {"info": 0, "low": 0, "moderate": 1, "high": 0,
                                           "critical": 0, "total": 1}}}""")
        self.assertEqual((out["status"], out["failing"], out["vulns"]), ("ok", 0, [("moderate", "x", "*")]))

    def test_registry_without_audit_endpoint_is_not_a_clean_result(self):
        # What npm prints when the registry refuses the bulk advisory request.
        out = adv.interpret_npm_audit("""{"message": "405 Method Not Allowed - POST
          https://registry.npmjs.org/-/npm/v1/security/advisories/bulk", "statusCode": 405,
          "error": {"summary": "", "detail": ""}}""".replace("\n", " "))
        self.assertEqual(out["status"], "unavailable")
        self.assertIn("405", out["reason"])
        self.assertEqual(adv.interpret_npm_audit("")["status"], "unavailable")


class NpmAuditStep(unittest.TestCase):
    """check_npm with a stand-in `npm` first on PATH that prints a given
    audit answer, over a fake tree of Node projects."""

    def run_check(self, answer, require=False):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            bin_ = root / "bin"
            bin_.mkdir()
            (bin_ / "answer.json").write_text(answer)
            npm = bin_ / "npm"
            npm.write_text(f"#!/bin/sh\ncat '{bin_ / 'answer.json'}'\nexit 1\n")
            npm.chmod(0o755)
            for d, lock in [("app", True), ("nolock", False), ("app/node_modules/dep", True)]:
                (root / d).mkdir(parents=True, exist_ok=True)
                (root / d / "package.json").write_text("{}")
                if lock:
                    (root / d / "package-lock.json").write_text("{}")
            env = {"PATH": f"{bin_}:{os.environ['PATH']}", "VAULTLET_REQUIRE_NPM_AUDIT": "1" if require else ""}
            out = io.StringIO()
            with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(out):
                ok = adv.check_npm(root)
            return ok, out.getvalue()

    HIGH = json.dumps({"vulnerabilities": {"pg": {"severity": "high", "range": "<8.0.0"}},
                       "metadata": {"vulnerabilities": {"high": 1, "critical": 0, "total": 1}}})
    LOW = json.dumps({"vulnerabilities": {"pg": {"severity": "low", "range": "<8.0.0"}},
                      "metadata": {"vulnerabilities": {"low": 1, "high": 0, "critical": 0, "total": 1}}})
    REFUSED = json.dumps({"message": "405 Method Not Allowed - POST .../advisories/bulk", "statusCode": 405})

    def test_high_advisory_in_a_lockfile_fails_the_step(self):
        ok, out = self.run_check(self.HIGH)
        self.assertFalse(ok, out)
        self.assertIn("VULNERABLE (high) app: pg <8.0.0", out)
        self.assertIn("npm audit: 1 lockfiles (app): 1 high/critical, 0 lower", out)
        self.assertIn("nolock: no package-lock.json, not audited", out)
        self.assertNotIn("node_modules", out)

    def test_low_advisory_is_listed_and_passes(self):
        ok, out = self.run_check(self.LOW)
        self.assertTrue(ok, out)
        self.assertIn("advisory (low) app: pg", out)

    def test_audit_that_cannot_run_is_reported_and_fails_when_required(self):
        ok, out = self.run_check(self.REFUSED)
        self.assertTrue(ok, out)
        self.assertIn("npm audit: NOT RUN for app (405 Method Not Allowed", out)
        ok, out = self.run_check(self.REFUSED, require=True)
        self.assertFalse(ok, out)


if __name__ == "__main__":
    unittest.main(verbosity=1)
