"""The static upstream: fixed OpenAI answers, as fast as this machine can serve them.

nginx (``return 200`` with the bodies from payloads.py, config generated into the run's temp
dir) when it is installed, otherwise a small aiohttp server (``python -m benchmarks.upstream``).
nginx cannot choose JSON or SSE from the request body, so each answer shape has its own base
path: ``/json/v1`` answers chat completions with JSON, ``/sse/v1`` with an SSE stream.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from benchmarks.payloads import upstream_bodies
from benchmarks.processes import Process, free_port

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
{locations}
        location / {{ return 404 '{{"error":{{"message":"no such path"}}}}'; }}
    }}
}}
"""


def _nginx_string(text: str) -> str:
    # Bodies go in single-quoted nginx strings, where nginx itself turns \n into a newline.
    if "'" in text or "\\" in text:
        raise ValueError("upstream bodies must not contain quotes or backslashes")
    return "'" + text.replace("\n", "\\n") + "'"


def _location(path: str, ctype: str, body: str) -> str:
    # nginx caps one config token at 4 KiB: longer bodies are set in pieces and joined.
    pieces = [body[i : i + 3000] for i in range(0, len(body), 3000)]
    sets = "".join(
        f"            set $body{i} {_nginx_string(piece)};\n" for i, piece in enumerate(pieces)
    )
    joined = "".join(f"$body{i}" for i in range(len(pieces)))
    return (
        f"        location = {path} {{\n"
        f"            default_type {ctype};\n"
        f"{sets}"
        f"            return 200 '{joined}';\n"
        "        }"
    )


def nginx_config(directory: Path, port: int) -> str:
    locations = "\n".join(
        _location(path, ctype, body) for path, (ctype, body) in upstream_bodies().items()
    )
    return NGINX_CONF.format(dir=directory, port=port, locations=locations)


class StaticUpstream:
    """The upstream process; ``url`` is its root (append a base path from payloads.py)."""

    def __init__(self, kind: str, workdir: Path, cpus: str | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        if kind == "auto":
            kind = "nginx" if nginx else "python"
        if kind == "nginx":
            if nginx is None:
                raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
            conf = workdir / "nginx.conf"
            conf.write_text(nginx_config(workdir, self.port))
            argv = [nginx, "-c", str(conf), "-p", str(workdir)]
            self.description = f"nginx ({_nginx_version(nginx)}, 1 worker, return 200)"
        else:
            argv = [sys.executable, "-m", "benchmarks.upstream", "--port", str(self.port)]
            self.description = "aiohttp static server (python -m benchmarks.upstream)"
        self.kind = kind
        self.process = Process("upstream", argv, workdir, cpus=cpus, cwd=_repo_root())
        self.process.wait_port(self.port, timeout=15)

    def stop(self) -> None:
        self.process.stop()


def _nginx_version(binary: str) -> str:
    import subprocess

    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def serve_python(port: int) -> None:
    """The fallback upstream: aiohttp answering the same paths with the same bytes."""
    from aiohttp import web

    app = web.Application()
    for path, (ctype, body) in upstream_bodies().items():
        data = body.encode()

        async def answer(_: web.Request, data: bytes = data, ctype: str = ctype) -> web.Response:
            return web.Response(body=data, content_type=ctype)

        app.router.add_post(path, answer)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Static OpenAI-shaped upstream (aiohttp).")
    parser.add_argument("--port", type=int, required=True)
    serve_python(parser.parse_args().port)
