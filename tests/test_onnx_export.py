"""ONNX export of the landmark networks: valid files, onnxruntime agreeing with torch, and a
manifest an engine cache can key on."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from engines.landmarks.nets import NETWORKS, TFLiteNet, example_input, load_networks
from engines.landmarks.onnx_export import (
    INPUT_NAME,
    MANIFEST_NAME,
    check_onnx,
    export_onnx,
    sha256_of,
)

RELATIVE_TOLERANCE = 1e-4  # of each output's largest magnitude
# What the exported graphs may hold: a convnet's ops, plus, for the attention mesh, its
# custom ops' maths (angles, a patch box, grid sampling, masks); all in TensorRT 10.
CONVNET_OPS = {"Conv", "Pad", "PRelu", "Relu", "Add", "MaxPool", "Reshape", "Transpose", "Concat"}
ATTENTION_OPS = CONVNET_OPS | {
    "Atan", "Cos", "Sin", "Neg", "Mul", "Sub", "Div", "MatMul", "ReduceMin", "ReduceMax",
    "ReduceSum", "GridSample", "Where", "And", "Less", "LessOrEqual", "Greater",
    "GreaterOrEqual", "Cast", "Gather", "Slice", "Unsqueeze", "Shape", "ConstantOfShape",
}  # fmt: skip


@pytest.fixture(scope="module")
def networks() -> dict[str, TFLiteNet]:
    torch.set_num_threads(1)
    return load_networks()


@pytest.fixture(scope="module")
def exported(networks, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("onnx")
    paths = export_onnx(out_dir, progress=False, networks=networks)
    assert [p.name for p in paths] == [f"{name}.onnx" for name in NETWORKS]
    return out_dir


@pytest.mark.parametrize("name", list(NETWORKS))
def test_exported_file_is_valid_and_clean(exported, name):
    model = onnx.load(str(exported / f"{name}.onnx"))
    onnx.checker.check_model(model, full_check=True)
    ops = {node.op_type for node in model.graph.node}
    allowed = ATTENTION_OPS if name == "face_landmark_attention" else CONVNET_OPS
    assert ops <= allowed, f"{name}: unexpected ops {sorted(ops - allowed)}"
    if name == "face_landmark_attention":
        assert {"GridSample", "Atan"} <= ops, "the patch sampling is in the graph"
    (image,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["batch", *NETWORKS[name].input_shape[1:]]
    assert [o.name for o in model.graph.output] == list(NETWORKS[name].output_names)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_onnxruntime_matches_torch(exported, networks, name):
    """Batch 3, so the dynamic batch axis is exercised too."""
    session = ort.InferenceSession(
        str(exported / f"{name}.onnx"), providers=["CPUExecutionProvider"]
    )
    inputs = example_input(name, batch=3, seed=7)
    with torch.no_grad():
        expected = [out.numpy() for out in networks[name](inputs)]
    got = session.run(None, {INPUT_NAME: inputs.numpy()})
    for output, e, g in zip(NETWORKS[name].output_names, expected, got, strict=True):
        assert g.shape == e.shape, f"{name}.{output}: {g.shape} vs {e.shape}"
        error = float(np.abs(g - e).max())
        scale = float(np.abs(e).max())
        assert error <= RELATIVE_TOLERANCE * scale, (
            f"{name}.{output}: max abs diff {error:.3g} for outputs up to {scale:.3g}"
        )


def test_check_reports_small_differences(exported, networks):
    differences = check_onnx(exported, networks)
    assert set(differences) == set(NETWORKS)
    assert all(d < 1e-3 for d in differences.values()), differences


def test_manifest_keys_each_file_by_hash(exported):
    manifest = json.loads((exported / MANIFEST_NAME).read_text())
    entries = {entry["name"]: entry for entry in manifest["networks"]}
    assert set(entries) == set(NETWORKS) and manifest["opset"] == 17
    for name, entry in entries.items():
        assert entry["sha256"] == sha256_of(exported / entry["file"])
        assert entry["input"]["shape"] == list(NETWORKS[name].input_shape)
        assert entry["input"]["range"] == list(NETWORKS[name].input_range)
        assert [o["name"] for o in entry["outputs"]] == list(NETWORKS[name].output_names)
    assert entries["face_landmark"]["outputs"][0]["shape"] == [1, 1404]
    assert entries["face_detector"]["outputs"][0]["shape"] == [1, 896, 16]


def test_export_is_reproducible_and_a_changed_file_is_caught(exported, networks, tmp_path):
    """Same weights, same bytes (a stable cache key); a file that no longer matches its
    manifest is refused rather than compared."""
    export_onnx(tmp_path, progress=False, networks=networks)
    for name in NETWORKS:
        assert sha256_of(tmp_path / f"{name}.onnx") == sha256_of(exported / f"{name}.onnx")
    with (tmp_path / "iris_landmark.onnx").open("ab") as stream:
        stream.write(b"\0")
    with pytest.raises(ValueError, match="sha256 differs"):
        check_onnx(tmp_path, networks)


def test_engines_command_exports_checks_and_says_why_no_tensorrt(tmp_path):
    """`make engines`: ONNX files + manifest in the cache, each checked by onnxruntime."""
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", "engines", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    diffs = {
        line.split(":")[0]: float(line.rsplit(" ", 1)[1]) for line in lines if "onnxruntime" in line
    }
    assert set(diffs) == set(NETWORKS)
    assert all(d < 1e-3 for d in diffs.values()), diffs
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == [
        ".lock",  # no temporary file left behind, only the folder's lock
        "face_detector.onnx",
        "face_landmark.onnx",
        "face_landmark_attention.onnx",
        "iris_landmark.onnx",
        "manifest.json",
    ]
    # its progress to a pipe: plain log lines (a bar only on a terminal, tests/test_progress.py)
    assert "engines.progress: ONNX export: 4/4 networks (100%)" in proc.stderr
    assert "\r" not in proc.stderr
    assert lines[-1].startswith("TensorRT engines: not built here (no NVIDIA GPU")


def test_an_up_to_date_export_is_kept_and_a_stale_one_redone(networks, tmp_path):
    """The daemon and every remote peer on TensorRT ask for the files: only what changed
    (other weights, a missing or altered file) is exported again; the others keep theirs."""
    names = ["face_detector", "iris_landmark"]
    export_onnx(tmp_path, progress=False, networks=networks, names=names)
    first = {name: (tmp_path / f"{name}.onnx").stat().st_mtime_ns for name in names}
    export_onnx(tmp_path, progress=False, networks=networks, names=names)
    assert {name: (tmp_path / f"{name}.onnx").stat().st_mtime_ns for name in names} == first

    manifest_path = tmp_path / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["networks"][0]["source_sha256"] = "0" * 64  # as if mediapipe's weights changed
    manifest_path.write_text(json.dumps(manifest))
    export_onnx(tmp_path, progress=False, networks=networks, names=["face_detector"])
    assert (tmp_path / "face_detector.onnx").stat().st_mtime_ns != first["face_detector"]
    assert (tmp_path / "iris_landmark.onnx").stat().st_mtime_ns == first["iris_landmark"]
    entries = {e["name"]: e for e in json.loads(manifest_path.read_text())["networks"]}
    assert set(entries) == set(names)  # a partial export keeps the other entries
    assert check_onnx(tmp_path, networks).keys() == set(names)


def test_concurrent_exports_into_one_folder_leave_valid_files(networks, tmp_path):
    """Two threads (two remote peers starting at once) exporting into the same cache."""
    errors: list[BaseException] = []

    def export() -> None:
        try:
            export_onnx(tmp_path, progress=False, networks=networks, names=["face_detector"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=export) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert check_onnx(tmp_path, networks) == pytest.approx({"face_detector": 0}, abs=1e-3)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
