"""The run folder a training run holds: its files, its lock, its set-asides (see
`jaxbp.runs`)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

from jaxbp._files.checkpoint import (
    load_checkpoint,
    read_meta,
    save_checkpoint,
    temporary_files,
    write_atomic,
)
from jaxbp._files.guard import kind_of, load_json, open_regular
from jaxbp.runs import schema
from jaxbp.runs.optimizers import OPTIMIZERS, PATHS  # noqa: F401 (their home before)
from jaxbp.runs.reading import (  # noqa: F401 (their home before)
    CHECKPOINT,
    FIGURES,
    METRICS,
    RUN_FILES,
    SUMMARY,
    RunError,
    _check_finite,
    _check_meta,
    _repr,
    describe,
    fingerprint,
    read_metrics,
)

try:
    import fcntl
except ImportError:  # not on Windows: runs are then not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["PATHS", "RunError", "RunFolder", "describe", "fingerprint", "read_metrics"]

LOCK = ".jaxbp.lock"
PREVIOUS, SET_ASIDE = ".jaxbp.previous", "set_aside.json"
SETTING_ASIDE, RESTORING, DISCARD = ".jaxbp.setting-aside", ".jaxbp.restoring", ".jaxbp.discard"
ASIDE_FOLDERS = (SETTING_ASIDE, PREVIOUS, RESTORING)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as the lock never blocks the run


class _NotOurs(RunError):
    """A name the run folder uses holds something jaxbp does not write there (a symbolic
    link, a FIFO, a folder, a file with other hard links): refused, never followed."""


class _Held(RunError):
    """The folder is held by another live process (`holder`, its process id)."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


def _is_folder(path: Path) -> bool:
    """Whether `path` is a folder itself (a symbolic link to one is not)."""
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def _refuse_kind(folder: Path, path: Path, what: str, fix: str) -> _NotOurs:
    return _NotOurs(
        f"--out {folder}: {path} {what}; jaxbp never follows or writes through it. {fix}"
    )


def _check_kind(folder: Path, path: Path, *, want_folder: bool = False, links: bool = True) -> None:
    """Refuse (`_NotOurs`) `path` unless it is missing or a regular file (a folder itself
    with `want_folder`), with no other hard link where `links` (a file jaxbp changes in
    place)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as err:
        raise RunError(f"--out {folder}: cannot look at {path} ({err.strerror}).") from None
    rm = "rm -r" if stat.S_ISDIR(st.st_mode) else "rm"
    remove = f"Remove it ({rm} {path}) or choose another --out."
    if want_folder:
        if not stat.S_ISDIR(st.st_mode):
            raise _refuse_kind(folder, path, f"is {kind_of(st.st_mode)}, not a folder", remove)
        return
    if not stat.S_ISREG(st.st_mode):
        target = f" (to {os.readlink(path)})" if stat.S_ISLNK(st.st_mode) else ""
        what = f"is {kind_of(st.st_mode)}{target}, not a regular file"
        raise _refuse_kind(folder, path, what, remove)
    if links and st.st_nlink > 1:
        raise _refuse_kind(
            folder,
            path,
            f"has {st.st_nlink} hard links (its data is shared with a file elsewhere)",
            f"Make it a file of its own (cp {path} {path}.own && mv {path}.own {path}).",
        )


@dataclasses.dataclass
class RunFolder:
    """An `--out` folder held by this process (an exclusive `flock` on its lock file) for
    one run; `close()` lets it go. The lock dies with the process, whatever kills it."""

    path: Path
    _lock_fd: int | None = None
    _epoch_known: bool = False  # whether `_epoch_now` holds the checkpoint's epoch
    _epoch_now: int | None = None
    _meta: dict[str, Any] | None = None  # the checkpoint meta `saved` read

    @classmethod
    def hold(cls, path: str | Path) -> RunFolder:
        """Create `path` if needed and lock it, or raise `RunError` naming `--out`.

        Nothing in the folder is followed out of it: every name the run writes (the lock,
        the metrics log, the checkpoint, the summary and figures, temporaries, the
        set-aside folders and their files) must be a regular file (a folder for the
        set-asides), else the folder is refused before anything in it changes."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunError(f"--out {path}: is a file, not a folder; name a folder.")
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = _open_lock(path)
        except _NotOurs:
            raise
        except OSError as err:
            raise RunError(
                f"--out {path}: cannot create or write there ({err.strerror})."
            ) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise _Held(
                    f"--out {path}: another jaxbp train (process {holder}) is writing to this "
                    "folder; wait for it to finish or choose another --out.",
                    holder,
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        folder = cls(path, fd)
        try:
            folder._check_kinds()
            folder._check_writable()
            for name in RUN_FILES:  # temporaries left by a run killed mid-write
                for tmp in temporary_files(path / name):
                    tmp.unlink(missing_ok=True)
            folder._settle()  # what a run killed before its next checkpoint set aside
        except BaseException:
            folder._release()  # not settled again: each step so far stands, the next hold goes on
            raise
        return folder

    def _check_kinds(self) -> None:
        """Refuse the folder if a name it writes is not what jaxbp writes there (see
        `hold`), before anything in it changes."""
        path = self.path
        for name in RUN_FILES:
            _check_kind(path, path / name, links=name == METRICS)
            for tmp in temporary_files(path / name):
                _check_kind(path, tmp, links=False)
        for name in ASIDE_FOLDERS:
            folder = path / name
            _check_kind(path, folder, want_folder=True)
            if _is_folder(folder):
                for inside in folder.iterdir():
                    _check_kind(path, inside, links=False)
        for discard in (path / DISCARD, *path.glob(f"{DISCARD}.*")):
            _check_kind(path, discard, want_folder=True)

    def _check_writable(self) -> None:
        """Refuse, before anything trains, a folder (or log) this process cannot write."""
        probe = self.path / f".jaxbp.probe.{uuid.uuid4().hex}"  # a name none can have planted
        try:
            probe.write_bytes(b"")
            probe.unlink()
            if os.path.lexists(self.path / METRICS):
                os.close(os.open(self.path / METRICS, os.O_WRONLY | os.O_APPEND | NOFOLLOW))
        except OSError as err:
            raise RunError(
                f"--out {self.path}: cannot write there ({err.strerror}: {err.filename}); "
                "make it writable (chmod u+w) or choose another --out."
            ) from None

    def close(self) -> None:
        """Let the folder go; files set aside for this run come back if it saved no
        checkpoint (a replaced run, or a resumed run's summary, is never lost)."""
        if self._lock_fd is None:
            return
        try:
            self._settle()
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # Files set aside (by --overwrite, or a resumed run's summary and figures) move through
    # folders whose names say what is to happen to them; each step is an atomic rename, and
    # `_settle` finishes whatever step a killed process left, whatever the point it died at.
    #   SETTING_ASIDE  being filled: nothing has trained yet, so it all goes back;
    #   PREVIOUS       complete, with the checkpoint epoch the folder held when it was made:
    #                  back if the folder still holds that epoch, gone once a new one is saved;
    #   RESTORING / DISCARD  the decision taken: finish moving back, or finish deleting.

    def _set_aside(self, names: tuple[str, ...]) -> None:
        """Move `names` (those present) aside until this run's next checkpoint."""
        self._settle()
        present = [name for name in names if os.path.lexists(self.path / name)]
        if not present:
            return
        filling = self.path / SETTING_ASIDE
        filling.mkdir()
        epoch = None if CHECKPOINT in present else self._epoch()  # what the folder will hold
        write_atomic(filling / SET_ASIDE, json.dumps({"epoch": epoch}).encode())
        for name in present:
            os.replace(self.path / name, filling / name)
        os.replace(filling, self.path / PREVIOUS)
        if CHECKPOINT in present:
            self._remember(None)

    def _settle(self) -> None:
        """Finish what a set-aside left: restore its files if no checkpoint was saved
        since, else delete them (see the comment above)."""
        for name, action in ((SETTING_ASIDE, RESTORING), (PREVIOUS, None)):
            folder = self.path / name
            if _is_folder(folder):
                if action is None:
                    then = _aside_epoch(folder / SET_ASIDE)
                    if then is False:  # unreadable: keep the old run (nothing lost)
                        then = self._epoch()
                    action = RESTORING if then == self._epoch() else DISCARD
                if action == DISCARD:
                    self._discard(name)
                else:
                    os.replace(folder, self.path / action)
        restoring = self.path / RESTORING
        if _is_folder(restoring):
            for path in restoring.iterdir():
                if path.name != SET_ASIDE:
                    os.replace(path, self.path / path.name)
            shutil.rmtree(restoring)
            self._epoch_known = False  # a checkpoint may be back: read it when asked
        self._clear_discard()

    def _discard(self, name: str) -> None:
        """Delete the set-aside folder `name`: renamed to DISCARD (the decision, atomic),
        then removed."""
        self._clear_discard()
        os.replace(self.path / name, self.path / DISCARD)
        self._clear_discard()

    def _clear_discard(self) -> None:
        """Remove DISCARD. What cannot be removed (no permission, a file still open on
        NFS) is renamed out of the way (`.jaxbp.discard.<random>`, tried again at each
        settling), so that the next discard's rename never meets a folder that is not
        empty."""
        for path in (self.path / DISCARD, *self.path.glob(f"{DISCARD}.*")):
            shutil.rmtree(path, ignore_errors=True)  # a symbolic link: refused, not followed
        if os.path.lexists(self.path / DISCARD):
            os.replace(self.path / DISCARD, self.path / f"{DISCARD}.{uuid.uuid4().hex}")

    def _epoch(self) -> int | None:
        """The epoch of the folder's checkpoint, `None` without one (or unreadable). Read
        once (its meta entry alone), then known: only this process writes a held folder,
        and `save` and the set-asides keep it up to date."""
        if not self._epoch_known:
            try:
                epoch = (
                    read_meta(self.checkpoint).get("epoch")
                    if os.path.lexists(self.checkpoint)
                    else None
                )
            except (OSError, ValueError):
                epoch = None
            if not schema.integer(1).test(epoch):
                epoch = None
            self._remember(epoch)
        return self._epoch_now

    def _remember(self, epoch: int | None) -> None:
        self._epoch_known, self._epoch_now = True, epoch

    def start_new(self, *, overwrite: bool = False) -> None:
        """Start an empty log in a folder that holds no run (`describe`), else raise
        `RunError` naming what it holds. With `overwrite=True` a previous run's files are
        set aside instead, until this run's first checkpoint, and come back if it ends
        before one."""
        what = describe(self.path)
        if what is not None and not overwrite:
            raise RunError(
                f"{self.path} already holds {what}; start_new(overwrite=True) replaces it "
                "(its files are kept until the new run's first checkpoint), or continue it "
                "(RunFolder.saved, load, history, keep_epochs) or use another folder."
            )
        self._set_aside(RUN_FILES)
        write_atomic(self.path / METRICS, b"")

    def keep_epochs(self, history: list[dict[str, Any]], torn: bool) -> None:
        """Cut the log back to `history` (a resumed run's epochs), atomically. The run is
        unfinished again: its summary and figures are set aside until its next
        checkpoint (and come back if it ends before one)."""
        metrics = self.path / METRICS
        if torn or len(read_metrics(metrics)[0]) != len(history):
            write_atomic(metrics, "".join(json.dumps(h) + "\n" for h in history).encode())
        self._set_aside((SUMMARY, *FIGURES))

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def saved(self) -> tuple[int, dict[str, Any]] | None:
        """`(epoch, settings)` of the folder's checkpoint, checked (`CheckpointError`: its
        checksum and its meta, by `runs.schema.META`), without loading its arrays (`load`
        checks those); `None` if there is no checkpoint."""
        if not os.path.lexists(self.checkpoint):
            self._remember(None)
            self._meta = None
            return None
        meta = read_meta(self.checkpoint)
        found = _check_meta(self.checkpoint, meta)
        self._remember(found[0])
        self._meta = meta
        return found

    def initial_parity(self) -> dict[str, Any] | None:
        """The parity check at initialisation that the checkpoint read by `saved` carries
        (`runs.schema.PARITY`), or `None` (none saved, or a checkpoint written before it
        was)."""
        return None if self._meta is None else self._meta.get("parity")

    def load(self, like: Any) -> Any:
        """The checkpoint's state in the structure of `like`, refused (`CheckpointError`)
        if it does not fit `like` or its parameters (`state["params"]` of a dict state,
        else the whole state) hold NaN or inf."""
        state, _ = load_checkpoint(self.checkpoint, like)
        params = state["params"] if isinstance(state, dict) and "params" in state else state
        _check_finite(self.checkpoint, params)
        return state

    def history(self) -> tuple[list[dict[str, Any]], bool]:
        """The epochs logged so far and whether a torn last line was dropped
        (`read_metrics`)."""
        return read_metrics(self.path / METRICS)

    def save(
        self,
        epoch: int,
        state: Any,
        settings: dict[str, Any],
        *,
        parity: dict[str, Any] | None = None,
    ) -> None:
        """Checkpoint `state` (a pytree; `jaxbp train` saves `{"params", "opt_state",
        "key"}`) after `epoch` epochs, atomically, with the run's `settings` (JSON) and
        `parity` (the check at initialisation, `runs.schema.PARITY`) as its meta. A meta
        that breaks `runs.schema.META` (an epoch below 1, ...) raises `RunError` and
        writes nothing."""
        meta = {"epoch": epoch, "config": settings}
        if parity is not None:
            meta["parity"] = parity
        self._check_record(meta, schema.META, "checkpoint meta")
        self._epoch_known = False  # a failing write may fail after the rename: read it then
        save_checkpoint(self.checkpoint, state, meta)
        self._remember(epoch)
        if _is_folder(self.path / PREVIOUS):  # what was set aside is replaced for good
            self._discard(PREVIOUS)

    def _check_record(self, record: Any, rules: dict[str, Any], what: str) -> None:
        """Refuse to write a record that breaks its schema (`RunError`), before any write."""
        found = schema.problem(record, rules)
        if found is not None:
            raise RunError(f"{self.path}: refusing to write a {what} whose {found}.")

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write `summary.json` atomically: a finished run's last word. It replaces the
        summary a resumed run set aside (`keep_epochs`) even when no epoch was left to
        train (so no checkpoint was saved since); the figures set aside with it come back
        until new ones are drawn. A replaced run's files (`start_new(overwrite=True)`)
        still come back if this run saved no checkpoint. A summary that breaks
        `runs.schema.SUMMARY` raises `RunError` and changes nothing."""
        self._check_record(summary, schema.SUMMARY, "summary")
        write_atomic(self.path / SUMMARY, (json.dumps(summary, indent=1) + "\n").encode())
        previous = self.path / PREVIOUS
        if not _is_folder(previous):
            return
        if {p.name for p in previous.iterdir()} - {SET_ASIDE} <= {SUMMARY, *FIGURES}:
            for name in FIGURES:
                if os.path.lexists(previous / name) and not os.path.lexists(self.path / name):
                    os.replace(previous / name, self.path / name)
            self._discard(PREVIOUS)

    def append(self, row: dict[str, Any]) -> None:
        """Append one epoch's line whole: one write, then fsync; on a failed or short
        write the log is cut back to where it was and the `OSError` raised. A line that
        breaks `runs.schema.METRICS_LINE` raises `RunError` and writes nothing; a log
        that is not a regular file of its own (a symbolic link, a hard link) is refused."""
        self._check_record(row, schema.METRICS_LINE, "metrics line")
        data = (json.dumps(row) + "\n").encode()
        metrics = self.path / METRICS
        try:
            fd = os.open(
                metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW | CLOEXEC, 0o666
            )
        except OSError as err:
            if os.path.islink(metrics):
                _check_kind(self.path, metrics)
            raise OSError(err.errno, err.strerror, str(metrics)) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                _check_kind(self.path, metrics)
                raise _refuse_kind(self.path, metrics, "changed kind", f"Remove it (rm {metrics}).")
            size = st.st_size
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(
                        errno.EFBIG,
                        f"only {written} of {len(data)} bytes written (disk full or a file-size "
                        "limit?)",
                    )
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):  # best effort: --resume drops a torn line
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


def _open_lock(path: Path) -> int:
    """The lock file's descriptor, opened without following a symbolic link and refused
    (`_NotOurs`) unless it is a regular file of its own (taking the lock truncates it)."""
    lock = path / LOCK
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | NOFOLLOW | CLOEXEC | NONBLOCK, 0o666)
    except OSError:
        if os.path.lexists(lock):  # a link, a folder, ...: refused naming it
            _check_kind(path, lock)
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            _check_kind(path, lock)
            raise _refuse_kind(path, lock, "is not a regular file", f"Remove it (rm {lock}).")
        if NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _aside_epoch(path: Path) -> int | bool | None:
    """The checkpoint epoch a set-aside's record holds (`None`: no checkpoint then), or
    `False` if the record is missing or unreadable."""
    try:
        with open_regular(path, follow=False) as f:
            record = load_json(f.read())
    except (OSError, ValueError):
        return False
    if schema.problem(record, schema.SET_ASIDE) is not None:
        return False
    return record["epoch"]
