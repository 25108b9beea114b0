"""A load generator for ``ichd serve`` that also proves nothing was lost or mixed up.

:func:`run_load` drives a running service (e.g. :class:`ichd.testing.server.ServeProcess`) with ``clients``
concurrent HTTP clients sharing a budget of ``requests`` requests: ``uploads`` of them upload a study (multipart
DICOM files, one of the given :class:`Upload` inputs in turn), the rest read, at random (seeded): a job's status,
a study, the study list, a done study's ``prediction.json``, or one of its slice PNGs. When the budget is spent it
waits for every job and checks:

* **nothing lost**: every upload was accepted (202) once, its job ended ``done``, and the study list holds it;
* **nothing mixed up**: each study's ``prediction.json`` is of its own upload: the same SeriesInstanceUID and
  exactly its SOPInstanceUIDs; and every study of one input has the same probabilities (identical inputs,
  identical results).

:class:`LoadReport` holds the latencies per request kind (p50 / p95 / max), throughput, the jobs' queue wait and
run time (from the job store's timestamps), and every error. Needs ``httpx2`` (a dev dependency).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

#: Read kinds and their share of the reads.
READ_MIX: dict[str, float] = {"job": 0.25, "study": 0.15, "studies": 0.2, "result": 0.2, "slice": 0.2}
KINDS = ("upload", *READ_MIX)


@dataclass(frozen=True)
class Upload:
    """One input to upload: its files (name, bytes) and the UIDs its result must carry."""

    name: str
    files: tuple[tuple[str, bytes], ...]
    series_uid: str
    sop_uids: frozenset[str]

    @property
    def n_bytes(self) -> int:
        return sum(len(b) for _, b in self.files)


def _raw_uid(ds: Any, keyword: str) -> str:
    """A UID element's stored text, without pydicom's value conversion (which warns about pseudo-UIDs)."""
    from pydicom.datadict import tag_for_keyword

    elem = ds.get_item(tag_for_keyword(keyword))
    value = elem.value if elem is not None else b""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return text.strip("\x00 ")


def load_upload(folder: str | Path, name: str | None = None) -> Upload:
    """The DICOM files of ``folder`` (one series) as an :class:`Upload`."""
    import pydicom

    files, series, sops = [], set(), set()
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file():
            continue
        data = path.read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series.add(_raw_uid(ds, "SeriesInstanceUID"))
        sops.add(_raw_uid(ds, "SOPInstanceUID"))
        files.append((path.name, data))
    if len(series) != 1:
        raise ValueError(f"{folder}: expected the files of one series, found {len(series)}")
    return Upload(name or Path(folder).name, tuple(files), series.pop(), frozenset(sops))


@dataclass
class LoadPlan:
    """How much load: ``requests`` in all (``uploads`` of them uploads) from ``clients`` concurrent clients,
    issued for at most ``max_seconds``; then up to ``job_timeout_s`` to wait for the jobs.

    ``rate_rps``: start request ``i`` no earlier than ``i / rate_rps`` seconds into the run (the uploads and reads
    spread over the time the jobs take, so result and slice reads find done studies and run while the predictor
    works; whenever the service is slower than the rate, up to ``clients`` requests are in flight at once).
    ``None``: every client sends its next request as soon as its last one is answered."""

    clients: int = 50
    requests: int = 500
    uploads: int = 20
    rate_rps: float | None = None
    max_seconds: float = 600.0
    job_timeout_s: float = 900.0
    request_timeout_s: float = 300.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.uploads <= self.requests or self.clients < 1:
            raise ValueError("need 1 <= uploads <= requests and clients >= 1")
        if self.rate_rps is not None and self.rate_rps <= 0:
            raise ValueError("rate_rps must be > 0")


@dataclass
class Sample:
    kind: str
    status: int
    seconds: float
    error: str | None = None


@dataclass
class LoadReport:
    """What :func:`run_load` measured and found (see the module docstring)."""

    plan: dict[str, Any]
    inputs: dict[str, dict[str, Any]]
    wall_s: float = 0.0
    load_phase_s: float = 0.0
    requests_done: int = 0
    max_in_flight: int = 0
    latency_s: dict[str, dict[str, float]] = field(default_factory=dict)
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)
    throughput_rps: float = 0.0
    jobs: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    mixed_up: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.errors or self.lost or self.mixed_up)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        """A plain-text table of the numbers."""
        lines = [(f"{self.requests_done} requests from {self.plan['clients']} clients in {self.load_phase_s:.1f} s "
                  f"({self.throughput_rps:.1f} req/s, at most {self.max_in_flight} in flight); total wall "
                  f"{self.wall_s:.1f} s"),
                 f"{'kind':<8} {'n':>5} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}  statuses"]
        for kind in KINDS:
            lat = self.latency_s.get(kind)
            if not lat:
                continue
            codes = " ".join(f"{c}:{n}" for c, n in sorted(self.statuses.get(kind, {}).items()))
            lines.append(f"{kind:<8} {int(lat['n']):>5} {lat['p50'] * 1e3:>9.0f} {lat['p95'] * 1e3:>9.0f} "
                         f"{lat['max'] * 1e3:>9.0f}  {codes}")
        for key in ("queue_wait_s", "run_s"):
            s = self.jobs.get(key) or {}
            if s:
                lines.append(f"jobs {key}: p50 {s['p50']:.1f} s, p95 {s['p95']:.1f} s, max {s['max']:.1f} s")
        lines.append(f"jobs: {self.jobs.get('statuses')}; lost {len(self.lost)}, mixed up {len(self.mixed_up)}, "
                     f"errors {len(self.errors)}")
        lines += [f"  error: {e}" for e in self.errors[:10]] + [f"  lost: {e}" for e in self.lost[:10]]
        lines += [f"  mixed up: {e}" for e in self.mixed_up[:10]]
        return "\n".join(lines)


def percentiles(values: list[float]) -> dict[str, float]:
    """n, p50, p95 and max of ``values`` (nearest-rank p95)."""
    if not values:
        return {}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {"n": float(len(ordered)), "p50": float(statistics.median(ordered)), "p95": float(p95),
            "max": float(ordered[-1])}


@dataclass
class _Submitted:
    upload: Upload
    study_id: str
    job_id: str
    done: bool = False


class _Run:
    """The shared state of one load run."""

    def __init__(self, base_url: str, token: str | None, uploads: list[Upload], plan: LoadPlan) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.inputs = uploads
        self.plan = plan
        self.rng = random.Random(plan.seed)
        kinds = ["upload"] * plan.uploads + self.rng.choices(list(READ_MIX), weights=list(READ_MIX.values()),
                                                             k=plan.requests - plan.uploads)
        self.rng.shuffle(kinds)
        first = kinds.index("upload")
        kinds[0], kinds[first] = kinds[first], kinds[0]  # the first request uploads: the reads need a study
        self.queue = kinds
        self.samples: list[Sample] = []
        self.submitted: list[_Submitted] = []
        self.next_upload = 0
        self.issued = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.t0 = 0.0
        self.deadline = 0.0

    def take(self) -> tuple[str, float] | None:
        """The next request kind and when it may start (``time.monotonic``), or ``None`` when the run is over."""
        if not self.queue or time.monotonic() > self.deadline:
            return None
        start = self.t0 + (self.issued / self.plan.rate_rps if self.plan.rate_rps else 0.0)
        self.issued += 1
        return self.queue.pop(0), start

    def done_study(self) -> _Submitted | None:
        done = [s for s in self.submitted if s.done]
        return self.rng.choice(done) if done else None

    async def request(self, client: Any, kind: str) -> None:
        import httpx2

        t0 = time.perf_counter()
        status, error = 0, None
        expect = {200}
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if kind == "upload":
                up = self.inputs[self.next_upload % len(self.inputs)]
                self.next_upload += 1
                files = [("files", (n, b, "application/dicom")) for n, b in up.files]
                r = await client.post("/v1/studies", files=files)
                status, expect = r.status_code, {202}
                if status == 202:
                    body = r.json()
                    self.submitted.append(_Submitted(up, body["study_id"], body["job_id"]))
            elif kind == "studies" or not self.submitted:
                kind = "studies"
                r = await client.get("/v1/studies", params={"limit": 1000})
                status = r.status_code
            elif kind in ("result", "slice") and (target := self.done_study()) is not None:
                if kind == "result":
                    r = await client.get(f"/v1/studies/{target.study_id}/result")
                else:
                    index = self.rng.randrange(len(target.upload.sop_uids))
                    r = await client.get(f"/v1/studies/{target.study_id}/slices/{index}.png",
                                         params={"window": self.rng.choice(["brain", "subdural", "bone"])})
                status = r.status_code
            else:  # a job or study read (also result/slice reads before any study is done)
                kind = "study" if kind == "study" else "job"
                target = self.rng.choice(self.submitted)
                url = f"/v1/jobs/{target.job_id}" if kind == "job" else f"/v1/studies/{target.study_id}"
                r = await client.get(url)
                status = r.status_code
                if status == 200 and r.json()["status"] == "done":
                    target.done = True
            if status not in expect:
                error = f"{kind}: HTTP {status}: {r.text[:200]}"
        except (httpx2.HTTPError, ValueError, KeyError) as e:  # timeout, reset connection, bad body: an error
            error = f"{kind}: {type(e).__name__}: {e}"
        finally:
            self.in_flight -= 1
        self.samples.append(Sample(kind, status, time.perf_counter() - t0, error))

    async def client_loop(self) -> None:
        import httpx2

        async with httpx2.AsyncClient(base_url=self.base_url, headers=self.headers,
                                      timeout=self.plan.request_timeout_s) as client:
            while (next_request := self.take()) is not None:
                kind, start = next_request
                await asyncio.sleep(max(0.0, start - time.monotonic()))
                await self.request(client, kind)


async def _wait_jobs(run: _Run, report: LoadReport) -> list[dict[str, Any]]:
    import httpx2

    deadline = time.monotonic() + run.plan.job_timeout_s
    finished: dict[str, dict[str, Any]] = {}
    async with httpx2.AsyncClient(base_url=run.base_url, headers=run.headers, timeout=60.0) as client:
        while len(finished) < len(run.submitted) and time.monotonic() < deadline:
            for sub in run.submitted:
                if sub.job_id in finished:
                    continue
                r = await client.get(f"/v1/jobs/{sub.job_id}")
                if r.status_code == 200 and r.json()["status"] in ("done", "failed"):
                    finished[sub.job_id] = r.json()
            if len(finished) < len(run.submitted):
                await asyncio.sleep(1.0)
    for sub in run.submitted:
        job = finished.get(sub.job_id)
        if job is None:
            report.lost.append(f"job {sub.job_id} ({sub.upload.name}) not finished after {run.plan.job_timeout_s} s")
        elif job["status"] != "done":
            report.lost.append(f"job {sub.job_id} ({sub.upload.name}) failed: {job.get('error')}")
    return list(finished.values())


async def _verify(run: _Run, report: LoadReport) -> None:
    """Every study is listed, and each result is its own upload's (UIDs) and equal across one input's studies."""
    import httpx2

    async with httpx2.AsyncClient(base_url=run.base_url, headers=run.headers, timeout=120.0) as client:
        listed = await client.get("/v1/studies", params={"limit": 1000})
        ids = {s["study_id"] for s in listed.json()["studies"]} if listed.status_code == 200 else set()
        probs_by_input: dict[str, dict[str, Any]] = {}
        for sub in run.submitted:
            if sub.study_id not in ids:
                report.lost.append(f"study {sub.study_id} ({sub.upload.name}) missing from the study list")
            r = await client.get(f"/v1/studies/{sub.study_id}/result")
            if r.status_code != 200:
                report.lost.append(f"study {sub.study_id} ({sub.upload.name}): result HTTP {r.status_code}")
                continue
            doc = r.json()
            results = doc if isinstance(doc, list) else [doc]
            if len(results) != 1:
                report.mixed_up.append(f"study {sub.study_id}: {len(results)} series in the result, uploaded 1")
                continue
            res = results[0]
            sops = {s["sop_instance_uid"] for s in res["slices"]}
            if res["series_instance_uid"] != sub.upload.series_uid or sops != set(sub.upload.sop_uids):
                report.mixed_up.append(f"study {sub.study_id}: the result is not of its upload {sub.upload.name} "
                                       f"(series {res['series_instance_uid']}, {len(sops & sub.upload.sop_uids)} of "
                                       f"{len(sops)} SOP UIDs its own)")
                continue
            probs = {"scan": res["scan"], "slices": [(s["sop_instance_uid"], s["probabilities"])
                                                     for s in res["slices"]]}
            first = probs_by_input.setdefault(sub.upload.name, probs)
            if probs != first:
                report.mixed_up.append(f"study {sub.study_id}: probabilities differ from another upload of the same "
                                       f"input {sub.upload.name}")


def _job_times(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    def ts(value: str | None) -> float | None:
        return None if value is None else datetime.fromisoformat(value).timestamp()

    waits, runs = [], []
    for job in jobs:
        created, started, finished = ts(job["created_at"]), ts(job.get("started_at")), ts(job.get("finished_at"))
        if created is not None and started is not None:
            waits.append(started - created)
        if started is not None and finished is not None:
            runs.append(finished - started)
    return {"statuses": dict(Counter(j["status"] for j in jobs)), "attempts": dict(Counter(j["attempts"] for j in jobs)),
            "queue_wait_s": percentiles(waits), "run_s": percentiles(runs)}


async def _run_load(base_url: str, token: str | None, uploads: list[Upload], plan: LoadPlan) -> LoadReport:
    report = LoadReport(plan=asdict(plan), inputs={u.name: {"files": len(u.files), "bytes": u.n_bytes,
                                                            "series_uid": u.series_uid} for u in uploads})
    run = _Run(base_url, token, uploads, plan)
    t0 = run.t0 = time.monotonic()
    run.deadline = t0 + plan.max_seconds
    await asyncio.gather(*(run.client_loop() for _ in range(plan.clients)))
    report.load_phase_s = time.monotonic() - t0
    jobs = await _wait_jobs(run, report)
    await _verify(run, report)
    report.wall_s = time.monotonic() - t0
    report.requests_done = len(run.samples)
    report.max_in_flight = run.max_in_flight
    report.throughput_rps = report.requests_done / max(report.load_phase_s, 1e-9)
    by_kind: dict[str, list[float]] = defaultdict(list)
    codes: dict[str, Counter[str]] = defaultdict(Counter)
    for s in run.samples:
        by_kind[s.kind].append(s.seconds)
        codes[s.kind][str(s.status)] += 1
        if s.error:
            report.errors.append(s.error)
    report.latency_s = {k: percentiles(v) for k, v in by_kind.items()}
    report.statuses = {k: dict(v) for k, v in codes.items()}
    report.jobs = _job_times(jobs)
    accepted = sum(1 for s in run.samples if s.kind == "upload" and s.status == 202)
    if accepted != len(run.submitted) or run.next_upload != len(run.submitted):
        report.lost.append(f"{run.next_upload} uploads sent, {accepted} accepted, {len(run.submitted)} recorded")
    if plan.requests - len(run.samples):
        report.errors.append(f"{plan.requests - len(run.samples)} request(s) not sent within {plan.max_seconds} s")
    return report


def run_load(base_url: str, token: str | None, uploads: list[Upload], plan: LoadPlan | None = None) -> LoadReport:
    """Run the load of ``plan`` against the service at ``base_url`` (see the module docstring)."""
    if not uploads:
        raise ValueError("give at least one input to upload")
    return asyncio.run(_run_load(base_url, token, list(uploads), plan or LoadPlan()))
