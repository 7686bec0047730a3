"""RecordTable (data/records.py): the records of a dataset in flat buffers, equal to the reader's list; the
records benchmark (bench/records_memory.py) at a small size."""

import pickle
import re

import numpy as np
import pytest

from video_st.data.annotations import VideoRecord, read_k400_csv
from video_st.data.datasets import VideoClipDataset
from video_st.data.records import RecordTable, Strings
from video_st.data.sampling import ClipSpec
from video_st.data.transforms import EvalTransform

RECORDS = [
    VideoRecord("/data/k400/train/abseiling/abc_000001_000011.mp4", 3, "abc_000001_000011",
                rel="train/abseiling/abc_000001_000011.mp4"),
    VideoRecord("/data/frames/v 1", 0, "v 1", 20, True, rel="v 1"),  # a frame folder with its count
    VideoRecord("", -1, "", None, False, rel=""),  # empty strings, unlabelled, no frame count
    VideoRecord("/data/vidéos/日本語/ü.webm", 173, "ü", 0, rel="日本語/ü.webm"),  # unicode; 0 frames is not None
    VideoRecord("/data/\udcff-undecodable.mp4", 1, "\ud83d", rel="🎬.mp4"),  # os.listdir's surrogate escapes
]


@pytest.fixture
def table():
    return RecordTable.from_records(RECORDS)


def test_the_table_equals_its_records_field_by_field(table):
    assert len(table) == len(RECORDS) and table == RECORDS and list(table) == RECORDS
    for i, record in enumerate(RECORDS):
        got = table[i]
        assert got == record and type(got.label) is int and type(got.is_frame_folder) is bool
        assert got.num_frames is None if record.num_frames is None else type(got.num_frames) is int
    assert table[2].num_frames is None and table[3].num_frames == 0
    assert table[-1] == RECORDS[-1] and table[-len(RECORDS)] == RECORDS[0] and table[np.int64(1)] == RECORDS[1]
    assert table.nbytes > 0 and RecordTable.from_records(table) is table  # a table is kept, not copied
    assert table != RECORDS[:-1] and table != [*RECORDS[:-1], VideoRecord("x", 1, "x")]


def test_out_of_range_and_wrong_index_types(table):
    for index in (len(RECORDS), -len(RECORDS) - 1, 10**6):
        with pytest.raises(IndexError):
            table[index]
    with pytest.raises(TypeError):
        table[1.0]
    with pytest.raises(IndexError):
        table.take([0, len(RECORDS)])
    with pytest.raises(TypeError, match="must be integers, got bool"):
        table.take(np.ones(len(RECORDS), dtype=bool))
    assert len(table.take([])) == 0


def test_slices_are_tables(table):
    for s in (slice(1, 3), slice(None, None, -1), slice(None, None, 2), slice(4, 1), slice(-2, None), slice(0, 99)):
        part = table[s]
        assert isinstance(part, RecordTable) and part == RECORDS[s] and list(part) == RECORDS[s]
    assert len(table[3:1]) == 0 and list(table[3:1]) == []
    assert table.take([4, 0, -1]) == [RECORDS[4], RECORDS[0], RECORDS[-1]]
    assert table[1:4] == RecordTable.from_records(RECORDS[1:4])  # table against table: by their buffers


def test_pickle_round_trip(table):
    back = pickle.loads(pickle.dumps(table))
    assert back == table and list(back) == RECORDS
    many = RecordTable.from_records(VideoRecord(f"/v/{i}.mp4", i % 7, str(i), rel=f"{i}.mp4") for i in range(5000))
    back = pickle.loads(pickle.dumps(many))
    assert back == many and back[4321] == VideoRecord("/v/4321.mp4", 4321 % 7, "4321", rel="4321.mp4")


def test_empty_table_and_invalid_columns():
    empty = RecordTable.from_records([])
    assert len(empty) == 0 and list(empty) == [] and empty == [] and not empty
    with pytest.raises(ValueError, match="num_frames must be None or at least 0"):
        RecordTable.from_records([VideoRecord("a", 0, "a", -1)])
    strings = Strings.from_strings(["a", "bc"])
    assert [strings[0], strings[1], strings[-1]] == ["a", "bc", "bc"]
    with pytest.raises(ValueError, match="one length"):
        RecordTable(path=strings, label=np.zeros(3, np.int64), video_id=strings, num_frames=np.zeros(2, np.int64),
                    is_frame_folder=np.zeros(2, np.bool_), rel=strings)
    with pytest.raises(ValueError, match="label must be"):
        RecordTable(path=strings, label=np.zeros(2, np.int32), video_id=strings, num_frames=np.zeros(2, np.int64),
                    is_frame_folder=np.zeros(2, np.bool_), rel=strings)
    with pytest.raises(ValueError, match="offsets"):
        Strings(data=np.zeros(3, np.uint8), offsets=np.array([0, 2, 1, 3], np.int64))


def test_the_dataset_holds_a_table_and_reads_from_it(tiny_k400):
    records, _ = read_k400_csv(tiny_k400.annotation_files["val"], tiny_k400.root)
    clip = ClipSpec(sampling="dense", num_frames=4, stride=2)
    dataset = VideoClipDataset(records, mode="test", clip=clip, transform=EvalTransform(size=32))
    assert isinstance(dataset.records, RecordTable) and dataset.records == records and len(dataset) == len(records)
    item = next(dataset[i] for i in range(len(dataset)) if dataset[i]["views"] is not None)
    assert item["path"] == records[item["index"]].path and item["video_id"] == records[item["index"]].video_id
    from_table = VideoClipDataset(dataset.records, mode="test", clip=clip, transform=EvalTransform(size=32))
    assert from_table.records is dataset.records
    spawned = pickle.loads(pickle.dumps(dataset))  # what a spawn-started loader worker receives
    assert spawned.records == records and spawned[item["index"]]["label"] == item["label"]


def test_records_report_runs_small():
    from video_st.bench.records_memory import report

    lines = report(rows=2000, workers=2).splitlines()
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                              for line in lines if line.startswith("| "))}
    assert list(rows) == ["layout", "list", "table", "table / list"]
    header = rows["layout"]
    assert {"read CSV s", "records MB (main)", "workers RSS MB", "workers PSS MB", "workers USS MB"} <= set(header)
    number = re.compile(r"^\d+(\.\d+)?(e-?\d+)?$")
    for layout in ("list", "table"):
        values = dict(zip(header, rows[layout], strict=True))
        assert all(number.match(v) for v in values.values()), values
        assert all(float(v) > 0 for name, v in values.items() if name != "into layout s"), values
    assert dict(zip(header, rows["table / list"], strict=True))["into layout s"] == "-"  # the list's time is 0
