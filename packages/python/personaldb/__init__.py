"""PersonalDB for Python: the ``libpdb`` SQLite extension, bundled.

``load(conn)`` loads the bundled library into a ``sqlite3.Connection``;
after that, sync is plain SQL (``SELECT pdb_sync()``) on that connection.
The functions below are a thin layer over those SQL calls that return the
parsed JSON::

    import sqlite3, personaldb

    db = sqlite3.connect("app.db")
    personaldb.load(db)
    personaldb.open(db, "http://127.0.0.1:7070", "tasks", token="...")
    db.execute("INSERT INTO tasks VALUES ('t1', 'Buy milk', 0)")
    db.commit()
    print(personaldb.sync(db))   # {'pushed': 1, 'pulled': 1, ...}
    personaldb.sync_start(db)    # or: sync in the background from now on

Errors raised by the SQL functions reach you unchanged as
``sqlite3.OperationalError`` whose message starts with the function name
(``pdb_sync: unauthorized: ...``). Errors of this module derive from
``personaldb.Error``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ._version import __version__

__all__ = [
    "__version__",
    "Error",
    "ExtensionLoadingUnavailable",
    "FunctionUnavailable",
    "loadable_path",
    "load",
    "open",
    "set_token",
    "sync",
    "commit",
    "resolve",
    "head",
    "status",
    "verify",
    "recover",
    "version",
    "sync_start",
    "sync_stop",
    "wait",
    "changes",
]

#: A parsed JSON object returned by a ``pdb_*`` function.
Json = Dict[str, Any]

_LIBRARY = "libpdb.so"


class Error(Exception):
    """Base class of the errors this module raises itself."""


class ExtensionLoadingUnavailable(Error):
    """The interpreter's sqlite3 module cannot load extensions."""


class FunctionUnavailable(Error):
    """The loaded libpdb has no such SQL function (it is older than the call)."""


def loadable_path() -> str:
    """The absolute path of the bundled ``libpdb.so``.

    Hosts other than ``sqlite3`` (the ``sqlite3`` CLI's ``.load``, apsw, ...)
    can load this file directly; SQLite derives the entry point
    ``sqlite3_pdb_init`` from the file name, so keep the name.
    """
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), _LIBRARY)


def load(conn: sqlite3.Connection) -> None:
    """Load the bundled libpdb into ``conn`` (once per connection).

    Extension loading is switched on only for the load and switched off
    again, so SQL run later on ``conn`` cannot call ``load_extension()``.

    Raises ``ExtensionLoadingUnavailable`` when this Python's sqlite3
    module was built without extension loading (pyenv's default build,
    for example), naming what to do instead.
    """
    enable = getattr(conn, "enable_load_extension", None)
    if enable is None:
        if isinstance(conn, sqlite3.Connection):
            raise ExtensionLoadingUnavailable(
                "personaldb.load: this Python's sqlite3 module was built without "
                f"extension loading ({sys.executable}, Python "
                f"{sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}), so no "
                "SQLite extension can be loaded into its connections. Use a Python "
                "whose sqlite3 can load extensions: on Debian and Ubuntu the "
                "system /usr/bin/python3 (e.g. /usr/bin/python3 -m venv .venv), "
                "or build Python with ./configure --enable-loadable-sqlite-extensions "
                "(pyenv: PYTHON_CONFIGURE_OPTS=--enable-loadable-sqlite-extensions "
                "pyenv install <version>). Check with: python3 -c \"import sqlite3; "
                "print(hasattr(sqlite3.Connection, 'enable_load_extension'))\""
            )
        raise TypeError(
            "personaldb.load: expected a sqlite3.Connection (or a connection "
            "with enable_load_extension() and load_extension()), got "
            f"{type(conn).__module__}.{type(conn).__qualname__}"
        )
    path = loadable_path()
    if not os.path.isfile(path):
        raise Error(
            f"personaldb.load: the bundled library is missing ({path}); "
            "reinstall the personaldb package"
        )
    try:
        enable(True)
    except sqlite3.Error as e:
        # The module has the method but its SQLite library was built without
        # extension loading (SQLITE_OMIT_LOAD_EXTENSION).
        raise ExtensionLoadingUnavailable(
            f"personaldb.load: this Python's SQLite library refuses extension loading ({e}); "
            "use a Python and SQLite that allow it, e.g. Debian's and Ubuntu's /usr/bin/python3"
        ) from e
    try:
        conn.load_extension(path)
    except sqlite3.Error as e:
        raise Error(f"personaldb.load: loading {path} failed: {e}") from e
    finally:
        enable(False)


def _call(conn: sqlite3.Connection, sql: str, params: Tuple[Any, ...] = ()) -> Any:
    # Plain tuples and str whatever factories the application set on conn.
    cur = conn.cursor()
    cur.row_factory = None
    row = cur.execute(sql, params).fetchone()
    value = None if row is None else row[0]
    return value.decode() if isinstance(value, bytes) else value


def _json(conn: sqlite3.Connection, sql: str, params: Tuple[Any, ...] = ()) -> Json:
    value = _call(conn, sql, params)
    parsed = json.loads(value)
    if not isinstance(parsed, dict):
        raise Error(f"personaldb: {sql} returned {value!r}, expected a JSON object")
    return parsed


def open(  # noqa: A001 -- personaldb.open mirrors pdb_open
    conn: sqlite3.Connection,
    url: str,
    group: str,
    *,
    token: Optional[str] = None,
    public_key: Optional[str] = None,
    policy: Optional[str] = None,
    timeout_ms: Optional[int] = None,
    **options: Any,
) -> Json:
    """``pdb_open(url, group, options)``: open this database for sync.

    Creates the group's tables if absent (from the schema the witness
    signed), pins the witness's public key (or checks ``public_key``, hex),
    installs capture and pulls. ``policy`` is ``remote_wins`` (default),
    ``local_wins`` or ``manual`` (conflicts stay open until
    :func:`resolve`). ``timeout_ms`` bounds how long a call to the witness
    may stall (default 60000). The token is stored in the database so later
    calls, from any process, can sync; pass ``store_token=False`` to keep it
    in this process only (see :func:`set_token`). Any other option of
    ``pdb_open`` passes through as a keyword: ``ca_file``, ``allow_http``,
    ``max_head_age_ms``, ``schema_versions``, ...
    """
    given: Dict[str, Any] = dict(options)
    if token is not None:
        given["token"] = token
    if public_key is not None:
        given["public_key"] = public_key
    if policy is not None:
        given["policy"] = policy
    if timeout_ms is not None:
        given["timeout_ms"] = timeout_ms
    return _json(conn, "SELECT pdb_open(?, ?, ?)", (url, group, json.dumps(given)))


def set_token(conn: sqlite3.Connection, token: Optional[str]) -> Json:
    """``pdb_set_token(token)``: a bearer token for this process only.

    Stands before a stored one for every connection to this database file
    in this process; call it again to replace a short-lived JWT, or with
    ``None`` to forget it.
    """
    return _json(conn, "SELECT pdb_set_token(?)", (token,))


def sync(conn: sqlite3.Connection) -> Json:
    """``pdb_sync()``: seal pending changes, push, pull, rebase and verify.

    Returns ``{pushed, pulled, conflicts, blocked, head}``; ``blocked``
    lists rows held back (each with ``code``, ``table``, ``key`` and
    ``advice``) while the rest synced. Commit your own writes
    (``conn.commit()``) before calling it.
    """
    return _json(conn, "SELECT pdb_sync()")


def commit(conn: sqlite3.Connection) -> Json:
    """``pdb_commit()``: seal pending changes into the outbox (no network)."""
    return _json(conn, "SELECT pdb_commit()")


def resolve(conn: sqlite3.Connection, conflict_id: int, side: str) -> Json:
    """``pdb_resolve(id, side)``: settle an open conflict (policy ``manual``).

    ``side`` is ``"local"`` (keep the table's value; the row syncs) or
    ``"remote"`` (put the witness's value back). Open conflicts are the rows
    of ``pdb_conflicts`` with ``kept = 'open'``.
    """
    return _json(conn, "SELECT pdb_resolve(?, ?)", (conflict_id, side))


def recover(conn: sqlite3.Connection, mode: str) -> Json:
    """``pdb_recover(mode)``: the way forward after the witness was restored
    from an older backup (sync stopped with ``unknown_head``;
    ``status(conn)["restored"]`` says what was found).

    ``mode`` is ``"recommit"`` on the device that synced last (what the
    witness lost is committed again) and ``"in_place"`` on the others
    afterwards (the witness's state, this device's pending rows kept). See
    docs/operations.md, "Recovery".
    """
    return _json(conn, "SELECT pdb_recover(?)", (mode,))


def head(conn: sqlite3.Connection) -> Json:
    """``pdb_head()``: the verified head.

    ``{group, seq, head_hash, state_root, schema_version, schema_hash}``.
    """
    return _json(conn, "SELECT pdb_head()")


def status(conn: sqlite3.Connection) -> Json:
    """``pdb_status()``: sync at a glance.

    ``state`` is ``healthy``, ``waiting`` (retrying by itself) or
    ``blocked`` (something must change); ``reason`` says on what (``code``,
    ``table``, ``key``, ``message``, ``advice``); also ``blocked`` rows,
    ``open_conflicts``, ``head_age_ms``, ``pending_rows``, ``outbox``, ...
    """
    return _json(conn, "SELECT pdb_status()")


def verify(conn: sqlite3.Connection) -> Json:
    """``pdb_verify()``: recompute the state root from every local row.

    ``{ok, state_root, verified_root, rows}``.
    """
    return _json(conn, "SELECT pdb_verify()")


def version(conn: sqlite3.Connection) -> str:
    """``pdb_version()`` of the library loaded into ``conn``.

    Equals ``personaldb.__version__`` when ``load`` loaded the bundled one.
    """
    return str(_call(conn, "SELECT pdb_version()"))


# --- The background worker -------------------------------------------------
# pdb_sync_start([options]) / pdb_sync_stop() / pdb_wait(seq, timeout_ms) and
# the pdb_changes table (libpdb 0.1 with live sync). With an older libpdb
# loaded, these raise FunctionUnavailable.


def _has_function(conn: sqlite3.Connection, name: str) -> bool:
    sql = "SELECT 1 FROM pragma_function_list WHERE name = ?"
    return conn.execute(sql, (name,)).fetchone() is not None


def _worker_call(conn: sqlite3.Connection, name: str, sql: str, params: Tuple[Any, ...]) -> Json:
    try:
        value = _call(conn, sql, params)
    except sqlite3.OperationalError as e:
        if not _has_function(conn, name):
            raise FunctionUnavailable(
                f"personaldb.{name[len('pdb_'):]}: the loaded libpdb "
                f"({version(conn)}) has no {name}(); call "
                "personaldb.sync(conn) when you want to sync instead"
            ) from e
        raise
    parsed = json.loads(value)
    if not isinstance(parsed, dict):
        raise Error(f"personaldb: {sql} returned {value!r}, expected a JSON object")
    return parsed


def sync_start(conn: sqlite3.Connection, options: Optional[Mapping[str, Any]] = None) -> Json:
    """``pdb_sync_start([options])``: start the background sync worker.

    One worker per database file per process, on its own connection: it
    pushes soon after local writes (from any connection) and pulls as soon
    as the witness's head moves, retrying network failures by itself. A
    second call is harmless (``{"worker": "running"}``) and applies new
    options. ``options`` (all optional): ``debounce_ms``, ``max_delay_ms``,
    ``poll_ms``, ``wait_seconds``, ``pull_every_ms``, ``min_backoff_ms``,
    ``max_backoff_ms``, ``busy_timeout_ms``. How it is doing:
    ``status(conn)["worker"]``. It stops with :func:`sync_stop`, or once
    every connection that started it has closed. The database must be a
    file opened for sync (:func:`open`).
    """
    if options is None:
        return _worker_call(conn, "pdb_sync_start", "SELECT pdb_sync_start()", ())
    return _worker_call(
        conn, "pdb_sync_start", "SELECT pdb_sync_start(?)", (json.dumps(dict(options)),)
    )


def sync_stop(conn: sqlite3.Connection) -> Json:
    """``pdb_sync_stop()``: stop this file's background worker.

    ``{"worker": "stopped"}`` (or ``"stopping"`` while a network call ends,
    ``"not_running"`` when none ran).
    """
    return _worker_call(conn, "pdb_sync_stop", "SELECT pdb_sync_stop()", ())


def wait(conn: sqlite3.Connection, seq: int, timeout_ms: int) -> Json:
    """``pdb_wait(seq, timeout_ms)``: block until the verified head is at
    ``seq`` or later, or ``timeout_ms`` (at most 600000) passed.

    ``{"reached": bool, "head_seq": n}``. Call it outside a transaction.
    """
    return _worker_call(conn, "pdb_wait", "SELECT pdb_wait(?, ?)", (seq, timeout_ms))


def changes(conn: sqlite3.Connection, after: int = 0, limit: int = 1000) -> List[Json]:
    """Rows of ``pdb_changes`` with ``id > after``, oldest first: what each
    applied remote commit changed.

    Each is ``{id, seq, tbl, key, op}``; ``key`` is the row's key as a list
    (``None`` with ``op`` ``many``: refresh the whole table; ``migration``
    or ``snapshot`` with ``tbl`` ``None``: refresh everything). Keep the
    last ``id`` you saw and pass it next time.
    """
    cur = conn.cursor()
    cur.row_factory = None
    rows = cur.execute(
        "SELECT id, seq, tbl, key, op FROM pdb_changes WHERE id > ? ORDER BY id LIMIT ?",
        (after, limit),
    ).fetchall()
    return [
        {"id": i, "seq": q, "tbl": t, "key": None if k is None else json.loads(k), "op": o}
        for (i, q, t, k, o) in rows
    ]
