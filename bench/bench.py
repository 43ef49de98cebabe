#!/usr/bin/env python3
"""vaultlet vs OpenBao Agent: the same work against the same test-bed server.

Run it through bench/run.sh, which builds vaultlet (release) and the load
generator first. bench/README.md explains every figure.

    python3 bench/bench.py --vaultlet BIN --loadgen BIN [--smoke] [--out FILE] [--keep]
                           [--only startup,memory,load,socket,scale,restart,verify] [--scale-points KV:DB,...] [--profile]

Progress goes to stderr; the markdown report goes to stdout (and to --out).
Exit status 0 when every measurement ran, 1 when something broke (a client
never rendered its file, exited early, the socket answered errors, ...).
Missed targets are reported, not treated as failures.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTBED = REPO / "scripts" / "testbed.sh"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """Something broke: the benchmark cannot give a figure."""


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------- modes


@dataclass
class Mode:
    name: str
    startup_runs: int
    steady_s: float  # memory: steady state before reading RSS
    load_window_s: float  # Vault load window
    socket_s: float  # each socket run
    socket_warmup_s: float
    scale_points: list[tuple[int, int]]  # (KV secrets, database leases)
    scale_ttl: str  # database role TTL for the scale figure
    scale_window_s: float  # steady-state window for CPU per renewal
    ready_timeout_s: float
    scale_ready_timeout_s: float
    verify_every: str | None  # figure 7: the cadence measured (None: vaultlet's default)
    verify_window_s: float  # figure 7: audit window


# The smoke run checks that the benchmark works, not its numbers: its
# deadlines leave a loaded machine room (a 10 s window holds 2-3 renewals of
# a 6 s lease however late one comes).
SMOKE = Mode(
    name="smoke", startup_runs=1, steady_s=3, load_window_s=10, socket_s=1, socket_warmup_s=0.2,
    scale_points=[(100, 10)], scale_ttl="6s", scale_window_s=10, ready_timeout_s=120, scale_ready_timeout_s=120,
    verify_every="1s", verify_window_s=5,
)
FULL = Mode(
    name="full", startup_runs=5, steady_s=30, load_window_s=100, socket_s=10, socket_warmup_s=0.5,
    scale_points=[(100, 10), (1000, 100), (3000, 300), (10000, 1000)], scale_ttl="30s", scale_window_s=40,
    ready_timeout_s=60, scale_ready_timeout_s=180, verify_every=None, verify_window_s=130,
)

FIGURES = ("startup", "memory", "load", "socket", "scale", "restart", "verify")
VERIFY_DEFAULT_S = 60  # vaultlet's default verify_every (docs/configuration.md)

SIZES = [(1, 1), (100, 10)]  # (KV secrets, database secrets) for figures 1 and 2

SHORT_TTL, SHORT_MAX = "10s", "40s"  # figure 3
LONG_TTL, LONG_MAX = "1h", "24h"  # figures 1, 2, 4
SCALE_MAX = "10m"

# Creation/revocation statements as in scripts/demo.sh.
CREATION = (
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; "
    'GRANT CONNECT ON DATABASE app TO "{{name}}";'
)
REVOCATION = (
    'REVOKE ALL ON DATABASE app FROM "{{name}}"; '
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'; "
    'DROP ROLE IF EXISTS "{{name}}";'
)
# What both clients need, plus the optional read of the database role that
# policies/vaultlet.hcl grants (vaultlet reads it once to learn max_ttl).
POLICY = """
path "database/creds/*" { capabilities = ["read"] }
path "database/roles/*" { capabilities = ["read"] }
path "secret/data/*"    { capabilities = ["read"] }
path "sys/leases/*"     { capabilities = ["update"] }
"""


# ----------------------------------------------------------------- Vault API


class Bao:
    """A tiny Vault/OpenBao HTTP client (root token), one keep-alive
    connection per thread so many threads can write in parallel."""

    def __init__(self, addr: str, token: str):
        m = re.fullmatch(r"http://([^:/]+):(\d+)/?", addr)
        if not m:
            raise BenchError(f"unexpected BAO_ADDR {addr!r}")
        self.host, self.port, self.token = m.group(1), int(m.group(2)), token
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self.local, "conn", None)
        if c is None:
            c = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        return c

    def req(self, method: str, path: str, body: dict | None = None) -> dict | None:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"X-Vault-Token": self.token, "Content-Type": "application/json"}
        for attempt in range(2):
            c = self._conn()
            try:
                c.request(method, "/v1/" + path, body=data, headers=headers)
                r = c.getresponse()
                out = r.read()
                break
            except (http.client.HTTPException, OSError):
                c.close()
                self.local.conn = None
                if attempt:
                    raise
        if r.status >= 300:
            raise BenchError(f"{method} {path}: HTTP {r.status}: {out[:300].decode(errors='replace')}")
        return json.loads(out) if out else None


# ------------------------------------------------------------------ processes


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile... in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if v.strip().endswith("kB"):
                out[k] = int(v.split()[0])
    return out


def proc_cpu(pid: int) -> float:
    """utime + stime of the whole process (all threads, dead ones too), s."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class Proc:
    """A client process (vaultlet or the agent) with its own directory."""

    def __init__(self, label: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None):
        self.label = label
        self.dir = workdir
        self.log = workdir / "log"
        self.env_file = workdir / "app.env"
        clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "LANG": "C"}
        clean.update(env or {})
        with open(self.log, "wb") as logf:
            self.t0 = time.monotonic()
            self.wall0 = time.time()
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=clean)
        self.pid = self.p.pid

    def check_alive(self) -> None:
        rc = self.p.poll()
        if rc is not None:
            raise BenchError(f"{self.label} exited with status {rc}; last lines of its log:\n{tail(self.log)}")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                log(f"{self.label} ignored SIGTERM for 15 s; killing it")
                self.p.kill()
                self.p.wait()


ALL_PROCS: list[Proc] = []


def start(label: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> Proc:
    p = Proc(label, argv, workdir, env)
    ALL_PROCS.append(p)
    return p


def stop_all(procs: list[Proc]) -> None:
    for p in procs:
        p.stop()


def parse_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if not sep:
            continue
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        out[k] = v
    return out


@dataclass
class Workload:
    """What a client fetches: KV secrets bench/kv0..kv{n-1} (value
    `value-i`) and one database secret per entry of `db_roles`."""

    kv: int
    db_roles: list[str]

    def complete(self, text: str) -> bool:
        env = parse_env(text)
        for i in range(self.kv):
            if env.get(f"KV_{i}") != f"value-{i}":
                return False
        for j in range(len(self.db_roles)):
            if not env.get(f"DB_{j}_USER", "").startswith("v-") or not env.get(f"DB_{j}_PASS"):
                return False
        return True


def wait_rendered(p: Proc, w: Workload, timeout: float) -> float:
    """Seconds from process start until its env file holds every secret."""
    last = None
    while True:
        now = time.monotonic()
        p.check_alive()
        if now - p.t0 > timeout:
            raise BenchError(
                f"{p.label} did not render a complete env file within {timeout:.0f} s; last lines of its log:\n{tail(p.log)}"
            )
        try:
            st = os.stat(p.env_file)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key is not None and key != last:
            last = key
            try:
                if w.complete(p.env_file.read_text()):
                    return now - p.t0
            except FileNotFoundError:
                pass
        time.sleep(0.0005)


# --------------------------------------------------------------- the clients


class Clients:
    """Writes configurations and starts vaultlet or the agent."""

    def __init__(self, args, work: Path, bed: dict[str, str], role_id: Path, secret_id: Path):
        self.vaultlet_bin = args.vaultlet
        self.bao_bin = bed["BAO_BIN"]
        self.addr = bed["BAO_ADDR"]
        self.work = work
        self.role_id, self.secret_id = role_id, secret_id
        self.n = 0

    def _dir(self, label: str) -> Path:
        self.n += 1
        d = self.work / f"{self.n:03d}-{label}"
        d.mkdir(mode=0o700)
        return d

    def vaultlet(
        self,
        w: Workload,
        sock: bool = False,
        env_file: bool = True,
        log_filter: str = "info",
        db_extra: str = "",
        state: bool = False,
    ) -> Proc:
        """`db_extra`: lines added to every database secret's table;
        `state`: a `[state]` block (file and a fresh key in the process's
        directory), for figure 6."""
        d = self._dir("vaultlet")
        lines = [f'[vault]\naddress = "{self.addr}"\n']
        lines.append(f'[auth.approle]\nrole_id_file = "{self.role_id}"\nsecret_id_file = "{self.secret_id}"\n')
        for i in range(w.kv):
            lines.append(f'[secret.kv{i}]\nkv = {{ mount = "secret", path = "bench/kv{i}" }}\n')
        for j, role in enumerate(w.db_roles):
            lines.append(f'[secret.db{j}]\ndatabase = {{ mount = "database", role = "{role}" }}\n{db_extra}')
        if state:
            fd = os.open(d / "state.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, os.urandom(32))
            os.close(fd)
            lines.append(f'[state]\npath = "{d / "vaultlet.state"}"\nkey_file = "{d / "state.key"}"\n')
        if sock:
            lines.append(f'[socket]\npath = "{d / "vaultlet.sock"}"\n')
        if env_file:
            t = [f"KV_{i}={{{{ kv{i}.value }}}}" for i in range(w.kv)]
            for j in range(len(w.db_roles)):
                t.append(f"DB_{j}_USER={{{{ db{j}.username }}}}")
                t.append(f"DB_{j}_PASS={{{{ db{j}.password }}}}")
            lines.append(f'[[env_file]]\npath = "{d / "app.env"}"\ntemplate = """\n' + "\n".join(t) + '\n"""\n')
        (d / "vaultlet.toml").write_text("\n".join(lines))
        return start(
            "vaultlet", [self.vaultlet_bin, "run", "-c", str(d / "vaultlet.toml")], d, {"VAULTLET_LOG": log_filter}
        )

    def restart(self, p: Proc, log_filter: str = "info") -> Proc:
        """The same vaultlet again: same directory, same config (the earlier
        log is kept as log.N)."""
        n = 1
        while (p.dir / f"log.{n}").exists():
            n += 1
        p.log.rename(p.dir / f"log.{n}")
        return start(
            "vaultlet", [self.vaultlet_bin, "run", "-c", str(p.dir / "vaultlet.toml")], p.dir, {"VAULTLET_LOG": log_filter}
        )

    def agent(self, w: Workload, cache_socket: bool = False, env_file: bool = True) -> Proc:
        d = self._dir("agent")
        hcl = [
            f'vault {{\n  address = "{self.addr}"\n}}',
            "auto_auth {\n"
            '  method "approle" {\n'
            "    config = {\n"
            f'      role_id_file_path = "{self.role_id}"\n'
            f'      secret_id_file_path = "{self.secret_id}"\n'
            "      remove_secret_id_file_after_reading = false\n"
            "    }\n  }\n"
            f'  sink "file" {{\n    config = {{ path = "{d / "token"}" }}\n  }}\n}}',
            'template_config {\n  static_secret_render_interval = "5m"\n}',
        ]
        if env_file:
            t = [f'KV_{i}={{{{ with secret "secret/data/bench/kv{i}" }}}}{{{{ .Data.data.value }}}}{{{{ end }}}}' for i in range(w.kv)]
            for j, role in enumerate(w.db_roles):
                t.append(
                    f'{{{{ with secret "database/creds/{role}" }}}}DB_{j}_USER={{{{ .Data.username }}}}\n'
                    f"DB_{j}_PASS={{{{ .Data.password }}}}{{{{ end }}}}"
                )
            (d / "app.env.tpl").write_text("\n".join(t) + "\n")
            hcl.append(f'template {{\n  source = "{d / "app.env.tpl"}"\n  destination = "{d / "app.env"}"\n}}')
        if cache_socket:
            hcl.append("cache {}")
            hcl.append(f'listener "unix" {{\n  address = "{d / "agent.sock"}"\n  tls_disable = true\n}}')
            hcl.append("api_proxy {\n  use_auto_auth_token = true\n}")
        (d / "agent.hcl").write_text("\n\n".join(hcl) + "\n")
        return start("agent", [self.bao_bin, "agent", f"-config={d / 'agent.hcl'}"], d)


# ------------------------------------------------------------------ results


def ms(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s >= 0.1 else f"{s * 1000:.1f} ms"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def ratio_lower(v: float, a: float) -> str:
    """vaultlet/agent for lower-is-better figures, also as 1/N."""
    if a <= 0 or v <= 0:
        return "n/a"
    r = v / a
    return f"{r:.3f} (1/{a / v:.1f})" if r < 1 else f"{r:.2f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


class Report:
    def __init__(self):
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1])
    except OSError:
        pass
    os_name = platform.system()
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{os.cpu_count()} × {cpu}, {mem / 1024 / 1024:.1f} GiB RAM, Linux {platform.release()}, {os_name}"


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------ figures


def fig_startup(mode: Mode, cl: Clients, rep: Report, res: dict) -> None:
    log("figure 1: start-up (warm-up run of each client first)")
    for make in (cl.vaultlet, cl.agent):
        p = make(Workload(1, ["bench_db0"]))
        wait_rendered(p, Workload(1, ["bench_db0"]), mode.ready_timeout_s)
        p.stop()
    times: dict[tuple, list[float]] = defaultdict(list)
    for run in range(mode.startup_runs):
        for kv, db in SIZES:
            w = Workload(kv, [f"bench_db{j}" for j in range(db)])
            order = ("vaultlet", "agent") if run % 2 == 0 else ("agent", "vaultlet")
            for who in order:
                p = cl.vaultlet(w) if who == "vaultlet" else cl.agent(w)
                t = wait_rendered(p, w, mode.ready_timeout_s)
                p.stop()
                times[(who, kv, db)].append(t)
                extra = ""
                if who == "vaultlet":
                    held = vaultlet_all_held(p)
                    if held is not None:
                        times[("held", kv, db)].append(held)
                        extra = f" (every secret held after {ms(held)})"
                log(f"  run {run + 1}: {who:8} {kv} KV + {db} DB: {ms(t)}{extra}")
                time.sleep(0.2)
    res["startup"] = times
    rep.add(
        "",
        f"### 1. Start-up: process start → env file complete ({mode.startup_runs} run{'s' if mode.startup_runs > 1 else ''} each, alternating; median (min–max))",
        "",
        "| size | vaultlet | OpenBao Agent | ratio vaultlet/agent (median) | target ≤ 1/5 |",
        "|---|---|---|---|---|",
    )
    for kv, db in SIZES:
        v, a = times[("vaultlet", kv, db)], times[("agent", kv, db)]
        mv, ma = statistics.median(v), statistics.median(a)
        rep.add(
            f"| {kv} KV + {db} DB | {ms(mv)} ({ms(min(v))}–{ms(max(v))}) | {ms(ma)} ({ms(min(a))}–{ms(max(a))}) "
            f"| {ratio_lower(mv, ma)} | {verdict(mv <= ma / 5)} |"
        )
    notes = []
    for kv, db in SIZES:
        h = times.get(("held", kv, db))
        if h:
            mh, mv = statistics.median(h), statistics.median(times[("vaultlet", kv, db)])
            notes.append(f"{kv} KV + {db} DB: every secret held after {ms(mh)}, file complete {ms(mv - mh)} later")
    if notes:
        rep.add("", "Where vaultlet's start-up goes (median, from the timestamps of its own log lines): " + "; ".join(notes) + ".")


def log_time(line: str) -> float | None:
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)", line)
    return parse_time(m.group(1)) if m else None


def vaultlet_all_held(p: Proc) -> float | None:
    """Seconds from process start until vaultlet logged its last secret
    fetch before the env file was written (from its log's timestamps), or
    None when the log does not say."""
    last = None
    for line in p.log.read_text(errors="replace").splitlines():
        if "kv secret changed" in line or "issued database credential" in line:
            last = log_time(line)
        elif "wrote" in line and "app.env" in line:
            break
    return None if last is None else last - p.wall0


def fig_memory(mode: Mode, cl: Clients, rep: Report, res: dict) -> None:
    log(f"figure 2: memory after {mode.steady_s:.0f} s steady state (all four processes side by side)")
    procs = []
    for kv, db in SIZES:
        w = Workload(kv, [f"bench_db{j}" for j in range(db)])
        procs.append(("vaultlet", kv, db, w, cl.vaultlet(w)))
        procs.append(("agent", kv, db, w, cl.agent(w)))
    try:
        for *_, w, p in procs:
            wait_rendered(p, w, mode.ready_timeout_s)
        time.sleep(mode.steady_s)
        mem = {}
        for who, kv, db, _, p in procs:
            p.check_alive()
            mem[(who, kv, db)] = proc_status(p.pid)
    finally:
        stop_all([p for *_, p in procs])
    res["memory"] = mem
    rep.add(
        "",
        f"### 2. Memory after {mode.steady_s:.0f} s steady state (VmRSS / VmHWM from /proc/PID/status)",
        "",
        "| size | figure | vaultlet | OpenBao Agent | ratio vaultlet/agent | target ≤ 1/8 |",
        "|---|---|---|---|---|---|",
    )
    for kv, db in SIZES:
        v, a = mem[("vaultlet", kv, db)], mem[("agent", kv, db)]
        for key, label, target in (("VmRSS", "RSS", True), ("VmHWM", "peak RSS", True), ("RssAnon", "of which anonymous", False), ("RssFile", "of which file-backed (binary)", False)):
            rep.add(
                f"| {kv} KV + {db} DB | {label} | {mib(v[key])} | {mib(a[key])} | {ratio_lower(v[key], a[key])} "
                f"| {verdict(v[key] <= a[key] / 8) if target else ''} |"
            )


# ---- audit log


def parse_time(s: str) -> float:
    """RFC 3339 with up to nanoseconds → seconds since the epoch."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", s)
    if not m:
        raise BenchError(f"unexpected audit time {s!r}")
    base = dt.datetime.fromisoformat(m.group(1) + (m.group(3) if m.group(3) != "Z" else "+00:00"))
    return base.timestamp() + float("0." + (m.group(2) or "0"))


def client_of(ua: str) -> str:
    if ua.startswith("vaultlet/"):
        return "vaultlet"
    if "Vault Agent" in ua or "OpenBao Agent" in ua:
        return "agent"
    return "other"


def read_audit(path: Path) -> list[dict]:
    """One dict per request: client, path, time, response error, lease ids."""
    reqs: dict[str, dict] = {}
    order = []
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            r = e.get("request") or {}
            rid = r.get("id")
            if not rid:
                continue
            if e.get("type") == "request":
                ua = ((r.get("headers") or {}).get("user-agent") or [""])[0]
                path = r.get("path", "")
                lease_arg = (r.get("data") or {}).get("lease_id")
                if path_group(path) != path:
                    lease_arg, path = path[len(path_group(path)) + 1 :], path_group(path)
                item = {
                    "client": client_of(ua),
                    "path": path,
                    "t": parse_time(e["time"]),
                    "lease_arg": lease_arg,
                    "error": None,
                    "lease": None,
                    "ttl": None,
                }
                reqs[rid] = item
                order.append(item)
            elif e.get("type") == "response" and rid in reqs:
                item = reqs[rid]
                item["error"] = e.get("error") or None
                resp = e.get("response") or {}
                item["lease"] = (resp.get("secret") or {}).get("lease_id")
                item["t_resp"] = parse_time(e["time"])
    return order


def path_group(p: str) -> str:
    # vaultlet puts the lease id in the path (sys/leases/renew/<lease_id>).
    for op in ("sys/leases/renew", "sys/leases/revoke"):
        if p.startswith(op + "/"):
            return op
    if p.startswith("sys/internal/ui/mounts/"):
        return "sys/internal/ui/mounts/… (mount lookups)"
    if p.startswith("secret/data/"):
        return "secret/data/… (KV reads)"
    return p


def analyse(reqs: list[dict], who: str) -> dict:
    mine = [r for r in reqs if r["client"] == who]
    by_path = Counter(path_group(r["path"]) for r in mine)
    issued: dict[str, float] = {}  # lease → issue time
    logins: list[float] = []
    latest_issue: dict[str, float] = {}  # role path → newest issue time
    role_of: dict[str, str] = {}
    early_renew = early_token_renew = draining = errors = 0
    for r in sorted(mine, key=lambda r: r["t"]):
        if r["error"]:
            errors += 1
        if r["path"].startswith("database/creds/") and r["lease"]:
            issued[r["lease"]] = r.get("t_resp", r["t"])
            latest_issue[r["path"]] = r.get("t_resp", r["t"])
            role_of[r["lease"]] = r["path"]
        elif r["path"] == "auth/approle/login":
            logins.append(r.get("t_resp", r["t"]))
        elif r["path"] == "sys/leases/renew" and r["lease_arg"]:
            t_issue = issued.get(r["lease_arg"])
            if t_issue is not None and r["t"] - t_issue < 1.0:
                early_renew += 1
            role = role_of.get(r["lease_arg"])
            if role and latest_issue.get(role, 0) > issued.get(r["lease_arg"], 0):
                draining += 1
        elif r["path"] == "auth/token/renew-self":
            if any(0 <= r["t"] - t < 1.0 for t in logins):
                early_token_renew += 1
    return {
        "total": len(mine),
        "by_path": by_path,
        "issued": len(issued),
        "early_renew": early_renew,
        "early_token_renew": early_token_renew,
        "draining": draining,
        "errors": errors,
        "wasted": early_renew + early_token_renew + errors,
        "mount_lookups": sum(1 for r in mine if r["path"].startswith("sys/internal/ui/mounts/")),
    }


def fig_vault_load(mode: Mode, cl: Clients, bao: Bao, rep: Report, res: dict) -> None:
    win = mode.load_window_s
    log(f"figure 3: requests to Vault over {win:.0f} s, 1 KV + 1 DB (TTL {SHORT_TTL}, max {SHORT_MAX}), both clients side by side")
    audit = cl.work / "audit-load.log"
    bao.req("PUT", "sys/audit/bench-load", {"type": "file", "options": {"file_path": str(audit), "log_raw": "true"}})
    w = Workload(1, ["bench_short"])
    procs = []
    try:
        t_start = time.monotonic()
        procs = [cl.vaultlet(w), cl.agent(w)]
        for p in procs:
            wait_rendered(p, w, mode.ready_timeout_s)
        time.sleep(max(0.0, t_start + win - time.monotonic()))
        for p in procs:
            p.check_alive()
    finally:
        stop_all(procs)
        bao.req("DELETE", "sys/audit/bench-load")
    reqs = read_audit(audit)
    others = [r for r in reqs if r["client"] == "other" and not r["path"].startswith("sys/audit")]
    if others:
        log(f"  note: {len(others)} audit entries from neither client (ignored): {Counter(r['path'] for r in others)}")
    v, a = analyse(reqs, "vaultlet"), analyse(reqs, "agent")
    if v["total"] == 0 or a["total"] == 0:
        raise BenchError("the audit log attributes no requests to one of the clients; User-Agent header not logged?")
    res["load"] = (v, a)
    rep.add(
        "",
        f"### 3. Requests to Vault in {win:.0f} s (1 KV + 1 DB, database role TTL {SHORT_TTL} / max {SHORT_MAX}; counted from the audit log by User-Agent)",
        "",
        "| request | vaultlet | OpenBao Agent |",
        "|---|---|---|",
    )
    for p in sorted(set(v["by_path"]) | set(a["by_path"])):
        rep.add(f"| `{p}` | {v['by_path'].get(p, 0)} | {a['by_path'].get(p, 0)} |")
    rep.add(
        f"| **total** | **{v['total']}** | **{a['total']}** |",
        f"| database credentials issued | {v['issued']} | {a['issued']} |",
        f"| wasted: lease renewed < 1 s after issue | {v['early_renew']} | {a['early_renew']} |",
        f"| wasted: token renewed < 1 s after login | {v['early_token_renew']} | {a['early_token_renew']} |",
        f"| wasted: requests answered with an error | {v['errors']} | {a['errors']} |",
        f"| renewals of a replaced (draining) lease | {v['draining']} | {a['draining']} |",
        "",
        f"Ratio vaultlet/agent: {ratio_lower(v['total'], a['total'])}; target ≤ 1/2 with none wasted: "
        f"{verdict(v['total'] <= a['total'] / 2 and v['wasted'] == 0)}.",
    )


# ---- socket


def unix_get(path: Path, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    c = http.client.HTTPConnection("localhost")
    c.sock = s
    c.request("GET", url, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, dict(r.getheaders()), body


def wait_socket_ok(sock: Path, url: str, headers: dict, timeout: float) -> None:
    end = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < end:
        try:
            st, _, body = unix_get(sock, url, headers)
            if st == 200:
                return
            last = f"HTTP {st}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise BenchError(f"GET {url} on {sock.name} did not answer 200 within {timeout:.0f} s ({last})")


def loadgen(args, mode: Mode, sock: Path, url: str, headers: list[str], conns: int, server_pid: int | None) -> dict:
    argv = [args.loadgen, "bench", "--socket", str(sock), "--path", url, "--conns", str(conns),
            "--duration", str(mode.socket_s), "--warmup", str(mode.socket_warmup_s)]
    for h in headers:
        argv += ["--header", h]
    cpu0 = proc_cpu(server_pid) if server_pid else 0.0
    out = subprocess.run(argv, capture_output=True, text=True, timeout=mode.socket_s + 60)
    cpu1 = proc_cpu(server_pid) if server_pid else 0.0
    if out.returncode != 0:
        raise BenchError(f"load generator failed: {out.stderr.strip()}")
    r = json.loads(out.stdout)
    if r["requests"] == 0 or r["errors"] or r["non_200"]:
        raise BenchError(f"socket run against {sock.name} {url}: {r['requests']} requests, {r['errors']} errors, {r['non_200']} non-200")
    # The server's CPU includes the warm-up; scale it to the counted part.
    r["server_cpu_pct"] = 100 * (cpu1 - cpu0) / (mode.socket_s + mode.socket_warmup_s) if server_pid else None
    return r


def per_cpu(r: dict) -> float:
    """Requests served per CPU-second of the server: less sensitive to other
    load on the machine than requests per wall-clock second."""
    return r["rps"] / (r["server_cpu_pct"] / 100) if r["server_cpu_pct"] else 0.0


def fig_socket(args, mode: Mode, cl: Clients, rep: Report, res: dict) -> None:
    log(f"figure 4: socket reads, {mode.socket_s:.0f} s per run")
    w = Workload(0, ["bench_sock"])
    v = cl.vaultlet(w, sock=True, env_file=False)
    # The same, without its per-read audit log line (log filter vaultlet::audit=off).
    vq = cl.vaultlet(w, sock=True, env_file=False, log_filter="info,vaultlet::audit=off")
    a = cl.agent(w, cache_socket=True, env_file=False)
    vsock, vqsock, asock = v.dir / "vaultlet.sock", vq.dir / "vaultlet.sock", a.dir / "agent.sock"
    vurl, aurl, ahdr = "/v1/secrets/db0", "/v1/database/creds/bench_sock", "X-Vault-Request: true"
    triv = None
    profiles = []
    try:
        wait_socket_ok(vsock, vurl, {}, mode.ready_timeout_s)
        wait_socket_ok(vqsock, vurl, {}, mode.ready_timeout_s)
        wait_socket_ok(asock, aurl, {"X-Vault-Request": "true"}, mode.ready_timeout_s)
        # The agent serves the same cached lease from now on.
        _, h1, b1 = unix_get(asock, aurl, {"X-Vault-Request": "true"})
        _, h2, b2 = unix_get(asock, aurl, {"X-Vault-Request": "true"})
        if h2.get("X-Cache") != "HIT" or json.loads(b1)["lease_id"] != json.loads(b2)["lease_id"]:
            raise BenchError(f"the agent does not serve {aurl} from its cache (X-Cache: {h2.get('X-Cache')})")
        st, _, body = unix_get(vsock, vurl)
        if st != 200 or "username" not in json.loads(body).get("data", {}):
            raise BenchError(f"vaultlet's {vurl} answered {st} without a username")
        tdir = cl._dir("trivial")
        tsock = tdir / "trivial.sock"
        triv = start("trivial server", [args.loadgen, "serve", "--socket", str(tsock), "--body-bytes", str(len(body))], tdir)
        wait_socket_ok(tsock, "/", {}, mode.ready_timeout_s)
        runs = {}
        for i, conns in enumerate((1, 8)):
            order = [("vaultlet", vsock, vurl, [], v), ("agent", asock, aurl, [ahdr], a)]
            if i % 2:
                order.reverse()
            order.append(("vaultlet-quiet", vqsock, vurl, [], vq))
            order.append(("trivial", tsock, "/", [], triv))
            for who, sock, url, hdrs, p in order:
                p.check_alive()
                perf = Perf(args.profile and who == "vaultlet", p.pid, cl.work / f"perf-socket-{conns}.data", 999,
                            mode.socket_s + mode.socket_warmup_s + 5, PROFILE_KEEP_SOCKET, 24)
                r = loadgen(args, mode, sock, url, hdrs, conns, p.pid)
                top = perf.stop()
                if top:
                    profiles.append((f"socket reads, {conns} connection(s)", top))
                runs[(who, conns)] = r
                log(f"  {who:14} {conns} conn: {r['rps']:.0f} req/s, p50 {r['p50_us']} µs, p99 {r['p99_us']} µs, "
                    f"server CPU {r['server_cpu_pct']:.0f} %, generator CPU {r['cpu_pct']:.0f} %")
    finally:
        stop_all([p for p in (v, vq, a, triv) if p])
    res["socket"] = runs
    rep.add(
        "",
        f"### 4. Socket reads of one cached secret ({mode.socket_s:.0f} s per run, keep-alive, one request in flight per connection)",
        "",
        "vaultlet `GET /v1/secrets/db0`; agent cache listener `GET /v1/database/creds/bench_sock` (cached lease, `X-Vault-Request: true`).",
        "",
        "The ratio and target use vaultlet as configured by default, which logs one `vaultlet::audit` line per read; "
        "the next column is the same vaultlet with `VAULTLET_LOG=info,vaultlet::audit=off`. The trivial server "
        "(`loadgen serve`, one thread, fixed answer of the same size) shows what the generator can reach on this machine.",
        "",
        "| connections | figure | vaultlet | OpenBao Agent | ratio vaultlet/agent | target ≥ 4× | vaultlet, audit lines off | trivial server |",
        "|---|---|---|---|---|---|---|---|",
    )
    for conns in (1, 8):
        rv, ra, rq, rt = (runs[(k, conns)] for k in ("vaultlet", "agent", "vaultlet-quiet", "trivial"))
        rep.add(
            f"| {conns} | requests/s | {rv['rps']:,.0f} | {ra['rps']:,.0f} | {rv['rps'] / ra['rps']:.1f}× | {verdict(rv['rps'] >= 4 * ra['rps'])} | {rq['rps']:,.0f} ({rq['rps'] / ra['rps']:.1f}×) | {rt['rps']:,.0f} |",
            f"| {conns} | p50 latency | {rv['p50_us']} µs | {ra['p50_us']} µs | {rv['p50_us'] / max(ra['p50_us'], 1):.2f} | | {rq['p50_us']} µs | {rt['p50_us']} µs |",
            f"| {conns} | p99 latency | {rv['p99_us']} µs | {ra['p99_us']} µs | {rv['p99_us'] / max(ra['p99_us'], 1):.2f} | | {rq['p99_us']} µs | {rt['p99_us']} µs |",
            f"| {conns} | server CPU | {rv['server_cpu_pct']:.0f} % | {ra['server_cpu_pct']:.0f} % | | | {rq['server_cpu_pct']:.0f} % | {rt['server_cpu_pct']:.0f} % |",
            f"| {conns} | generator CPU | {rv['cpu_pct']:.0f} % | {ra['cpu_pct']:.0f} % | | | {rq['cpu_pct']:.0f} % | {rt['cpu_pct']:.0f} % |",
            f"| {conns} | requests per server CPU-second | {per_cpu(rv):,.0f} | {per_cpu(ra):,.0f} | {per_cpu(rv) / max(per_cpu(ra), 1):.1f}× | | {per_cpu(rq):,.0f} | {per_cpu(rt):,.0f} |",
        )
    for label, top in profiles:
        rep.add("", f"perf profile of vaultlet, {label}: share of its CPU samples with callees / self", "", "```", *top, "```")


# ---- scale


def count_renewals(path: Path) -> Counter:
    c: Counter = Counter()
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            if e.get("type") != "request":
                continue
            r = e.get("request") or {}
            ua = ((r.get("headers") or {}).get("user-agent") or [""])[0]
            if client_of(ua) == "vaultlet":
                c[path_group(r.get("path", ""))] += 1
    return c


def ready_count(sock: Path, n: int) -> str:
    """How many secrets vaultlet holds, from /v1/ready."""
    try:
        st, _, body = unix_get(sock, "/v1/ready")
        if st == 200:
            return f"{n:,} of {n:,}"
        return f"{n - len(json.loads(body).get('reasons', [])):,} of {n:,}"
    except (OSError, ValueError, http.client.HTTPException) as e:
        return f"unknown ({e})"


def proc_cpu_fine(pid: int) -> float:
    """CPU time in ns resolution: the sum of the live threads' schedstat,
    or the tick-based total when that is larger (a thread has exited)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return max(total / 1e9, proc_cpu(pid))


def open_sockets(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


# Frames worth showing from a vaultlet profile (the rest is runtime plumbing).
PROFILE_KEEP = re.compile(
    r"^vaultlet::|BTreeMap<K,V,A> as core::clone::Clone|String as core::clone::Clone|"
    r"minijinja::environment::Environment::(render_str|template_from_named_str)|minijinja::vm::eval$|"
    r"^(_int_malloc|malloc|_int_free|malloc_consolidate|cfree@GLIBC_2\.2\.5)$|"
    r"^<reqwest::async_impl::client::Pending as|^hyper::proto::h1::dispatch::Dispatcher.*::poll_catch$"
)


# The same for socket reads: the HTTP stack, the log formatter, the runtime.
PROFILE_KEEP_SOCKET = re.compile(
    r"^vaultlet::|^hyper::|^hyper_util::|^axum::|^tracing_subscriber::fmt::|^tokio::runtime::(task|scheduler)::|"
    r"^prometheus_client::|^(_int_malloc|malloc|_int_free|cfree@GLIBC_2\.2\.5|__libc_write|__libc_recv|epoll_wait|__send|write|read)$"
)


def perf_top(data: Path, limit: int = 14, keep: re.Pattern = PROFILE_KEEP) -> list[str]:
    """The functions that cost the most (with callees, ≥ 2 % of samples),
    with their self time, from a perf recording with DWARF call graphs."""
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--children", "--sort", "symbol", "-g", "none",
         "--percent-limit", "2"],
        capture_output=True, text=True,
    ).stdout
    samples = re.search(r"# Samples: ([\d.]+[KMG]?)", out)
    rows = [f"({samples.group(1) if samples else '?'} samples)", "  total    self  function"]
    seen = set()
    for line in out.splitlines():
        m = re.match(r"\s+(\d+\.\d+)%\s+(\d+\.\d+)%\s+\[\.\]\s+(.*\S)", line)
        if not m:
            continue
        name = re.split(r"\s{2,}", m.group(3))[0]  # drop the IPC columns
        if keep.search(name) and name not in seen:
            seen.add(name)
            rows.append(f"{m.group(1):>6}% {m.group(2):>6}%  {name[:140]}")
    return rows[: limit + 2]


class Perf:
    """perf record on one process, if --profile was given."""

    def __init__(self, enabled: bool, pid: int, data: Path, hz: int, max_s: float, keep: re.Pattern = PROFILE_KEEP,
                 limit: int = 14):
        self.data = data
        self.keep = keep
        self.limit = limit
        self.p = None
        if enabled:
            self.p = subprocess.Popen(
                ["perf", "record", "-q", "-F", str(hz), "--call-graph", "dwarf,16384", "-p", str(pid), "-o", str(data),
                 "--", "sleep", str(max_s)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(0.3)

    def stop(self) -> list[str] | None:
        if not self.p:
            return None
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return None
        return perf_top(self.data, self.limit, self.keep)


def fig_scale(args, mode: Mode, cl: Clients, bao: Bao, rep: Report, res: dict) -> None:
    rows = []
    profiles = []
    failed = []
    for kv, db in mode.scale_points:
        n = kv + db
        log(f"figure 5: scale, vaultlet alone: {kv} KV + {db} database leases (role TTL {mode.scale_ttl}, max {SCALE_MAX})")
        w = Workload(kv, ["bench_scale"] * db)
        p = cl.vaultlet(w, sock=True)
        sock = p.dir / "vaultlet.sock"
        row = {"kv": kv, "db": db, "n": n, "failed": False}
        rows.append(row)
        try:
            # At most the first 30 s of the ready phase: enough samples, bounded size.
            perf = Perf(args.profile, p.pid, cl.work / f"perf-ready-{n}.data", 499, 30)
            try:
                row["ready_s"] = wait_rendered(p, w, mode.scale_ready_timeout_s)
            except BenchError:
                if p.p.poll() is not None:
                    raise
                row.update(failed=True, held=ready_count(sock, n),
                           warnings=sum(1 for ln in p.log.read_text(errors="replace").splitlines() if " WARN " in ln))
                log(f"  NOT READY after {mode.scale_ready_timeout_s:.0f} s: {row['held']} secrets held, "
                    f"{row['warnings']} warnings in its log")
                failed.append(f"vaultlet with {kv:,} KV + {db:,} DB secrets was not ready after "
                              f"{mode.scale_ready_timeout_s:.0f} s ({row['held']} held)")
            row["cpu_ready"] = proc_cpu_fine(p.pid)
            top = perf.stop()
            if top:
                profiles.append((f"until ready ({kv:,} KV + {db:,} DB)", top))
            mem = proc_status(p.pid)
            row.update(rss=mem["VmRSS"], hwm=mem["VmHWM"], sockets=open_sockets(p.pid))
            if row["failed"]:
                continue
            st, _, body = unix_get(sock, "/v1/ready")
            if st != 200:
                raise BenchError(f"vaultlet rendered every secret but /v1/ready answered {st}: {body[:200]!r}")
            log(f"  ready after {row['ready_s']:.2f} s ({row['cpu_ready']:.2f} s CPU), {row['sockets']} sockets open; "
                f"steady-state window {mode.scale_window_s:.0f} s")
            audit = cl.work / f"audit-scale-{n}.log"
            time.sleep(2)
            bao.req("PUT", f"sys/audit/bench-scale-{n}", {"type": "file", "options": {"file_path": str(audit)}})
            perf = Perf(args.profile, p.pid, cl.work / f"perf-window-{n}.data", 999, mode.scale_window_s + 5)
            c0, t0 = proc_cpu_fine(p.pid), time.monotonic()
            time.sleep(mode.scale_window_s)
            c1, t1 = proc_cpu_fine(p.pid), time.monotonic()
            top = perf.stop()
            if top:
                profiles.append((f"steady-state window ({kv:,} KV + {db:,} DB)", top))
            bao.req("DELETE", f"sys/audit/bench-scale-{n}")
            p.check_alive()
        finally:
            t_stop = time.monotonic()
            p.stop()
            t_stop = time.monotonic() - t_stop
            if t_stop > 5:
                log(f"  note: vaultlet took {t_stop:.1f} s to stop after SIGTERM")
                row["slow_stop"] = t_stop
            # Leases of this point must not expire (and be revoked by the server) during the next one.
            bao.req("PUT", "sys/leases/revoke-prefix/database/creds/bench_scale", {})
        reqs = count_renewals(audit)
        renewals = reqs.get("sys/leases/renew", 0)
        if renewals == 0 and db:
            raise BenchError(f"no lease renewals by vaultlet in the {mode.scale_window_s:.0f} s window")
        cpu = c1 - c0
        row.update(renewals=renewals, other=sum(reqs.values()) - renewals, window=t1 - t0, cpu=cpu,
                   cpu_per_renewal=cpu / renewals if renewals else 0.0)
        log(f"  {renewals} renewals, {cpu:.3f} s CPU in the window; RSS {mib(row['rss'])}")
    res["scale"] = rows
    base = res["memory"][("vaultlet", 1, 1)]["VmRSS"] if "memory" in res else None
    rep.add(
        "",
        f"### 5. Scale, vaultlet alone (database role TTL {mode.scale_ttl} / max {SCALE_MAX}; one env file with every secret, socket on)",
        "",
        "| secrets | time to first render (ready) | CPU until ready | RSS | peak RSS | RSS per secret (above the 1 KV + 1 DB process) | sockets open | renewals in window | CPU per renewal | other requests in window |",
        "|---|---|---|---|---|---|---|---|---|---|",
    )
    for r in rows:
        if "rss" not in r:
            continue
        per = f"{(r['rss'] - base) / max(r['n'] - 2, 1):.1f} KiB" if base else "n/a (needs figure 2)"
        size = f"{r['kv']:,} KV + {r['db']:,} DB"
        common = f"{r['cpu_ready']:.2f} s | {mib(r['rss'])} | {mib(r['hwm'])} | {per} | {r['sockets']:,}"
        if r["failed"]:
            rep.add(
                f"| {size} | **not ready after {mode.scale_ready_timeout_s:.0f} s** ({r['held']} secrets held, "
                f"{r['warnings']:,} warnings logged) | {common} | – | – | – |"
            )
        elif "renewals" in r:
            cpr = f"{1000 * r['cpu_per_renewal']:.3f} ms" if r["renewals"] else "–"
            rep.add(
                f"| {size} | {r['ready_s']:.2f} s | {common} | {r['renewals']} in {r['window']:.0f} s | {cpr} | {r['other']} |"
            )
    slow = [r for r in rows if r.get("slow_stop")]
    for r in slow:
        rep.add("", f"vaultlet with {r['kv']:,} KV + {r['db']:,} DB took {r['slow_stop']:.1f} s to stop after SIGTERM "
                    "(the harness kills it after 15 s).")
    ok = sorted((r for r in rows if not r["failed"] and r.get("renewals")), key=lambda r: r["n"])
    verdicts = []
    if len(ok) >= 2 and ok[-1]["n"] >= 2 * ok[0]["n"]:
        a, b = ok[0], ok[-1]
        growth = b["cpu_per_renewal"] / a["cpu_per_renewal"]
        nf = b["n"] / a["n"]
        log_bound = math.log2(b["n"]) / math.log2(a["n"])
        verdicts.append(
            f"CPU per renewal grew {growth:.1f}× from {a['n']:,} to {b['n']:,} secrets ({nf:.0f}× as many; O(log n) "
            f"would allow about {log_bound:.1f}×, O(n) about {nf:.0f}×): "
            f"{'consistent with O(log n)' if growth <= 2 * log_bound else '**faster than O(log n)**'} between these sizes."
        )
    if any(r["failed"] for r in rows):
        verdicts.append("Target \"renewal scheduling no worse than O(log n) per lease\": **missed**: the largest size never became ready.")
    elif verdicts:
        verdicts.append(f"Target \"renewal scheduling no worse than O(log n) per lease\": {verdict(growth <= 2 * log_bound)}.")
    else:
        verdicts.append("(The O(log n) check needs two sizes with renewals, the larger at least twice the smaller.)")
    rep.add("", " ".join(verdicts))
    for label, top in profiles:
        rep.add("", f"perf profile of vaultlet, {label}: share of its CPU samples with callees / self "
                "(the CPU figures above were taken under perf):", "", "```", *top, "```")
    if failed:
        raise BenchError("; ".join(failed))


# ---------------------------------------------------------------------- main

# ---- restart with sealed state


def wait_ready_sock(p: Proc, sock: Path, timeout: float) -> float:
    """Seconds from process start until `GET /v1/ready` answers 200 (polled
    every 0.5 ms; before the socket exists connecting simply fails)."""
    while True:
        now = time.monotonic()
        p.check_alive()
        if now - p.t0 > timeout:
            raise BenchError(f"{p.label} not ready within {timeout:.0f} s; last lines of its log:\n{tail(p.log)}")
        try:
            if unix_get(sock, "/v1/ready")[0] == 200:
                return time.monotonic() - p.t0
        except OSError:
            pass
        time.sleep(0.0005)


def supports_state(cl: Clients) -> bool:
    """Whether this vaultlet build knows `[state]` (`vaultlet check` on a
    config that has one)."""
    d = cl._dir("state-check")
    fd = os.open(d / "state.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    (d / "vaultlet.toml").write_text(
        f'[vault]\naddress = "{cl.addr}"\n[auth.approle]\nrole_id_file = "{cl.role_id}"\nsecret_id_file = "{cl.secret_id}"\n'
        f'[secret.kv0]\nkv = {{ mount = "secret", path = "bench/kv0" }}\n'
        f'[socket]\npath = "{d / "vaultlet.sock"}"\n'
        f'[state]\npath = "{d / "vaultlet.state"}"\nkey_file = "{d / "state.key"}"\n'
    )
    out = subprocess.run([cl.vaultlet_bin, "check", "-c", str(d / "vaultlet.toml")], capture_output=True, text=True)
    if out.returncode == 0:
        return True
    if "unknown field `state`" in out.stderr:
        log("  this vaultlet build has no [state]")
        return False
    raise BenchError(f"vaultlet check refuses the [state] probe config: {out.stderr.strip()[:300]}")


def fig_restart(mode: Mode, cl: Clients, rep: Report, res: dict) -> None:
    log("figure 6: restart to ready, with sealed state and without")
    if not supports_state(cl):
        rep.add("", "### 6. Restart to ready with sealed state", "", "Skipped: this vaultlet build has no `[state]`.")
        return
    times: dict[tuple, list[float]] = defaultdict(list)
    made = Counter()
    for run in range(mode.startup_runs):
        for kv, db in SIZES:
            w = Workload(kv, [f"bench_db{j}" for j in range(db)])
            # Without state: a fresh process logs in and issues every credential.
            p = cl.vaultlet(w, sock=True)
            times[("fresh", kv, db)].append(wait_ready_sock(p, p.dir / "vaultlet.sock", mode.ready_timeout_s))
            p.stop()
            # With state: the first run writes it (and at shutdown), the
            # restart resumes from it; the env file is removed first so its
            # rewrite from state is timed too.
            p = cl.vaultlet(w, sock=True, state=True)
            wait_ready_sock(p, p.dir / "vaultlet.sock", mode.ready_timeout_s)
            wait_rendered(p, w, mode.ready_timeout_s)
            p.stop()
            if not (p.dir / "vaultlet.state").exists():
                raise BenchError(f"no state file after a clean stop; last lines of the log:\n{tail(p.log)}")
            p.env_file.unlink(missing_ok=True)
            q = cl.restart(p)
            t_ready = wait_ready_sock(q, q.dir / "vaultlet.sock", mode.ready_timeout_s)
            t_file = wait_rendered(q, w, mode.ready_timeout_s)
            q.stop()
            text = q.log.read_text(errors="replace")
            made[("issued", kv, db)] += text.count("issued database credential")
            made[("logins", kv, db)] += text.count("logged in")
            times[("state", kv, db)].append(t_ready)
            times[("state_file", kv, db)].append(t_file)
            log(
                f"  run {run + 1}: {kv} KV + {db} DB: fresh ready {ms(times[('fresh', kv, db)][-1])}, "
                f"from state ready {ms(t_ready)}, env file {ms(t_file)}"
            )
    res["restart"] = times
    rep.add(
        "",
        f"### 6. Restart to ready: process start → `GET /v1/ready` 200 ({mode.startup_runs} run{'s' if mode.startup_runs > 1 else ''} each; median (min–max))",
        "",
        "| size | without state (login + every credential issued) | with `[state]` (ready) | with `[state]` (env file complete) | logins / credentials issued by the restarted process |",
        "|---|---|---|---|---|",
    )

    def cell(v: list[float]) -> str:
        return f"{ms(statistics.median(v))} ({ms(min(v))}–{ms(max(v))})"

    for kv, db in SIZES:
        rep.add(
            f"| {kv} KV + {db} DB | {cell(times[('fresh', kv, db)])} | {cell(times[('state', kv, db)])} "
            f"| {cell(times[('state_file', kv, db)])} | {made[('logins', kv, db)]} / {made[('issued', kv, db)]} |"
        )
    rep.add(
        "",
        "The restarted process serves what the state holds and verifies it in the background "
        "(`lookup-self`, `sys/leases/lookup`); the issue's target is ready within 50 ms.",
    )


# ---- verify_every


def fig_verify(mode: Mode, cl: Clients, bao: Bao, rep: Report, res: dict) -> None:
    m = 10
    every = mode.verify_every
    every_s = parse_duration(every) if every else VERIFY_DEFAULT_S
    win = mode.verify_window_s
    label = f'verify_every = "{every}"' if every else f"the default verify_every ({VERIFY_DEFAULT_S} s)"
    log(f"figure 7: lease lookups over {win:.0f} s, {m} database secrets (TTL {LONG_TTL}), {label}")
    w = Workload(0, [f"bench_db{j}" for j in range(m)])
    p = cl.vaultlet(w, env_file=True, db_extra=f'verify_every = "{every}"\n' if every else "")
    audit = cl.work / "audit-verify.log"
    try:
        wait_rendered(p, w, mode.ready_timeout_s)
        bao.req("PUT", "sys/audit/bench-verify", {"type": "file", "options": {"file_path": str(audit), "log_raw": "true"}})
        t0 = time.time()
        time.sleep(win)
        p.check_alive()
        t1 = time.time()
    finally:
        p.stop()
        try:
            bao.req("DELETE", "sys/audit/bench-verify")
        except Exception as e:  # the figure fails below if the log is missing
            log(f"  disabling the audit device: {e}")
    reqs = [r for r in read_audit(audit) if r["client"] == "vaultlet" and t0 <= r["t"] <= t1]
    lookups = [r for r in reqs if r["path"] == "sys/leases/lookup"]
    if not lookups:
        raise BenchError(f"no sys/leases/lookup from vaultlet in {win:.0f} s; last lines of its log:\n{tail(p.log)}")
    by_lease: dict[str, list[float]] = defaultdict(list)
    for r in lookups:
        by_lease[r["lease_arg"] or "?"].append(r["t"])
    gaps = [b - a for ts in by_lease.values() for a, b in zip(sorted(ts), sorted(ts)[1:])]
    gap = statistics.median(gaps) if gaps else float("nan")
    per_hour_counted = len(lookups) / m / (t1 - t0) * 3600
    per_hour = 3600 / gap if gaps else per_hour_counted
    others = Counter(path_group(r["path"]) for r in reqs if r["path"] != "sys/leases/lookup")
    res["verify"] = {"lookups": len(lookups), "gap": gap, "per_hour": per_hour}
    rep.add(
        "",
        f"### 7. Request cost of `verify_every`: {m} database secrets (TTL {LONG_TTL}, so no renewal in the window), {label}, {t1 - t0:.0f} s of audit log",
        "",
        "| figure | value |",
        "|---|---|",
        f"| `sys/leases/lookup` requests in the window | {len(lookups)} ({len(by_lease)} leases) |",
        f"| median time between two lookups of one lease | {gap:.2f} s (configured {every_s:g} s) |",
        f"| lookups per secret per hour (from the interval; from the count: {per_hour_counted:.0f}) | {per_hour:.0f} |",
        f"| other requests from vaultlet in the window | {sum(others.values())} {dict(others) if others else ''} |",
        "",
        f"At the default {VERIFY_DEFAULT_S} s that is {3600 / VERIFY_DEFAULT_S:.0f} lookups per database secret per hour "
        f"(fewer when renewals, which also vouch for a lease, come more often): "
        + ", ".join(f"{n} secrets → {n * 3600 / VERIFY_DEFAULT_S:,.0f}/h ({n / VERIFY_DEFAULT_S:.2f} req/s)" for n in (10, 100, 1000))
        + ".",
    )


def parse_duration(s: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", s)
    if not m:
        raise BenchError(f"duration {s!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def setup(bao: Bao, mode: Mode, work: Path) -> tuple[Path, Path]:
    t = time.monotonic()
    bao.req("PUT", "sys/policies/acl/bench", {"policy": POLICY})
    bao.req("POST", "auth/approle/role/bench",
            {"token_policies": "bench", "token_ttl": "1h", "token_max_ttl": "4h", "secret_id_ttl": 0})
    role_id = bao.req("GET", "auth/approle/role/bench/role-id")["data"]["role_id"]
    secret_id = bao.req("POST", "auth/approle/role/bench/secret-id", {})["data"]["secret_id"]
    rid, sid = work / "role_id", work / "secret_id"
    for f, v in ((rid, role_id), (sid, secret_id)):
        f.write_text(v + "\n")
        f.chmod(0o600)
    roles = {f"bench_db{j}": (LONG_TTL, LONG_MAX) for j in range(max(db for _, db in SIZES))}
    roles["bench_sock"] = (LONG_TTL, LONG_MAX)
    roles["bench_short"] = (SHORT_TTL, SHORT_MAX)
    roles["bench_scale"] = (mode.scale_ttl, SCALE_MAX)
    for name, (ttl, mx) in roles.items():
        bao.req("POST", f"database/roles/{name}", {
            "db_name": "pg", "default_ttl": ttl, "max_ttl": mx,
            "creation_statements": CREATION, "revocation_statements": REVOCATION,
        })
    bao.req("POST", "sys/config/auditing/request-headers/user-agent", {"hmac": False})
    n_kv = max([kv for kv, _ in SIZES] + [kv for kv, _ in mode.scale_points])
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda i: bao.req("POST", f"secret/data/bench/kv{i}", {"data": {"value": f"value-{i}"}}), range(n_kv)))
    log(f"set up policy, AppRole, {len(roles)} database roles and {n_kv} KV secrets in {time.monotonic() - t:.1f} s")
    return rid, sid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vaultlet", required=True, help="vaultlet binary")
    ap.add_argument("--loadgen", required=True, help="bench/loadgen binary")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one run each")
    ap.add_argument("--out", help="also write the report to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, audit logs)")
    ap.add_argument("--profile", action="store_true", help="record the scale windows with perf and print the hottest symbols")
    ap.add_argument("--scale-points", help="override the scale sizes, e.g. 10000:1000,1000:100 (KV:DB)")
    ap.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    args = ap.parse_args()
    mode = SMOKE if args.smoke else FULL
    if args.scale_points:
        try:
            pts = [tuple(int(x) for x in p.split(":")) for p in args.scale_points.split(",")]
            assert all(len(p) == 2 for p in pts)
        except (ValueError, AssertionError):
            ap.error("--scale-points takes KV:DB[,KV:DB...]")
        mode = dataclasses.replace(mode, scale_points=pts)
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    if any(f not in FIGURES for f in only):
        ap.error(f"--only takes a subset of {','.join(FIGURES)}")
    t_begin = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="vaultlet-bench."))
    work.chmod(0o711)
    bed_dir = work / "bed"
    bed_up = False
    rep = Report()
    res: dict = {}

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    rc = 1
    printed = False
    try:
        log(f"{mode.name} run; work directory {work}")
        out = subprocess.run([str(TESTBED), "up", str(bed_dir)], stdout=subprocess.PIPE, text=True)
        bed_up = True
        if out.returncode != 0:
            raise BenchError("scripts/testbed.sh up failed (see above)")
        bed = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        bao = Bao(bed["BAO_ADDR"], bed["BAO_TOKEN"])
        rid, sid = setup(bao, mode, work)
        cl = Clients(args, work, bed, rid, sid)
        bao_version = subprocess.run([bed["BAO_BIN"], "version"], capture_output=True, text=True).stdout.split(" (")[0]
        vaultlet_version = subprocess.run([args.vaultlet, "--version"], capture_output=True, text=True).stdout.strip()
        cmd = " ".join(
            ["bench/run.sh"]
            + (["--smoke"] if args.smoke else [])
            + (["--only", ",".join(only)] if only != list(FIGURES) else [])
            + (["--scale-points", args.scale_points] if args.scale_points else [])
            + (["--profile"] if args.profile else [])
        )
        rep.add(
            f"## Benchmark: vaultlet vs OpenBao Agent ({mode.name} run)",
            "",
            f"- Machine: {machine()}",
            f"- Server: {bao_version} (raft storage, loopback, no TLS) and PostgreSQL {pg_version(bed)}, from `scripts/testbed.sh`",
            f"- Clients: {vaultlet_version} ({'release build with symbols, for perf' if args.profile else 'release build'}, commit {git_rev()}) and `bao agent` from the same {bao_version} binary",
            f"- Command: `{cmd}`; date {dt.date.today().isoformat()}; load average at start {loadavg()}",
        )
        if only != list(FIGURES):
            rep.add(f"- Figures: {', '.join(only)} only")
        figures = {
            "startup": lambda: fig_startup(mode, cl, rep, res),
            "memory": lambda: fig_memory(mode, cl, rep, res),
            "load": lambda: fig_vault_load(mode, cl, bao, rep, res),
            "socket": lambda: fig_socket(args, mode, cl, rep, res),
            "scale": lambda: fig_scale(args, mode, cl, bao, rep, res),
            "restart": lambda: fig_restart(mode, cl, rep, res),
            "verify": lambda: fig_verify(mode, cl, bao, rep, res),
        }
        failures = []
        for f in FIGURES:
            if f not in only:
                continue
            try:
                figures[f]()
            except BenchError as e:
                log(f"FAILED ({f}): {e}")
                failures.append(f)
                rep.add("", f"**Figure `{f}` failed:** {e}".replace("\n", " "))
                stop_all(ALL_PROCS)
        rep.add("", f"Total benchmark time: {time.monotonic() - t_begin:.0f} s; load average at the end {loadavg()} "
                "(other work on the machine makes the wall-clock figures noisier).")
        rc = 1 if failures else 0
        if failures:
            log(f"FAILED figures: {', '.join(failures)}")
        printed = True
    except BenchError as e:
        log(f"FAILED: {e}")
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    finally:
        stop_all(ALL_PROCS)
        if bed_up:
            subprocess.run([str(TESTBED), "down", str(bed_dir)], stdout=subprocess.DEVNULL)
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if printed:
        text = rep.text()
        sys.stdout.write(text)
        if args.out:
            Path(args.out).write_text(text)
    return rc


def pg_version(bed: dict) -> str:
    try:
        out = subprocess.run([os.path.join(bed["PG_BIN"], "postgres"), "--version"], capture_output=True, text=True).stdout
        return re.search(r"\d+\.\d+", out).group(0)
    except (OSError, KeyError, AttributeError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
