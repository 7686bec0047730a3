"""Every bad input gets one clear line (issue "Every bad input gets one clear line"): the tool exits 2 with a single
``error: ...`` line naming the file, line, key or value, no traceback, and nothing is created or half-written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from video_st import create_model
from video_st.data.datasets import MissingVideosError, check_files
from video_st.data.annotations import VideoRecord
from video_st.models.spec import save_model_file

from .conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_cpu.yaml")


def _tool(name, *args, timeout=240):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / name), *map(str, args)], capture_output=True,
                            text=True, timeout=timeout, cwd=ROOT,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return result


def _one_error_line(result, *needles):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    for needle in needles:
        assert str(needle) in lines[0], lines[0]
    return lines[0]


def _train(tiny_k400, out, *extra):
    return _tool("train_net.py", "--config", TINY, *tiny_overrides(tiny_k400, out, *extra))


def _model_final(tmp_path, method="sparse_tuning", **kwargs):
    model = create_model("vit_tiny_test", method=method, num_classes=4,
                         classes=["moving down", "moving left", "moving right", "moving up"], **kwargs)
    path = tmp_path / "model_final.pt"
    save_model_file(path, model.state_dict(), spec=model.spec)
    return path


@pytest.mark.parametrize("case", ["root", "annotation", "labels_file", "resume"])
def test_paths_a_run_needs_are_checked_before_any_output_exists(tiny_k400, tmp_path, case):
    out = tmp_path / "run"
    extra, needle = {
        "root": ([f"data.root={tmp_path / 'nowhere'}", f"data.train={tiny_k400.annotation_files['train']}"],
                 f"data.root={tmp_path / 'nowhere'}: no such folder"),
        "annotation": ([f"data.train={tmp_path / 'train.csv'}"], f"data.train={tmp_path / 'train.csv'}: no such file"),
        "labels_file": (["data.dataset=list", f"data.labels={tmp_path / 'names.txt'}"], "data.labels="),
        "resume": ([f"checkpoint.resume={tmp_path / 'ckpt'}"], f"checkpoint.resume={tmp_path / 'ckpt'}"),
    }[case]
    _one_error_line(_train(tiny_k400, out, *extra), needle)
    assert not out.exists()  # no config.yaml, no empty log.jsonl, no tensorboard/


def test_missing_test_videos_are_one_line_with_the_count_and_the_full_list(tiny_k400, tmp_path):
    lines = Path(tiny_k400.annotation_files["val"]).read_text().splitlines()
    csv = tmp_path / "test.csv"
    csv.write_text("\n".join([lines[0], *(line.replace(",", "x,", 2).replace("x,", ",", 1) for line in lines[1:])]))
    result = _tool("test_net.py", "--config", TINY, f"--checkpoint={_model_final(tmp_path)}",
                   *tiny_overrides(tiny_k400, tmp_path, f"data.test={csv}"))
    line = _one_error_line(result, f"videos of {csv} are missing", "full list: ")
    listed = Path(line.split("full list: ")[1].split(")")[0]).read_text().splitlines()
    assert len(listed) == len(lines) - 1


def test_a_malformed_csv_line_and_an_unknown_test_class_name_the_file_and_line(tiny_k400, tmp_path):
    lines = Path(tiny_k400.annotation_files["train"]).read_text().splitlines()
    bad = tmp_path / "train.csv"
    bad.write_text("\n".join([*lines[:3], "moving up,only-two-fields", *lines[3:]]) + "\n")
    _one_error_line(_train(tiny_k400, tmp_path / "a", f"data.train={bad}"), f"{bad}:4")
    val = Path(tiny_k400.annotation_files["val"]).read_text().splitlines()
    unknown = tmp_path / "val.csv"
    unknown.write_text("\n".join([val[0], "jumping" + val[1][val[1].index(","):], *val[2:]]) + "\n")
    result = _tool("test_net.py", "--config", TINY, f"--checkpoint={_model_final(tmp_path)}",
                   *tiny_overrides(tiny_k400, tmp_path, f"data.test={unknown}"))
    _one_error_line(result, f"{unknown}:2", "'jumping'")


def test_a_yaml_syntax_error_names_the_file(tiny_k400, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  arch: vit_tiny_test\n  method: [sparse_tuning\n")
    _one_error_line(_tool("train_net.py", "--config", config), str(config))


def test_a_truncated_checkpoint_file_and_a_damaged_folder_are_named(tiny_k400, tmp_path):
    final = _model_final(tmp_path)
    data = final.read_bytes()
    final.write_bytes(data[: len(data) // 2])
    result = _tool("test_net.py", "--config", TINY, f"--checkpoint={final}", *tiny_overrides(tiny_k400, tmp_path))
    _one_error_line(result, f"{final}: cannot read checkpoint")


def test_a_checkpoint_folder_with_a_truncated_model_file_is_refused_naming_it(tiny_k400, tmp_path):
    backbone = tmp_path / "backbone.pt"
    model = create_model("vit_tiny_test", method="full", num_classes=0)
    save_model_file(backbone, model.state_dict(), spec=model.spec, content="backbone")
    run = tmp_path / "run"
    result = _train(tiny_k400, run, "engine.max_steps=1", "engine.precision=fp32", f"model.pretrained={backbone}")
    assert result.returncode == 0, result.stderr[-2000:]
    folder = run / "checkpoints" / (run / "checkpoints" / "latest").read_text()
    weights = next(folder.glob("*model_states.pt"))
    weights.write_bytes(weights.read_bytes()[:1000])
    result = _tool("test_net.py", "--config", TINY, f"--checkpoint={folder}", *tiny_overrides(tiny_k400, tmp_path))
    _one_error_line(result, f"{folder}: damaged checkpoint", weights.name)


def test_a_checkpoint_of_another_method_and_a_clip_geometry_mismatch_name_both_values(tiny_k400, tmp_path):
    final = _model_final(tmp_path, method="lora")
    result = _tool("test_net.py", "--config", TINY, f"--checkpoint={final}", *tiny_overrides(tiny_k400, tmp_path))
    _one_error_line(result, "model.method=sparse_tuning in the config but lora in the file")
    result = _tool("test_net.py", "--config", TINY, f"--checkpoint={final}", "model.method=lora", "data.num_frames=8",
                   *tiny_overrides(tiny_k400, tmp_path))
    _one_error_line(result, "data.num_frames=8", "the model takes 4 frames")


def test_fp16_on_a_cpu_is_refused_before_anything_exists(tiny_k400, tmp_path):
    out = tmp_path / "run"
    _one_error_line(_train(tiny_k400, out, "engine.precision=fp16"), "engine.precision=fp16 needs a GPU")
    assert not out.exists()


def test_model_and_data_geometry_stated_twice_and_different_is_a_config_error(tiny_k400, tmp_path):
    _one_error_line(_train(tiny_k400, tmp_path / "run", "model.num_frames=8"), "model.num_frames=8",
                    "data.num_frames=4")


def test_scan_listed_videos_are_excluded_whatever_data_missing_says(tmp_path):
    videos = [tmp_path / f"{name}.mp4" for name in "abc"]
    for video in videos[:2]:
        video.write_bytes(b"x")
    records = [VideoRecord(str(v), 0, v.stem) for v in videos]
    invalid = tmp_path / "invalid.txt"
    invalid.write_text(f"{videos[1]}\tcannot open\n{videos[2]}\tmissing\n")
    kept = check_files(records, source="train.csv", invalid_list=invalid)  # the default: missing="error"
    assert [r.path for r in kept] == [str(videos[0])]
    with pytest.raises(MissingVideosError, match="1 videos of train.csv are missing"):
        check_files(records, source="train.csv")  # without the list, c.mp4 is missing


def test_a_finished_run_rerun_says_so_and_changes_nothing(tiny_k400, tmp_path):
    out = tmp_path / "run"
    first = _train(tiny_k400, out, "engine.max_steps=2", "engine.precision=fp32", "log.every_steps=1")
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"outputs in {out}" in first.stderr and "best single-view val top-1" in first.stderr
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all("grad_norm" in r for r in records if r["kind"] == "train")  # fp32 DeepSpeed logs it too
    before = (out / "model_final.pt").stat().st_mtime_ns
    again = _train(tiny_k400, out, "engine.max_steps=2", "engine.precision=fp32")
    assert again.returncode == 0 and "already holds a finished run" in again.stderr
    assert "checkpoint.resume=none" in again.stderr and (out / "model_final.pt").stat().st_mtime_ns == before


def test_verbose_adds_the_traceback(tiny_k400, tmp_path):
    result = _tool("train_net.py", "--config", TINY, "-v", *tiny_overrides(tiny_k400, tmp_path, "data.train=/no.csv"))
    assert result.returncode == 2 and "error: data.train=/no.csv: no such file" in result.stderr
    assert "Traceback" in result.stderr
