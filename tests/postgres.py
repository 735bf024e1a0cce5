"""A real PostgreSQL server for the tests, from the Debian package (``apt-get install postgresql``, which
``scripts/setup.sh`` runs when it is missing): a cluster made by ``initdb`` in a temporary folder, a Unix
socket there and a free TCP port on 127.0.0.1, stopped and deleted at the end.

The server refuses to run as root, so under root (CI) it runs as the package's ``postgres`` user. Its
user ``transferlab`` logs in with a password over TCP, as a user's workers reach a database server.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from helpers import free_port

USER, PASSWORD, DATABASE = "transferlab", "Pg-s3cret-9z", "studies"


def server_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL's server is not installed: run `apt-get install postgresql` (Debian), "
                           "which `bash scripts/test.sh` does when it runs as root")
    return Path(found[-1]).parent


class Server:
    """``with Server() as pg: pg.url`` - a running server and the URL of its database ``studies``."""

    def __init__(self):
        self.bin = server_bin()
        self.root = Path(tempfile.mkdtemp(prefix="tl-postgres-"))  # not under pytest's root-only tmp folders
        self.port = free_port()
        self.url = f"postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"
        self.owner = {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}

    def _run(self, *args: str) -> None:
        result = subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True, text=True, timeout=120,
                                cwd=self.root, **self.owner)
        if result.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

    def __enter__(self) -> "Server":
        if self.owner:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        (self.root / "password").write_text(PASSWORD)
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", USER, "--pwfile", str(self.root / "password"), "--no-sync",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C")
        # fsync off: a test server's data need not survive a power cut; 3 workers x (sweeper, heartbeat,
        # trial) stay far below max_connections
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        self._run("pg_ctl", "-D", str(data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start")
        self._run("createdb", "-h", str(self.root), "-p", str(self.port), "-U", USER, DATABASE)
        return self

    def log(self) -> str:
        return (self.root / "server.log").read_text()

    def __exit__(self, *exc) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
