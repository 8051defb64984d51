"""Builds, the CURRENT pointer and the ROOT lock: how preprocessing publishes safely under concurrency.

    ROOT/builds/<build>/{shards/, lengths/, pieces/, manifest.jsonl}   written once, never modified
    ROOT/CURRENT      {"build", "created", "index_sha256", "config_hash", "input_hash",
                       "encoder_hash", "previous": [older kept builds, newest first]}
    ROOT/.lock        {"owner", "host", "pid", "started", "heartbeat", "build"}

A run takes the lock, writes its build under a fresh id (index.json last), and publishes it by one
write of CURRENT (Store.write_atomic: temp file + os.replace locally, one PUT on an object store).
No folder is ever renamed, so the same steps work on object storage. A reader resolves CURRENT
once and then reads only that build (shards.current_build / read_index(root, build)); the build it
resolved stays readable after a newer one is published, because the last KEEP_BUILDS builds are
kept (CURRENT and the one before it): a reader survives one publication during its run; one that
outlives two may find its build removed.

The lock: a second run on the same ROOT waits for it (up to `wait_s`) or fails with a MahlerError
naming the owner (host, pid, start time). A lock is stale - and taken over - when its pid is dead
on this host or its heartbeat (refreshed every HEARTBEAT_S by a thread of the owner) is older
than STALE_S. The owner checks the lock still names it right before it writes CURRENT, so a run
whose lock was taken over (paused past STALE_S) never publishes over the new owner.

recover() (under the lock) deletes only builds that are neither CURRENT nor one of its kept
previous builds nor the build the live lock holder is writing: a killed run's partial build, and
leftovers of the layout before builds (.staging-*, .trash-* folders). The layout before builds
(ROOT/shards, ROOT/pieces, ROOT/manifest.jsonl) is read as build shards.LEGACY_BUILD and removed
like any build once it falls out of the kept ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from mahler_dist.data import shards as S
from mahler_dist.storage import Store
from mahler_dist.errors import MahlerError

LOCK_NAME = ".lock"
#: Builds kept: the current one and the one before it (a reader survives one publication).
KEEP_BUILDS = 2
HEARTBEAT_S = 5.0
STALE_S = 60.0
_POLL_S = 0.5


def new_build_id() -> str:
    """A fresh build id that sorts by creation time: 20261202T101500Z-1a2b3c4d."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def build_dir(store: Store, build: str) -> str:
    """A build's folder in the store's path space (ROOT itself for the legacy layout)."""
    S.check_build_id(build)
    return store.base if build == S.LEGACY_BUILD else store.path(S.BUILDS_DIR, build)


# --------------------------------------------------------------------------------------------------
# The lock


class RootLock:
    """ROOT/.lock held by this process; `with RootLock(store, build, wait_s):` takes and frees it."""

    def __init__(self, store: Store, build: str, wait_s: float = 0.0, say=None):
        self.store, self.build, self.wait_s = store, build, wait_s
        self.say = say or (lambda msg: None)
        self.path = store.path(LOCK_NAME)
        self.owner = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                      "started": time.time(), "heartbeat": time.time(), "build": build}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None   # set by the heartbeat when another run took the lock over

    def __enter__(self) -> RootLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        said = False
        while True:
            if self.store.create_exclusive(self.path, self._bytes()):
                break
            holder = read_lock(self.store)
            if holder is None:
                continue   # freed between our create and our read: try again at once
            stale = lock_is_stale(holder)
            if stale:
                self.say(f"taking over a stale lock ({stale}): {describe_owner(holder)}")
                # compare-then-delete: only the lock we judged stale is removed
                if read_lock(self.store) == holder:
                    self.store.remove(self.path)
                continue
            if time.monotonic() >= deadline:
                raise MahlerError(f"{self.store.root}: another preprocess run holds {LOCK_NAME} "
                                  f"({describe_owner(holder)}); wait for it to finish (`--wait SECONDS`), "
                                  f"or remove {S.join(self.store.root, LOCK_NAME)} if that run is gone")
            if not said:
                self.say(f"waiting for the run that holds the lock ({describe_owner(holder)})")
                said = True
            time.sleep(_POLL_S)
        self._thread = threading.Thread(target=self._beat, name="mahler-lock-heartbeat", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise unless this process still holds the lock (called right before publishing)."""
        holder = read_lock(self.store)
        if self.lost or holder is None or holder.get("owner") != self.owner["owner"]:
            raise MahlerError(f"{self.store.root}: lost {LOCK_NAME} to another run "
                              f"({describe_owner(holder) if holder else 'none holds it now'}); "
                              "this run's build is not published")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = read_lock(self.store)
        if holder is not None and holder.get("owner") == self.owner["owner"]:
            self.store.remove(self.path)

    def _bytes(self) -> bytes:
        return json.dumps(self.owner, sort_keys=True).encode()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            holder = read_lock(self.store)
            if holder is None or holder.get("owner") != self.owner["owner"]:
                self.lost = describe_owner(holder) if holder else "removed"
                return
            self.owner["heartbeat"] = time.time()
            self.store.write_atomic(self.path, self._bytes())


def read_lock(store: Store) -> dict | None:
    data = store.read_if_exists(store.path(LOCK_NAME))
    if data is None:
        return None
    try:
        holder = json.loads(data)
        if isinstance(holder, dict):
            return holder
    except ValueError:
        pass
    # being written (an object store's PUT) or foreign: judged by its age
    mtime = store.info(store.path(LOCK_NAME)).mtime
    return {"unreadable": True, "heartbeat": mtime.timestamp() if mtime else 0.0}


def lock_is_stale(holder: dict, now: float | None = None) -> str | None:
    """Why `holder` no longer holds the lock, or None while it does."""
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not _alive(holder["pid"], holder.get("started")):
            return f"process {holder['pid']} is gone"
    beat = holder.get("heartbeat")
    if not isinstance(beat, (int, float)):
        return "a lock without a heartbeat"
    if now - beat > STALE_S:
        return f"no heartbeat for {now - beat:.0f} s"
    return None


def _alive(pid: int, started: float | None) -> bool:
    """Whether `pid` runs and is the process that took the lock (not a later one with its pid)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return started is None or proc.create_time() <= started + 1.0
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def describe_owner(holder: dict) -> str:
    started = holder.get("started")
    when = (datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds")
            if isinstance(started, (int, float)) else "?")
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {when}, build {holder.get('build', '?')}"


# --------------------------------------------------------------------------------------------------
# Publication and recovery


def publish(store: Store, build: str, index_bytes: bytes, lock: RootLock) -> dict:
    """Point ROOT/CURRENT at `build` (complete: its index.json is written) and drop the builds
    that fall out of the kept ones. Returns the pointer written."""
    old = S.read_pointer(store.root)
    previous = ([old["build"], *old.get("previous", [])] if old else
                [S.LEGACY_BUILD] if store.exists(store.path(S.SHARDS_DIR, S.INDEX_NAME)) else [])
    previous = [b for b in dict.fromkeys(previous) if b != build][: KEEP_BUILDS - 1]
    index = json.loads(index_bytes)
    pointer = {"build": build, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "index_sha256": hashlib.sha256(index_bytes).hexdigest(), "previous": previous,
               **{k: index[k] for k in ("config_hash", "input_hash", "encoder_hash")}}
    lock.check()
    store.write_atomic(store.path(S.CURRENT_NAME), json.dumps(pointer, indent=1).encode())
    remove_unkept(store, keep={build, *previous}, say=lambda msg: None)
    return pointer


def recover(store: Store, say, writing: str | None = None) -> None:
    """Under the lock, before a run: remove what no reader can be using - builds that are not
    CURRENT, not kept by it, and not `writing` (the live holder's) - and the leftovers of the
    layout before builds (.staging-*, .trash-*)."""
    pointer = S.read_pointer(store.root)
    if pointer is None:
        keep = {S.LEGACY_BUILD}
    else:
        keep = {pointer["build"], *pointer.get("previous", [])}
    if writing:
        keep.add(writing)
    remove_unkept(store, keep, say)
    for n in store.children(store.base):
        if n.startswith((".staging-", ".trash-")):
            say(f"removing {n} (left by an interrupted run)")
            store.remove(store.path(n))


def remove_unkept(store: Store, keep: set[str], say) -> None:
    for build in store.children(store.path(S.BUILDS_DIR)):
        if build not in keep:
            say(f"removing build {build} (not published or no longer kept)")
            store.remove(store.path(S.BUILDS_DIR, build))
    if S.LEGACY_BUILD not in keep:
        for name in (S.SHARDS_DIR, S.PIECES_DIR, S.MANIFEST_NAME):
            if store.exists(store.path(name)):
                say(f"removing {name} (the layout before builds, no longer kept)")
                store.remove(store.path(name))
