"""The DICOM node's pieces without a network: argument checks (AE titles, ``--forward``), the staging folders and
their idle timers, the forward queue and record, the accepted transfer syntaxes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from ichd.errors import InputError
from ichd.service.dicom_config import DicomNodeConfig, ForwardTarget, parse_aet, parse_forward
from ichd.service.dicom_forward import FileOutcome, ForwardQueue, result_files, write_record
from ichd.service.dicom_staging import SeriesStaging, StagingFull, safe_name


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------------------- arguments

@pytest.mark.parametrize("text, expected", [("ICHD", "ICHD"), (" PACS_1 ", "PACS_1"), ("A" * 16, "A" * 16),
                                            ("my ae@x", "my ae@x")])
def test_good_ae_titles(text: str, expected: str) -> None:
    assert parse_aet(text) == expected


@pytest.mark.parametrize("text, words", [("", "empty"), ("   ", "empty"), ("A" * 17, "at most 16"),
                                         ("AB\\C", "may not have"), ("ÄRZTE", "may not have"),
                                         ("A\tB", "may not have")])
def test_bad_ae_titles_say_why(text: str, words: str) -> None:
    with pytest.raises(InputError, match=words) as e:
        parse_aet(text)
    assert e.value.exit_code == 2 and "--aet" in str(e.value)


@pytest.mark.parametrize("text, target", [
    ("PACS@10.0.0.5:104", ForwardTarget("PACS", "10.0.0.5", 104)),
    ("ORTHANC@pacs.local:4242", ForwardTarget("ORTHANC", "pacs.local", 4242)),
    ("A@B@host:11112", ForwardTarget("A@B", "host", 11112)),
    ("PACS@[::1]:104", ForwardTarget("PACS", "::1", 104)),
])
def test_forward_targets_parse(text: str, target: ForwardTarget) -> None:
    assert parse_forward(text) == target
    assert parse_forward(str(target)) == target  # str() writes the same syntax back


@pytest.mark.parametrize("text, words", [
    ("PACS", "is not AET@HOST:PORT"), ("10.0.0.5:104", "is not AET@HOST:PORT"), ("PACS@10.0.0.5", "has no port"),
    ("PACS@host:0", "1..65535"), ("PACS@host:70000", "1..65535"), ("PACS@host:x1", "1..65535"),
    ("@host:104", "is not AET@HOST:PORT"), ("WAYTOOLONGAETITLE1@host:104", "at most 16"),
    ("PACS@::1:104", "brackets"), ("PACS@[nope]:104", "not an IPv6"), ("PACS@a b:104", "not a host"),
])
def test_bad_forward_targets_say_why(text: str, words: str) -> None:
    with pytest.raises(InputError, match=words) as e:
        parse_forward(text)
    assert e.value.exit_code == 2 and "--forward" in str(e.value)


def test_node_config_checks_its_values() -> None:
    assert DicomNodeConfig(aet=" ICHD ").aet == "ICHD"
    for bad in ({"port": 70000}, {"idle_timeout_s": 0}, {"aet": "X" * 17}, {"forward_attempts": 0}):
        with pytest.raises(InputError):
            DicomNodeConfig(**bad)


def test_accepted_transfer_syntaxes_cover_what_ichd_decodes() -> None:
    from ichd.io.decode import DECODER_PACKAGES
    from ichd.service.dicom_node import accepted_transfer_syntaxes

    got = accepted_transfer_syntaxes()
    assert got[:3] == ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"]
    # with the decoder plugins of the dev environment every compressed syntax ichd reads is accepted
    for ts in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
               "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
               "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"):
        assert ts in got
    assert set(got) <= set(DECODER_PACKAGES) | set(got[:3])


# --------------------------------------------------------------------------------------------------- staging

def test_safe_names_keep_plain_uids_and_hash_the_rest() -> None:
    assert safe_name("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    assert safe_name("ID_000012eaf") == "ID_000012eaf"
    for odd in ("../../etc", ".", "..", "a/b", "x" * 65, "1.2 3", ""):
        name = safe_name(odd)
        assert name.startswith("u") and len(name) == 41 and "/" not in name
    assert safe_name("a/b") != safe_name("a/c")


def test_a_series_is_due_after_the_idle_timeout_and_handed_over_once(tmp_path: Path) -> None:
    clock = FakeClock()
    staging = SeriesStaging(tmp_path / "in", idle_timeout_s=2.0, max_instances=10, clock=clock)
    p1 = staging.store("1.2.3", "1.2.3.4", "1.2.3.4.1", b"one")
    staging.store("1.2.3", "1.2.3.4", "1.2.3.4.2", b"two")
    staging.store("1.2.3", "1.2.3.5", "1.2.3.5.1", b"other series")
    assert p1 == tmp_path / "in" / "1.2.3" / "1.2.3.4" / "1.2.3.4.1.dcm" and p1.read_bytes() == b"one"
    assert not list((tmp_path / "in").rglob(".incoming-*"))  # no temporary file left behind
    clock.now += 1.9
    assert staging.take_due() == []
    clock.now += 0.2
    due = staging.take_due()
    assert sorted(s.key for s in due) == [("1.2.3", "1.2.3.4"), ("1.2.3", "1.2.3.5")]
    assert staging.take_due() == []  # being handed over: not due twice
    first = next(s for s in due if s.key[1] == "1.2.3.4")
    assert [p.name for p in first.files()] == ["1.2.3.4.1.dcm", "1.2.3.4.2.dcm"]
    staging.finish(first, handed_over=True)
    assert not first.folder.exists() and staging.pending() == 1
    other = next(s for s in due if s.key[1] == "1.2.3.5")
    staging.finish(other, handed_over=False)  # e.g. disk full: kept, due again after another idle timeout
    assert staging.take_due() == []
    clock.now += 2.0
    assert [s.key for s in staging.take_due()] == [("1.2.3", "1.2.3.5")]


def test_a_series_whose_sender_states_its_count_is_due_when_complete(tmp_path: Path) -> None:
    clock = FakeClock()
    staging = SeriesStaging(tmp_path / "in", idle_timeout_s=30.0, max_instances=10, clock=clock)
    staging.store("1.2.3", "1.2.3.4", "1.2.3.4.1", b"one", expected=3)
    staging.store("1.2.3", "1.2.3.4", "1.2.3.4.2", b"two", expected=3)
    staging.store("1.2.3", "1.2.3.5", "1.2.3.5.1", b"count not stated")
    assert staging.take_due() == []  # 2 of 3: waits (for the rest, or the idle timeout)
    assert [r["expected_instances"] for r in staging.receiving()] == [3, None]
    staging.store("1.2.3", "1.2.3.4", "1.2.3.4.2", b"two again", expected=3)  # a resent instance is not a new one
    assert staging.take_due() == []
    staging.store("1.2.3", "1.2.3.4", "1.2.3.4.3", b"three", expected=3)
    assert [s.key for s in staging.take_due()] == [("1.2.3", "1.2.3.4")]  # at once, no idle timeout
    clock.now += 30.0
    assert [s.key for s in staging.take_due()] == [("1.2.3", "1.2.3.5")]  # the other one: the idle timeout


def test_the_node_reads_the_stated_count_as_stored() -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag

    from ichd.service.dicom_node import SERIES_INSTANCES_TAG, _raw_count

    assert _raw_count(Dataset(), SERIES_INSTANCES_TAG) is None
    tag = Tag(SERIES_INSTANCES_TAG)
    for value, count in ((b"36", 36), (b" 12 ", 12), (b"0 ", None), (b"x ", None), (b"-4", None)):
        # as a received data set holds it: the raw bytes, not decoded or validated
        ds = Dataset({tag: RawDataElement(tag, "IS", len(value), value, 0, True, True)})
        assert _raw_count(ds, SERIES_INSTANCES_TAG) == count, value


def test_receiving_reports_each_series_until_it_is_handed_over(tmp_path: Path) -> None:
    clock = FakeClock()
    staging = SeriesStaging(tmp_path / "in", idle_timeout_s=5.0, max_instances=10, clock=clock)
    assert staging.receiving() == []
    staging.store("1.2.3", "1.2.3.4", "1.2.3.4.1", b"one", calling_ae="CT1", description="Head 5mm")
    clock.now += 1.0
    staging.store("1.2.3", "1.2.3.4", "1.2.3.4.2", b"two", calling_ae="CT1")
    staging.store("1.2.3", "1.2.3.4", "1.2.3.4.2", b"two again")  # the same instance: still 2
    clock.now += 2.0
    (item,) = staging.receiving()
    assert item["study_instance_uid"] == "1.2.3" and item["series_instance_uid"] == "1.2.3.4"
    assert item["n_instances"] == 2 and item["calling_ae"] == "CT1" and item["series_description"] == "Head 5mm"
    assert item["complete_in_s"] == pytest.approx(3.0)  # 5 s idle timeout, the last instance 2 s ago
    assert item["received_at"] <= item["last_instance_at"]
    clock.now += 3.0
    (due,) = staging.take_due()
    assert staging.receiving()[0]["complete_in_s"] == 0.0  # being handed over
    staging.finish(due, handed_over=True)
    assert staging.receiving() == []


def test_resent_instances_replace_and_full_series_refuse(tmp_path: Path) -> None:
    staging = SeriesStaging(tmp_path, idle_timeout_s=1.0, max_instances=2)
    staging.store("1.2", "1.2.3", "1.2.3.1", b"old")
    staging.store("1.2", "1.2.3", "1.2.3.1", b"new")
    staging.store("1.2", "1.2.3", "1.2.3.2", b"x")
    assert (tmp_path / "1.2" / "1.2.3" / "1.2.3.1.dcm").read_bytes() == b"new"
    with pytest.raises(StagingFull):
        staging.store("1.2", "1.2.3", "1.2.3.3", b"y")
    staging.store("1.2", "1.2.3", "1.2.3.2", b"again")  # a known instance is still accepted


def test_an_instance_arriving_during_the_hand_over_waits_and_starts_a_new_folder(tmp_path: Path) -> None:
    clock = FakeClock()
    staging = SeriesStaging(tmp_path, idle_timeout_s=1.0, max_instances=10, clock=clock)
    staging.store("1.2", "1.2.3", "1.2.3.1", b"a")
    clock.now += 5
    (series,) = staging.take_due()
    done = threading.Event()

    def late() -> None:
        staging.store("1.2", "1.2.3", "1.2.3.9", b"late")
        done.set()

    t = threading.Thread(target=late)
    t.start()
    assert not done.wait(0.3)  # blocked while the series is handed over
    staging.finish(series, handed_over=True)
    assert done.wait(5)
    t.join()
    assert [p.name for p in (tmp_path / "1.2" / "1.2.3").iterdir()] == ["1.2.3.9.dcm"]
    assert staging.pending() == 1


def test_recover_picks_up_what_a_stopped_run_left(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "s1" / "se1").mkdir(parents=True)
    (root / "s1" / "se1" / "a.dcm").write_bytes(b"a")
    (root / "s1" / "se1" / ".incoming-1-2-b.dcm").write_bytes(b"half")  # a write cut short
    (root / "s1" / "empty").mkdir()
    (root / "s2" / "empty").mkdir(parents=True)
    clock = FakeClock()
    staging = SeriesStaging(root, idle_timeout_s=3.0, max_instances=10, clock=clock)
    assert staging.recover() == 1
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["s1", "s1/se1", "s1/se1/a.dcm"]
    assert staging.take_due() == []  # one more idle timeout, for a sender that sends again after a restart
    clock.now += 3
    (series,) = staging.take_due()
    assert [p.name for p in series.files()] == ["a.dcm"]


# ------------------------------------------------------------------------------------------------- forwarding

def test_forward_queue_survives_a_restart_and_drops_damaged_entries(tmp_path: Path) -> None:
    q = ForwardQueue(tmp_path)
    q.load()
    item = q.add("a" * 32, "b" * 32, ForwardTarget("PACS", "127.0.0.1", 104))
    item.attempts, item.sent = 1, ["result/dicom/sr.dcm"]
    q.save(item)
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / ".x.part.json").write_text("{}")
    again = ForwardQueue(tmp_path)
    assert again.load() == 1
    got = again.items["a" * 32]
    assert (got.study_id, got.destination, got.attempts, got.sent) == ("b" * 32, "PACS@127.0.0.1:104", 1,
                                                                       ["result/dicom/sr.dcm"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a" * 32 + ".json"]
    again.remove(got)
    assert not list(tmp_path.iterdir())


def test_result_files_and_the_forward_record(tmp_path: Path) -> None:
    result = tmp_path / "result"
    for name in ("dicom/sc-002.dcm", "dicom/sr.dcm", "dicom/sc-001.dcm", "prediction.json", "x/dicom/sr.dcm"):
        (result / name).parent.mkdir(parents=True, exist_ok=True)
        (result / name).write_bytes(b"")
    names = [p.relative_to(result).as_posix() for p in result_files(result)]
    assert names == ["dicom/sr.dcm", "dicom/sc-001.dcm", "dicom/sc-002.dcm", "x/dicom/sr.dcm"]
    q = ForwardQueue(tmp_path / "q")
    item = q.add("a" * 32, "b" * 32, ForwardTarget("PACS", "h", 104))
    item.attempts, item.sent = 2, ["dicom/sr.dcm"]
    outcomes = [FileOutcome("dicom/sr.dcm", status=0), FileOutcome("dicom/sc-001.dcm", error="association rejected")]
    record = write_record(tmp_path, item, ["dicom/sr.dcm", "dicom/sc-001.dcm"], outcomes, final=True)
    assert json.loads((tmp_path / "forward.json").read_text()) == record
    assert (record["status"], record["n_sent"], record["n_failed"]) == ("failed", 1, 1)
    assert record["files"][0]["status"] == "0x0000" and record["files"][1]["error"] == "association rejected"
