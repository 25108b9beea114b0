"""The DICOM node of the service: a Storage SCP that feeds received series to :class:`StudyService`.

* **Receive** (pynetdicom, one thread per association): C-ECHO (Verification) and C-STORE of CT Image Storage,
  Enhanced CT and Legacy Converted Enhanced CT — the SOP classes ``ichd.io`` reads — in every transfer syntax
  ``ichd`` can decode here (:func:`accepted_transfer_syntaxes`: implicit/explicit little endian, deflated, and each
  compressed syntax of :data:`ichd.io.decode.DECODER_PACKAGES` whose decoder plugin is installed), so compressed
  files are kept exactly as the sender stored them. Associations must call this node's AE title. With
  ``config.tls`` the node accepts TLS connections only (:func:`~ichd.service.dicom_config.server_ssl_context`);
  the handshake is done in each connection's thread (:meth:`DicomNode._on_connection`), and a caller that fails
  it is logged with the reason and disconnected before any DICOM is read. Each instance is
  written durably into ``DATA/dicom/incoming/<study>/<series>/`` (:mod:`ichd.service.dicom_staging`) before the
  success status is sent.
* **Complete** (thread ``ichd-dicom-complete``): a series with no new instance for ``idle_timeout_s`` is handed to
  :meth:`StudyService.submit_study` (``source="dicom"``), so it is analysed exactly like an upload and listed with
  the uploads; then its staging folder is removed. If the hand-over fails for a passing reason (e.g. the disk is
  full) the series stays and is tried again after another idle timeout; a series the service refuses outright
  is moved to ``DATA/dicom/rejected/`` for an administrator (never silently dropped).
* **Forward** (thread ``ichd-dicom-forward``, only with ``forward``): once the job of a study received here is
  done, its SR and Secondary Captures are sent with C-STORE (:mod:`ichd.service.dicom_forward`); each file's
  outcome is logged and written to ``DATA/studies/<id>/forward.json``. A failed forward is retried, then recorded;
  the job stays done and its results stay available.

**One process owns a data folder** (the service's ``service.lock``): the node runs inside the process that holds
it, on the same :class:`StudyService` — ``ichd listen`` (DICOM only) or ``ichd serve --dicom-port`` (HTTP and
DICOM together). :func:`attach_dicom_node` opens the service, binds the port (so a port in use is a one-line error
before the model loads) and registers :meth:`DicomNode.stop` to run first when the service closes.

Logs name AE titles, addresses, UIDs, ids and counts; never a patient name, ID or date (only Study/Series/SOP
Instance UIDs are read from received headers).
"""

from __future__ import annotations

import errno
import queue
import shutil
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from ichd.errors import IchdError, InputError
from ichd.service.dicom_config import (
    DicomNodeConfig,
    ForwardTarget,
    check_dicom_bind,
    parse_forward,
    server_ssl_context,
)
from ichd.service.dicom_forward import (
    ForwardQueue,
    PendingForward,
    relative_names,
    result_files,
    send_files,
    write_record,
)
from ichd.service.dicom_staging import SeriesStaging, StagedSeries, StagingFull
from ichd.service.runner import StudyService
from ichd.service.store import new_id
from ichd.utils.logging import get_logger

log = get_logger(__name__)

#: SOP classes the node stores (the CT classes :mod:`ichd.io.dicom` reads).
STORAGE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
)
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
#: Uncompressed syntaxes, in order of preference (explicit first), and deflate (inflated by pydicom's reader).
UNCOMPRESSED_SYNTAXES: tuple[str, ...] = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99")

# C-STORE statuses (PS3.4 B.2.3)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

STUDY_INSTANCE_UID_TAG = 0x0020000D
SERIES_INSTANCE_UID_TAG = 0x0020000E
SERIES_DESCRIPTION_TAG = 0x0008103E
#: Number of Series Related Instances: a sender that states it completes the series without the idle timeout
SERIES_INSTANCES_TAG = 0x00201209
#: Polling period of the forward thread (seconds).
FORWARD_POLL_S = 0.5


def accepted_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes the node accepts: uncompressed, deflated, and each compressed syntax ichd can decode
    with the plugins installed (a syntax whose decoder is missing is not offered, so the sender falls back)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    from ichd.io.decode import DECODER_PACKAGES

    out = list(UNCOMPRESSED_SYNTAXES)
    for ts in DECODER_PACKAGES:
        try:
            available = get_decoder(UID(ts)).is_available
        except NotImplementedError:
            available = False
        if available:
            out.append(ts)
    return out


def _raw_text(ds: Any, tag: int) -> str:
    """The text of a short string element as stored (no VR conversion or validation); "" when absent."""
    elem = ds.get_item(tag)
    value = None if elem is None else elem.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").strip(" \x00")


def _raw_count(ds: Any, tag: int) -> int | None:
    """A positive integer string element (IS) as stored, or None when absent or not a positive integer."""
    text = _raw_text(ds, tag)
    try:
        value = int(text.split("\\")[0]) if text else 0
    except ValueError:
        return None
    return value if value > 0 else None


def _peer(event: Any) -> str:
    """``'AET' (host:port)`` of the association's requestor (for the log)."""
    req = event.assoc.requestor
    return f"{str(req.ae_title).strip()!r} ({req.address}:{req.port})"


class DicomNode:
    """Storage SCP + series completion + forwarding over one :class:`StudyService` (see the module docstring).

    The service must be open (:meth:`StudyService.open`) before :meth:`start`; use :func:`attach_dicom_node`.
    """

    def __init__(self, service: StudyService, config: DicomNodeConfig) -> None:
        self.service = service
        self.config = config
        self.root = Path(service.data_dir) / "dicom"
        self.staging = SeriesStaging(self.root / "incoming", idle_timeout_s=config.idle_timeout_s,
                                     max_instances=service.config.max_files)
        self.forwards = ForwardQueue(self.root / "forward")
        self._new_forwards: queue.SimpleQueue[tuple[str, str, ForwardTarget]] = queue.SimpleQueue()
        self._server: Any = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._assoc_counts: dict[int, list[int]] = {}
        self._counts_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------- life cycle

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        """The port the node listens on (the real one when the configured port was 0)."""
        if self._server is None:
            return self.config.port
        return int(self._server.server_address[1])

    def start(self) -> DicomNode:
        """Recover what an earlier run left, bind the port and start the threads (idempotent).

        Raises :class:`InputError` when the port cannot be bound (in use, not permitted, unknown address).
        """
        if self._server is not None:
            return self
        self.service.require_store()
        found = self.staging.recover()
        pending = self.forwards.load()
        if found or pending:
            log.info("DICOM node: %d series left from an earlier run (complete after %g s idle), %d forward(s) "
                     "pending", found, self.config.idle_timeout_s, pending)
        self._server = self._bind()
        self._stop.clear()
        for name, target in (("ichd-dicom-complete", self._complete_loop), ("ichd-dicom-forward", self._forward_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        note = check_dicom_bind(self.config.host, self.config.tls)
        if note:
            log.warning("%s", note)
        tls = self.config.tls
        log.info("DICOM node %s listening on %s:%d%s (series complete after %g s idle%s)", self.config.aet,
                 self.config.host, self.port,
                 "" if tls is None else f", TLS only{'' if tls.ca is None else ', client certificates required'}",
                 self.config.idle_timeout_s,
                 f", results forwarded to {self.config.forward}" if self.config.forward else "")
        return self

    def stop(self) -> None:
        """Stop listening (open associations are closed) and stop the threads. Series still incomplete stay in
        the staging folder and pending forwards in the queue: the next start picks them up."""
        server, self._server = self._server, None
        if server is not None:
            active = server.active_associations
            server.shutdown()  # no new associations
            for assoc in active:  # a sender cut off here gets no success for unwritten instances: it resends
                assoc.abort()
            for assoc in active:
                assoc.join(self.config.dimse_timeout_s)
        self._stop.set()
        for t in self._threads:
            t.join(self.config.dimse_timeout_s + self.config.connect_timeout_s)
        self._threads = []
        if server is not None:
            log.info("DICOM node %s stopped (%d series incomplete, %d forward(s) pending)", self.config.aet,
                     self.staging.pending(), len(self.forwards.items))

    def _application_entity(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.config.aet)
        ae.require_called_aet = True
        if self.config.allowed_aets:
            ae.require_calling_aet = list(self.config.allowed_aets)
        ae.acse_timeout = self.config.acse_timeout_s
        ae.dimse_timeout = self.config.dimse_timeout_s
        ae.network_timeout = self.config.network_timeout_s
        ae.maximum_pdu_size = self.config.max_pdu
        syntaxes = accepted_transfer_syntaxes()
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(VERIFICATION_SOP_CLASS, list(UNCOMPRESSED_SYNTAXES[:2]))
        return ae

    def _bind(self) -> Any:
        from pynetdicom import evt

        ae = self._application_entity()
        handlers = [(evt.EVT_CONN_OPEN, self._on_connection), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_ACCEPTED, self._on_accepted), (evt.EVT_RELEASED, self._on_ended),
                    (evt.EVT_ABORTED, self._on_ended), (evt.EVT_REJECTED, self._on_rejected)]
        where = f"{self.config.host}:{self.config.port}"
        tls = self.config.tls
        context = server_ssl_context(tls, timeout_s=self.config.acse_timeout_s) if tls is not None else None
        try:
            return ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers,
                                   ssl_context=context)
        except socket.gaierror as e:
            raise InputError(f"cannot listen on {where}: unknown host {self.config.host!r} ({e.strerror})",
                             hint="give an address of this machine to --host, e.g. 127.0.0.1 or 0.0.0.0") from e
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InputError(f"cannot listen on {where}: the port is already in use",
                                 hint="stop the program using it or choose another --port") from e
            if e.errno in (errno.EACCES, errno.EPERM):
                raise InputError(f"cannot listen on {where}: permission denied",
                                 hint="ports below 1024 need privileges; use e.g. --port 11112") from e
            if e.errno == errno.EADDRNOTAVAIL:
                raise InputError(f"cannot listen on {where}: the address is not one of this machine's",
                                 hint="use 127.0.0.1, 0.0.0.0 or an address of this machine") from e
            raise InputError(f"cannot listen on {where}: {e.strerror or e}") from e

    # -------------------------------------------------------------------------------------------- receive

    def _count(self, event: Any, k: int) -> None:
        with self._counts_lock:
            self._assoc_counts.setdefault(id(event.assoc), [0, 0])[k] += 1

    def _on_connection(self, event: Any) -> None:
        """With TLS: the handshake, in this connection's own thread (see ``dicom_config._ServerContext``). A caller
        that fails it (no TLS, no certificate or one the CA did not sign) is logged with the reason and
        disconnected before any DICOM is read; one that stays silent, after ``acse_timeout_s``."""
        sock = event.assoc.dul.socket.socket
        if not isinstance(sock, ssl.SSLSocket):
            return
        address = f"{event.address[0]}:{event.address[1]}"
        try:
            sock.do_handshake()
        except (OSError, ValueError) as e:  # ssl.SSLError, a timeout, a reset connection, a closed socket
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or type(e).__name__
            log.warning("connection from %s refused: TLS handshake failed (%s)", address, reason)
            event.assoc.dul.socket.close()
            # no A-ASSOCIATE can come now: end the association thread at once instead of after acse_timeout_s
            event.assoc.acse_timeout = 0
            return
        sock.settimeout(None)  # as a plain TCP connection: the association's own timeouts apply from here
        log.debug("TLS connection from %s: %s, %s", address, sock.version(), sock.cipher()[0])

    def _on_accepted(self, event: Any) -> None:
        log.info("association from %s accepted", _peer(event))

    def _on_ended(self, event: Any) -> None:
        with self._counts_lock:
            stored, refused = self._assoc_counts.pop(id(event.assoc), [0, 0])
        how = "aborted" if event.event.name == "EVT_ABORTED" else "released"
        log.info("association from %s %s: %d instance(s) stored, %d refused", _peer(event), how, stored, refused)

    def _on_rejected(self, event: Any) -> None:
        calling = str(event.assoc.requestor.ae_title).strip()
        if self.config.allowed_aets and calling not in self.config.allowed_aets:
            log.warning("association from %s rejected: calling AE title %r is not allowed (--allow-aet: %s)",
                        _peer(event), calling, ", ".join(self.config.allowed_aets))
            return
        log.warning("association from %s rejected (it must call AE title %r and propose CT storage or "
                    "verification)", _peer(event), self.config.aet)

    def _on_echo(self, event: Any) -> int:
        log.debug("C-ECHO from %s", _peer(event))
        return STATUS_SUCCESS

    def _on_store(self, event: Any) -> int:
        """C-STORE: write the instance as received (same transfer syntax, same bytes) into its series folder."""
        peer = _peer(event)
        sop_uid = str(event.request.AffectedSOPInstanceUID or "").strip()
        try:
            study_uid, series_uid = self._series_uids(event)
        except Exception as e:  # noqa: BLE001 - anything pydicom raises on a broken data set
            log.warning("C-STORE from %s: instance %s refused: the data set cannot be decoded (%s)", peer,
                        sop_uid or "?", type(e).__name__)
            self._count(event, 1)
            return STATUS_CANNOT_UNDERSTAND
        if not (study_uid and series_uid and sop_uid):
            log.warning("C-STORE from %s: instance %s refused: Study/Series/SOP Instance UID missing", peer,
                        sop_uid or "?")
            self._count(event, 1)
            return STATUS_DATASET_MISMATCH
        try:
            self.staging.store(study_uid, series_uid, sop_uid, event.encoded_dataset(),
                               calling_ae=str(event.assoc.requestor.ae_title).strip(),
                               description=_raw_text(event.dataset, SERIES_DESCRIPTION_TAG),
                               expected=_raw_count(event.dataset, SERIES_INSTANCES_TAG))
        except StagingFull as e:
            log.warning("C-STORE from %s: instance %s of series %s refused: %s (at most %d per study)", peer,
                        sop_uid, series_uid, e, self.staging.max_instances)
            self._count(event, 1)
            return STATUS_OUT_OF_RESOURCES
        except OSError as e:
            log.error("C-STORE from %s: instance %s of series %s could not be written: %s", peer, sop_uid,
                      series_uid, e.strerror or type(e).__name__)
            self._count(event, 1)
            return STATUS_OUT_OF_RESOURCES
        except Exception:  # a bug: refuse this instance (the sender keeps it) and say so in the service log
            log.exception("C-STORE from %s: instance %s of series %s could not be stored", peer, sop_uid, series_uid)
            self._count(event, 1)
            return STATUS_CANNOT_UNDERSTAND
        log.debug("C-STORE from %s: instance %s of series %s (study %s) stored", peer, sop_uid, series_uid,
                  study_uid)
        self._count(event, 0)
        return STATUS_SUCCESS

    @staticmethod
    def _series_uids(event: Any) -> tuple[str, str]:
        """Study and Series Instance UID of the received data set (nothing else is read from it).

        The raw values are read, without pydicom's value conversion: it would warn (from many threads at once)
        about the non-conformant UIDs some archives hold, e.g. RSNA's ``ID_...``.
        """
        ds = event.dataset
        return _raw_text(ds, STUDY_INSTANCE_UID_TAG), _raw_text(ds, SERIES_INSTANCE_UID_TAG)

    # ------------------------------------------------------------------------------------------- complete

    def _complete_loop(self) -> None:
        period = min(1.0, max(0.05, self.config.idle_timeout_s / 4))
        while not self._stop.wait(period):
            try:
                self.complete_due()
            except Exception:
                log.exception("DICOM node: handing over complete series failed; trying again")

    def complete_due(self) -> int:
        """Hand every series idle for the timeout to the service; returns how many were queued as studies."""
        return sum(self._hand_over(series) for series in self.staging.take_due())

    def _hand_over(self, series: StagedSeries) -> int:
        study_dir, series_dir = series.key
        files = series.files()
        if not files:
            self.staging.finish(series, handed_over=True)
            return 0
        try:
            job = self.service.submit_study(files, source="dicom")
        except IchdError as e:  # refused for good (e.g. too many files): keep the files for an administrator
            target = self.root / "rejected" / study_dir / f"{series_dir}-{new_id()[:8]}"
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.move(str(series.folder), target)
            self.staging.discard(series)
            log.error("series %s (study %s, %d instance(s)) refused by the service: %s; files kept in %s",
                      series_dir, study_dir, len(files), e, target)
            return 0
        except Exception as e:  # noqa: BLE001 - disk full, service closing: keep and try again
            self.staging.finish(series, handed_over=False)
            log.warning("series %s (study %s): could not be queued (%s: %s); trying again in %g s", series_dir,
                        study_dir, type(e).__name__, e, self.config.idle_timeout_s)
            return 0
        if self.config.forward is not None:
            self._new_forwards.put((job.id, job.study_id, self.config.forward))
        self.staging.finish(series, handed_over=True)
        log.info("series %s (study %s): %d instance(s) complete after %g s idle; queued as study %s, job %s",
                 series_dir, study_dir, len(files), self.config.idle_timeout_s, job.study_id, job.id)
        return 1

    # -------------------------------------------------------------------------------------------- forward

    def _forward_loop(self) -> None:
        while True:
            try:
                self.forward_due()
            except Exception:
                log.exception("DICOM node: forwarding failed; trying again")
            if self._stop.wait(FORWARD_POLL_S):
                break

    def forward_due(self) -> None:
        """Queue the jobs handed over since the last call; forward each pending study whose job is done."""
        while True:
            try:
                job_id, study_id, target = self._new_forwards.get_nowait()
            except queue.Empty:
                break
            self.forwards.add(job_id, study_id, target)
        store = self.service.store
        if store is None:
            return
        for item in self.forwards.due():
            if self._stop.is_set():
                return
            job = store.get_job(item.job_id)
            if job is None:
                log.info("forward of study %s: the study was deleted; nothing sent", item.study_id)
                self.forwards.remove(item)
            elif job.status == "failed":
                log.info("forward of study %s: job %s failed; nothing to send", item.study_id, item.job_id)
                self.forwards.remove(item)
            elif job.status == "done":
                self._forward(item)

    def _forward(self, item: PendingForward) -> None:
        paths = self.service.paths(item.study_id)
        try:
            target = parse_forward(item.destination)
        except InputError as e:  # a damaged queue entry: say so once and drop it
            log.error("forward of study %s: bad destination in the queue (%s); dropped", item.study_id, e)
            self.forwards.remove(item)
            return
        files = result_files(paths.result)
        names = relative_names(files, paths.root)
        todo = [(f, n) for f, n in zip(files, names) if n not in item.sent]
        item.attempts += 1
        if not files:
            log.warning("forward of study %s to %s: the result holds no DICOM objects; nothing sent",
                        item.study_id, target)
        t0 = time.perf_counter()
        outcomes = send_files([f for f, _ in todo], target, self.config, names=[n for _, n in todo]) if todo else []
        for o in outcomes:
            if o.ok:
                item.sent.append(o.file)
                log.info("forward of study %s to %s: %s sent (status 0x%04X)", item.study_id, target, o.file,
                         o.status)
            else:
                log.warning("forward of study %s to %s: %s not sent: %s", item.study_id, target, o.file, o.error)
        failed = [o for o in outcomes if not o.ok]
        final = not failed or item.attempts >= self.config.forward_attempts
        write_record(paths.root, item, names, outcomes, final=final)
        if not failed:
            log.info("forward of study %s to %s: %d file(s) sent in %.1f s", item.study_id, target,
                     len(item.sent), time.perf_counter() - t0)
            self.forwards.remove(item)
        elif final:
            log.error("forward of study %s to %s failed after %d attempt(s): %d of %d file(s) not sent; the "
                      "results stay in the service (see forward.json)", item.study_id, target, item.attempts,
                      len(failed), len(files))
            self.forwards.remove(item)
        else:
            delay = self.config.forward_retry_delay_s * 2 ** (item.attempts - 1)
            item.next_attempt_at = time.monotonic() + delay
            self.forwards.save(item)
            log.warning("forward of study %s to %s: %d file(s) not sent; attempt %d of %d in %g s", item.study_id,
                        target, len(failed), item.attempts + 1, self.config.forward_attempts, delay)


def attach_dicom_node(service: StudyService, config: DicomNodeConfig) -> DicomNode:
    """Open ``service``'s data folder, start a :class:`DicomNode` on it and stop the node first when the service
    closes. Raises :class:`InputError` (and leaves the service closed) when the port cannot be bound."""
    service.open()
    node = DicomNode(service, config)
    try:
        node.start()
    except BaseException:
        service.close()
        raise
    service.add_close_hook(node.stop)
    service.add_receiving_source(node.staging.receiving)
    return node
