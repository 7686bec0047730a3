"""Classes by name, everywhere (issue 12): every annotation format read with the model's class names comes back
labelled in the model's order, matched by name; a class the model does not know is an error naming it and the
file. Annotation files only: nothing is decoded."""

import json

import pytest

from video_st.config import load_config
from video_st.data.annotations import (
    AnnotationError,
    VideoRecord,
    match_classes,
    read_k400_csv,
    read_ssv2,
)
from video_st.data.lists import read_labelled_list
from video_st.engine.build import read_split

TEMPLATES = ["Moving something from left to right", "Moving something from right to left", "Pushing something",
             "Holding something"]
MODEL = TEMPLATES[:3]  # trained on a subset of the labels JSON's classes


def _ssv2(tmp_path, order, entries):
    """A labels JSON listing ``order`` (template -> "index") and a split JSON of ``(id, template)`` entries."""
    (tmp_path / "labels.json").write_text(json.dumps({t: str(i) for i, t in enumerate(order)}))
    (tmp_path / "val.json").write_text(json.dumps(
        [{"id": i, "template": t.replace("something", "[something]")} if t else {"id": i} for i, t in entries]))
    return tmp_path / "labels.json", tmp_path / "val.json"


def _cfg(tmp_path, dataset, val, labels=""):
    overrides = [f"data.dataset={dataset}", f"data.root={tmp_path / 'videos'}", f"data.train={val}", f"data.val={val}"]
    return load_config(None, overrides + ([f"data.labels={labels}"] if labels else []))


def _touch(tmp_path, *names):
    (tmp_path / "videos").mkdir(exist_ok=True)
    for name in names:
        (tmp_path / "videos" / name).write_bytes(b"")


def test_ssv2_labels_json_in_another_order_is_remapped_by_template(tmp_path):
    # The labels JSON of the test data lists the classes in another order than the model (and one more class).
    order = [TEMPLATES[1], TEMPLATES[3], TEMPLATES[2], TEMPLATES[0]]
    labels, split = _ssv2(tmp_path, order, [("1", TEMPLATES[0]), ("2", TEMPLATES[1]), ("3", TEMPLATES[2]), ("4", None)])
    records, names = read_ssv2(labels, split, tmp_path / "videos", class_names=MODEL)
    assert names == MODEL
    assert [(r.video_id, r.label) for r in records] == [("1", 0), ("2", 1), ("3", 2), ("4", -1)]
    # by position the labels JSON would have given 3, 0, 2: the wrong classes
    assert [r.label for r in read_ssv2(labels, split, tmp_path)[0]] == [3, 0, 2, -1]
    # the same through read_split, as training's val split and the test tool read it
    _touch(tmp_path, "1.webm", "2.webm", "3.webm", "4.webm")
    records, names = read_split(_cfg(tmp_path, "ssv2", split, labels), "val", list(MODEL))
    assert names == MODEL and [r.label for r in records] == [0, 1, 2, -1]


def test_ssv2_template_the_model_does_not_know_is_an_error_naming_it(tmp_path):
    labels, split = _ssv2(tmp_path, TEMPLATES, [("1", TEMPLATES[0]), ("2", TEMPLATES[3])])
    with pytest.raises(AnnotationError, match=r"val\.json:entry 1 \(id 2\): class 'Holding something' is not among "
                                              r"the 3 classes of the model") as info:
        read_ssv2(labels, split, tmp_path, class_names=MODEL)
    assert info.value.path == str(split)
    # an unused extra class of the labels JSON (TEMPLATES[3]) is no error
    labels, split = _ssv2(tmp_path, TEMPLATES, [("1", TEMPLATES[2])])
    assert [r.label for r in read_ssv2(labels, split, tmp_path, class_names=MODEL)[0]] == [2]


def test_ssv2_training_labels_json_needs_indices_0_to_n(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({TEMPLATES[0]: "0", TEMPLATES[1]: "2"}))
    (tmp_path / "train.json").write_text("[]")
    with pytest.raises(AnnotationError, match=r"labels\.json:-: class indices must be 0\.\.1"):
        read_ssv2(tmp_path / "labels.json", tmp_path / "train.json", tmp_path)


def test_k400_csv_with_reordered_classes_is_remapped(tmp_path):
    csv = tmp_path / "val.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nabseiling,aaa,0,10,val\nzumba,bbb,1,11,val\n"
                   ",ccc,2,12,test\n")
    model = ["zumba", "air drumming", "abseiling"]
    records, names = read_k400_csv(csv, tmp_path, model)
    assert names == model and [r.label for r in records] == [2, 0, -1]
    with pytest.raises(AnnotationError, match=r"val\.csv:3: class 'zumba' is not among the 2 classes of the model"):
        read_k400_csv(csv, tmp_path, ["abseiling", "air drumming"])
    _touch(tmp_path, "aaa_000000_000010.mp4", "bbb_000001_000011.mp4", "ccc_000002_000012.mp4")
    records, _ = read_split(_cfg(tmp_path, "k400", csv), "val", model)
    assert [r.label for r in records] == [2, 0, -1]


@pytest.mark.parametrize("frames", [False, True])
def test_list_integer_labels_through_a_names_file_in_another_order(tmp_path, frames):
    listing = tmp_path / "val.txt"
    listing.write_text("a 16 0\nb 16 1\nc 16 2\n" if frames else "a.mp4 0\nb.mp4 1\nc.mp4 2\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")  # this file's order
    model = ["bird", "cat", "dog"]
    records, names = read_labelled_list(listing, tmp_path, frames=frames, labels=tmp_path / "classes.txt",
                                        class_names=model)
    assert names == model and [r.label for r in records] == [1, 2, 0]
    # training: the names file defines the classes
    records, names = read_labelled_list(listing, tmp_path, frames=frames, labels=tmp_path / "classes.txt")
    assert names == ["cat", "dog", "bird"] and [r.label for r in records] == [0, 1, 2]
    listing.write_text("a 16 3\n" if frames else "a.mp4 3\n")
    with pytest.raises(AnnotationError, match=r"val\.txt:1: label 3 is not a class index of .*classes\.txt"):
        read_labelled_list(listing, tmp_path, frames=frames, labels=tmp_path / "classes.txt", class_names=model)
    _touch(tmp_path, "a" if frames else "a.mp4")
    listing.write_text("a 16 0\n" if frames else "a.mp4 0\n")
    cfg = _cfg(tmp_path, "frames" if frames else "list", listing, tmp_path / "classes.txt")
    assert [r.label for r in read_split(cfg, "val", model)[0]] == [1]


def test_list_with_class_names_in_the_label_column(tmp_path):
    listing = tmp_path / "train.txt"
    listing.write_text("a dir/v 1.mp4 dog\nb.mp4 cat\nc.mp4\tplaying guitar\nd.mp4 -1\n")
    records, names = read_labelled_list(listing, "/data")
    assert names == ["cat", "dog", "playing guitar"]  # sorted unique: the training classes
    assert [(r.path, r.label) for r in records] == [("/data/a dir/v 1.mp4", 1), ("/data/b.mp4", 0),
                                                    ("/data/c.mp4", 2), ("/data/d.mp4", -1)]
    model = ["playing guitar", "dog", "cat"]
    records, names = read_labelled_list(listing, "/data", class_names=model)
    assert names == model and [r.label for r in records] == [1, 2, 0, -1]
    with pytest.raises(AnnotationError, match=r"train\.txt:2: class 'cat' is not among the 2 classes"):
        read_labelled_list(listing, "/data", class_names=["dog", "playing guitar"])
    listing.write_text("a.mp4 dog\nb.mp4 1\n")
    with pytest.raises(AnnotationError, match=r"train\.txt:2: .*indices or names, not both"):
        read_labelled_list(listing)


def test_bare_indices_on_both_sides_are_positional(tmp_path):
    listing = tmp_path / "val.txt"
    listing.write_text("a.mp4 2\nb.mp4 0\n")
    records, names = read_labelled_list(listing)
    assert names == ["0", "1", "2"] and [r.label for r in records] == [2, 0]
    records, names = read_labelled_list(listing, class_names=["0", "1", "2", "3"])
    assert names == ["0", "1", "2", "3"] and [r.label for r in records] == [2, 0]
    with pytest.raises(AnnotationError, match=r"val\.txt:1: label 2 is not a class index of the model \(0 to 1\)"):
        read_labelled_list(listing, class_names=["0", "1"])


def test_bare_indices_against_named_model_classes_is_an_error(tmp_path):
    listing = tmp_path / "val.txt"
    listing.write_text("a.mp4 1\nb.mp4 0\n")
    with pytest.raises(AnnotationError, match=r"val\.txt:1: labels are bare class indices .*give data\.labels"):
        read_labelled_list(listing, class_names=["cat", "dog"])
    _touch(tmp_path, "a.mp4", "b.mp4")
    with pytest.raises(AnnotationError, match="give data.labels"):
        read_split(_cfg(tmp_path, "list", listing), "val", ["cat", "dog"])


def test_match_classes():
    records = [VideoRecord("a", 0, "a"), VideoRecord("b", 1, "b"), VideoRecord("c", -1, "c")]
    assert [r.label for r in match_classes(records, ["x", "y"], ["y", "z", "x"], source="f")] == [2, 0, -1]
    # an extra class of the file that no record uses is fine; one a record uses is an error at its line
    assert [r.label for r in match_classes(records[:1], ["x", "new"], ["x"], source="f")] == [0]
    with pytest.raises(AnnotationError, match=r"f:7: class 'new' is not among the 1 classes of the model"):
        match_classes(records, ["x", "new"], ["x"], source="f", lines=[3, 7, 9])
    with pytest.raises(AnnotationError, match=r"f:-: class 'y'.*did you mean 'Y'"):
        match_classes(records, ["x", "y"], ["x", "Y"], source="f")
    assert match_classes(records, None, ["0", "1"], source="f") == records
    with pytest.raises(AnnotationError, match="bare class indices"):
        match_classes(records, None, ["x", "y"], source="f")
    with pytest.raises(ValueError, match="repeat 'x'"):
        match_classes(records, ["x", "y"], ["x", "x", "y"], source="f")
