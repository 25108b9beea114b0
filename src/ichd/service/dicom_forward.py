"""Forward a study's DICOM results (the SR and the Secondary Captures) to another node with C-STORE.

:func:`send_files` opens one association to the destination, proposes each file's SOP class in the file's own
transfer syntax (plus the uncompressed ones, so the peer may choose), and sends the files one by one; it never
raises for network or peer problems, it returns one :class:`FileOutcome` per file.

:class:`ForwardQueue` keeps the studies still to forward as small JSON files under ``DATA/dicom/forward/`` (one
per job), so a pending forward survives a restart. Each attempt sends only the files not sent yet; after the
last attempt the outcome is written to ``DATA/studies/<study>/forward.json`` and logged. A failed forward never
touches the study's result: the job stays done.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ichd.service.dicom_config import DicomNodeConfig, ForwardTarget
from ichd.service.store import valid_id
from ichd.utils.files import atomic_write_text
from ichd.utils.logging import get_logger

log = get_logger(__name__)

RECORD_NAME = "forward.json"
#: C-STORE statuses that mean the peer stored the instance (success, and the warnings B000/B006/B007).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


@dataclass
class FileOutcome:
    """What happened to one file: ``status`` is the C-STORE status (None when none came back)."""

    file: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status in STORED_STATUSES


def result_files(result_dir: Path) -> list[Path]:
    """The DICOM objects ``ichd predict --format dicom`` wrote under ``result_dir`` (SR first, then SCs)."""
    files = [p for p in result_dir.rglob("*.dcm") if p.parent.name == "dicom"]
    return sorted(files, key=lambda p: (p.parent.as_posix(), not p.name.startswith("sr"), p.name))


def send_files(files: Sequence[Path], target: ForwardTarget, config: DicomNodeConfig, *,
               names: Sequence[str] | None = None) -> list[FileOutcome]:
    """Send ``files`` to ``target`` in one association (see the module docstring); one outcome per file."""
    import pydicom
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, build_context

    names = list(names) if names is not None else [p.name for p in files]
    outcomes: list[FileOutcome] = []
    datasets: list[Any] = []
    syntaxes: dict[str, list[str]] = {}
    for path, name in zip(files, names, strict=True):
        outcome = FileOutcome(file=name)
        outcomes.append(outcome)
        try:
            ds = pydicom.dcmread(path)
            outcome.sop_class_uid = str(ds.SOPClassUID)
            outcome.sop_instance_uid = str(ds.SOPInstanceUID)
            ts = UID(str(ds.file_meta.TransferSyntaxUID))
        except Exception as e:  # noqa: BLE001 - a damaged result file is this file's failure, not the study's
            outcome.error = f"cannot read the file: {type(e).__name__}: {e}"
            datasets.append(None)
            continue
        wanted = syntaxes.setdefault(outcome.sop_class_uid, [])
        for uid in (ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian) if not ts.is_compressed else (ts,):
            if uid not in wanted:
                wanted.append(uid)
        datasets.append(ds)
    if not any(ds is not None for ds in datasets):
        return outcomes

    ae = AE(ae_title=config.aet)
    ae.acse_timeout = config.acse_timeout_s
    ae.dimse_timeout = config.dimse_timeout_s
    ae.network_timeout = config.network_timeout_s
    ae.connection_timeout = config.connect_timeout_s
    ae.requested_contexts = [build_context(sop, tss) for sop, tss in syntaxes.items()]
    try:
        assoc = ae.associate(target.host, target.port, ae_title=target.aet, max_pdu=config.max_pdu)
    except Exception as e:  # noqa: BLE001 - e.g. an unresolvable host name
        assoc = None
        why = f"cannot connect: {type(e).__name__}: {e}"
    else:
        why = ("association rejected" if assoc.is_rejected else
               "association aborted" if assoc.is_aborted else
               "cannot connect or negotiate the association")
    if assoc is None or not assoc.is_established:
        for outcome, ds in zip(outcomes, datasets):
            if ds is not None:
                outcome.error = f"{why} by {target}"
        return outcomes
    try:
        for outcome, ds in zip(outcomes, datasets):
            if ds is None:
                continue
            if not assoc.is_established:
                outcome.error = "the association ended before this file was sent"
                continue
            try:
                status = assoc.send_c_store(ds)
            except Exception as e:  # noqa: BLE001 - e.g. no accepted presentation context for this SOP class
                outcome.error = f"not sent: {type(e).__name__}: {e}"
                continue
            code = getattr(status, "Status", None)
            if code is None:
                outcome.error = "no response (timeout, or the association was aborted)"
            else:
                outcome.status = int(code)
                if not outcome.ok:
                    outcome.error = f"the destination answered status 0x{int(code):04X}"
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


@dataclass
class PendingForward:
    """A study to forward once its job is done (stored as ``DATA/dicom/forward/<job_id>.json``)."""

    job_id: str
    study_id: str
    destination: str
    attempts: int = 0
    sent: list[str] = field(default_factory=list)
    next_attempt_at: float = 0.0  # monotonic; not persisted


class ForwardQueue:
    """The pending forwards of one data folder (see the module docstring); not thread-safe: one thread uses it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.items: dict[str, PendingForward] = {}

    def load(self) -> int:
        """Read the pending forwards an earlier run left; returns how many."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for tmp in self.root.glob(".*"):  # a write cut short
            tmp.unlink(missing_ok=True)
        for path in sorted(self.root.glob("*.json")):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                item = PendingForward(job_id=str(raw["job_id"]), study_id=str(raw["study_id"]),
                                      destination=str(raw["destination"]), attempts=int(raw.get("attempts", 0)),
                                      sent=[str(s) for s in raw.get("sent", [])])
                if not (valid_id(item.job_id) and valid_id(item.study_id)):
                    raise ValueError("bad ids")
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("forward queue: dropping unreadable entry %s (%s)", path.name, type(e).__name__)
                path.unlink(missing_ok=True)
                continue
            self.items[item.job_id] = item
        return len(self.items)

    def add(self, job_id: str, study_id: str, destination: ForwardTarget) -> PendingForward:
        item = PendingForward(job_id=job_id, study_id=study_id, destination=str(destination))
        self.save(item)
        self.items[job_id] = item
        return item

    def save(self, item: PendingForward) -> None:
        data = {k: v for k, v in asdict(item).items() if k != "next_attempt_at"}
        atomic_write_text(self.root / f"{item.job_id}.json", json.dumps(data))

    def remove(self, item: PendingForward) -> None:
        self.items.pop(item.job_id, None)
        (self.root / f"{item.job_id}.json").unlink(missing_ok=True)

    def due(self, now: float | None = None) -> list[PendingForward]:
        now = time.monotonic() if now is None else now
        return [i for i in self.items.values() if i.next_attempt_at <= now]


def write_record(study_root: Path, item: PendingForward, names: Sequence[str], outcomes: Sequence[FileOutcome], *,
                 final: bool) -> dict[str, Any]:
    """Write ``studies/<id>/forward.json``: the destination, and per result file whether it arrived (with the
    C-STORE status or the error of the latest attempt that tried it)."""
    sent = set(item.sent)
    latest = {o.file: o for o in outcomes}
    files = []
    for name in names:
        o = latest.get(name)
        files.append({"file": name, "sent": name in sent,
                      "sop_instance_uid": o.sop_instance_uid if o else None,
                      "status": None if o is None or o.status is None else f"0x{o.status:04X}",
                      "error": None if name in sent or o is None else o.error})
    n_failed = sum(not f["sent"] for f in files)
    record = {"destination": item.destination, "attempts": item.attempts,
              "status": "sent" if not n_failed else ("failed" if final else "retrying"),
              "n_sent": len(files) - n_failed, "n_failed": n_failed,
              "updated_at": datetime.now(UTC).isoformat(timespec="seconds"), "files": files}
    if study_root.is_dir():  # else the study was deleted meanwhile
        atomic_write_text(study_root / RECORD_NAME, json.dumps(record, indent=2))
    return record


def relative_names(files: Sequence[Path], base: Path) -> list[str]:
    """``files`` as POSIX paths relative to ``base`` (the names the record and the log use)."""
    return [Path(os.path.relpath(p, base)).as_posix() for p in files]
