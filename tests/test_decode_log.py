"""decord's own C++ log lines (``[12:00:00] /project/src/video/video_reader.cc:86: ERROR opening: ...``) never reach
stderr: a bad file is reported once, through VideoReadError (file and cause) or one log warning.

Subprocesses, because decord writes to file descriptor 2 from C++: pytest's capsys does not see that.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

from tests.conftest import write_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# decord's log and exception prefix: "[HH:MM:SS] /project/src/video/video_reader.cc:86: "
CPP_LINE = re.compile(r"\[\d\d:\d\d:\d\d\] \S+\.cc:\d+|video_reader\.cc|threaded_decoder\.cc|filter_graph\.cc")
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


# Opens and reads each file twice and probes it, as the datasets do across epochs; prints each failure the way
# the datasets' bad-file report does (so a C++ prefix left in a cause would show on stderr too).
READ_TWICE = f"""
    import json, logging, sys
    logging.basicConfig(level=logging.DEBUG, format={LOG_FORMAT!r})
    from video_st.data.decode import VideoReadError, open_video, probe

    out = {{}}
    for path in sys.argv[1:]:
        results = []
        for attempt in range(2):
            try:
                video = open_video(path)
                video.read(list(range(video.num_frames)))
                results.append(None)
            except VideoReadError as err:
                results.append([err.path, err.cause, str(err)])
                print(f"reported: {{err}}", file=sys.stderr)
        try:
            probe(path)
        except VideoReadError as err:
            results.append([err.path, err.cause, str(err)])
        out[path] = results
    print("stderr still works", file=sys.stderr)
    print(json.dumps(out))
"""


def _damaged(path) -> str:
    """An MP4 with its index in front and bit-flipped frame data: it opens; its frames fail to decode."""
    write_video(path, faststart=True)
    data = bytearray(path.read_bytes())
    start = data.index(b"mdat") + 4
    for i in range(start + (len(data) - start) // 3, len(data), 37):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return str(path)


def test_bad_videos_print_no_decord_lines_and_are_still_reported(video_files, tiny_k400, tmp_path):
    unopenable = [str(video_files["garbage"]), str(video_files["truncated"])]  # decord logged video_reader.cc:86
    damaged = _damaged(tmp_path / "damaged.mp4")  # decord's exception carried threaded_decoder.cc prefixes
    planted = [os.path.join(tiny_k400.root, c.path) for c in tiny_k400.corrupt]
    good = str(video_files["h264"])
    proc = _run(READ_TWICE, *unopenable, damaged, *planted, good)
    assert proc.returncode == 0, proc.stderr
    assert not CPP_LINE.search(proc.stderr), proc.stderr
    assert "stderr still works" in proc.stderr  # fd 2 was given back
    results = json.loads(proc.stdout.strip().splitlines()[-1])

    assert results[good] == [None, None]
    for path in unopenable:
        # the reason decord only logged ("Invalid data found ...") is the cause; its exception said "Error reading"
        for err_path, cause, text in results[path]:
            assert err_path == path and text.startswith(path)
            assert cause == "cannot open (Invalid data found when processing input)"
    for err_path, cause, _ in results[damaged]:
        assert err_path == damaged
        assert cause.startswith("undecodable frame") and "avcodec_send_packet" in cause
    for path in planted:
        assert len(results[path]) == 3 and all(r is not None and r[0] == path for r in results[path])
    for path in [*unopenable, damaged, *planted]:
        warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING") and path in line]
        assert len(warnings) <= 1, warnings


# What decord writes in a call that still succeeds (seen: "Failed to seek file to position: 0" on a damaged file
# whose frames then decode) becomes one warning per file; in a call that fails it becomes the error's text only.
CAPTURE = f"""
    import json, logging, os, sys
    logging.basicConfig(level=logging.INFO, format={LOG_FORMAT!r})
    from video_st.data.decode import _decord_stderr

    line = b"[12:00:00] /project/src/video/video_reader.cc:327: Failed to seek file to position: 0\\n"
    a, b = sys.argv[1:]
    for path in (a, a, b):
        with _decord_stderr(path) as said:
            os.write(2, line)
            os.write(2, line)
    try:
        with _decord_stderr(a) as failed:
            os.write(2, ("[12:00:01] /project/src/video/video_reader.cc:86: ERROR opening: " + a
                         + ", Invalid data found when processing input\\n").encode())
            raise RuntimeError("Error reading " + a + "...")
    except RuntimeError:
        pass
    os.write(2, b"after the window\\n")
    print(json.dumps([said.text, failed.text]))
"""


def test_captured_lines_become_one_warning_per_file(tmp_path):
    a, b = str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")
    proc = _run(CAPTURE, a, b)
    assert proc.returncode == 0, proc.stderr
    assert not CPP_LINE.search(proc.stderr), proc.stderr
    lines = proc.stderr.splitlines()
    assert lines == [f"WARNING video_st.data.decode: {a}: decord: Failed to seek file to position: 0",
                     f"WARNING video_st.data.decode: {b}: decord: Failed to seek file to position: 0",
                     "after the window"]
    said, failed = json.loads(proc.stdout)
    assert said == "Failed to seek file to position: 0"  # repeated lines once, prefix and path gone
    assert failed == "ERROR opening: Invalid data found when processing input"
