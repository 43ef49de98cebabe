#!/usr/bin/env python3
"""Reads an env file with the real docker CLI's `--env-file` parser.

No Docker daemon is needed: this starts a minimal stand-in for the Engine
API on a private Unix socket, runs `docker create --env-file FILE` against
it, and prints the "Env" list the CLI sent (as JSON), which is exactly what
the container would have received. Exits 1 with the CLI's message if the
CLI refused the file.

    scripts/docker-env-file.py FILE
"""
import json
import os
import socketserver
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler

captured = {}


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, body=b"", ctype="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Api-Version", "1.49")
        self.send_header("Ostype", "linux")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.reply(200, b"OK", "text/plain")

    def do_GET(self):
        if self.path.endswith("/_ping"):
            self.reply(200, b"OK", "text/plain")
        else:
            self.reply(404, json.dumps({"message": "not here"}).encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        if "/containers/create" in self.path:
            captured["env"] = json.loads(body).get("Env")
            self.reply(201, json.dumps({"Id": "0" * 64, "Warnings": []}).encode())
        else:
            self.reply(404, json.dumps({"message": "not here"}).encode())


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        conn, _ = super().get_request()
        return conn, ("local", 0)


def main():
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "docker.sock")
        srv = Server(sock, Api)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_CONFIG"] = d
        out = subprocess.run(
            ["docker", "--host", f"unix://{sock}", "create", "--env-file", sys.argv[1], "vaultlet-env-probe"],
            capture_output=True, text=True, env=env, timeout=60,
        )
        srv.shutdown()
        if out.returncode != 0 or "env" not in captured:
            sys.stderr.write(out.stderr)
            sys.exit(1)
        json.dump(captured["env"] or [], sys.stdout)


main()
