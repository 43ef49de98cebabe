#!/usr/bin/env python3
"""Offline supply-chain check of the locked dependency graph, by the rules in
deny.toml: allowed licenses, allowed sources, banned crates. It is what
`cargo deny check licenses bans sources` checks, for machines without
cargo-deny; scripts/test.sh runs cargo-deny too when it is installed."""

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

root = Path(__file__).resolve().parent.parent
policy = tomllib.loads((root / "deny.toml").read_text())
allowed = set(policy["licenses"]["allow"])
banned = {d["name"] for d in policy["bans"]["deny"]}
registries = set(policy["sources"]["allow-registry"])

meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features"],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout
)
# Only what the build really uses: walk the resolved graph from our crate,
# normal and build dependencies (dev-dependencies are not shipped).
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
pkgs = {p["id"]: p for p in meta["packages"]}
root_id = meta["resolve"]["root"]
seen, todo = set(), [root_id]
while todo:
    i = todo.pop()
    if i in seen:
        continue
    seen.add(i)
    for d in nodes[i]["deps"]:
        kinds = {k["kind"] for k in d["dep_kinds"]}
        if i != root_id or kinds & {None, "build"}:
            todo.append(d["pkg"])


def license_ok(expr: str) -> bool:
    """Evaluates an SPDX expression (OR/AND/WITH/parentheses; old `/` = OR)."""
    expr = expr.replace("/", " OR ")
    tokens = re.findall(r"\(|\)|[A-Za-z0-9.+-]+(?: WITH [A-Za-z0-9.+-]+)?", expr)
    pos = 0

    def atom():
        nonlocal pos
        t = tokens[pos]
        pos += 1
        if t == "(":
            v = disj()
            pos += 1  # ")"
            return v
        return t in allowed

    def conj():
        nonlocal pos
        v = atom()
        while pos < len(tokens) and tokens[pos] == "AND":
            pos += 1
            v = atom() and v
        return v

    def disj():
        nonlocal pos
        v = conj()
        while pos < len(tokens) and tokens[pos] == "OR":
            pos += 1
            v = conj() or v
        return v

    return bool(tokens) and disj()


problems = []
for i in sorted(seen):
    p = pkgs[i]
    name = f'{p["name"]} {p["version"]}'
    if p["name"] in banned:
        problems.append(f"{name}: banned crate")
    src = p.get("source")
    if src is not None and src.removeprefix("registry+") not in registries:
        problems.append(f"{name}: source {src} is not allowed")
    if i != root_id and not license_ok(p.get("license") or ""):
        problems.append(f'{name}: license {p.get("license")!r} is not allowed')

if problems:
    print("supply chain: " + str(len(problems)) + " problem(s)")
    for line in problems:
        print("  " + line)
    sys.exit(1)
print(f"supply chain: {len(seen)} crates, licenses, sources and bans ok")
