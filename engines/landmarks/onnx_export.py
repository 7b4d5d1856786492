"""The torch landmark networks exported to ONNX, for TensorRT (or any ONNX runtime).

One file per network, named by it, with a dynamic batch axis (the landmark path runs several
faces, and both eyes, in one call), plus `manifest.json`: per network its file, input shape
and value range, outputs, and the file's sha256, which an engine builder can key its cache
on (a new mediapipe wheel means new weights, a new hash, a new engine).

    python -m engines.landmarks.onnx_export OUT_DIR
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from engines.landmarks.nets import (
    INPUT_NAME,
    NETWORKS,
    TFLiteNet,
    example_input,
    load_networks,
    model_path,
)
from engines.progress import progress as progress_bar
from engines.runtime.tensorrt_runtime import cache_lock, write_atomic

log = logging.getLogger(__name__)

OPSET = 17
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 2  # 2: entries carry the .tflite's sha256 (source_sha256)


def onnx_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.onnx"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Shape arithmetic the exporter leaves around constant pads (it reverses them with a
# step -1 Slice, which its own folding skips): computed here, once, instead of by every
# runtime. Only ops whose inputs are all constants are folded.
_FOLDABLE = frozenset(
    {"Constant", "ConstantOfShape", "Concat", "Reshape", "Slice", "Cast", "Transpose",
     "Unsqueeze", "Squeeze", "Sub", "Mul", "Add", "Identity"}
)  # fmt: skip


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every node computed from constants alone replaced by an initializer."""
    graph = model.graph
    opsets = {entry.domain: entry.version for entry in model.opset_import}
    known = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type in _FOLDABLE and all(name in known for name in inputs):
            evaluator = ReferenceEvaluator(node, opsets=opsets)
            results = evaluator.run(None, {name: known[name] for name in inputs})
            known.update(zip(node.output, results, strict=True))
        else:
            kept.append(node)
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(
        numpy_helper.from_array(np.asarray(value), name)
        for name, value in known.items()
        if name in used
    )
    return model


def _set_output_shapes(model: onnx.ModelProto, shapes: list[tuple[int, ...]]) -> None:
    """Outputs declared as (batch, static sizes...), which the exporter leaves unnamed after
    a reshape: an engine builder reads them from the file."""
    for output, shape in zip(model.graph.output, shapes, strict=True):
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        dims.add().dim_param = "batch"
        for size in shape[1:]:
            dims.add().dim_value = size


def export_network(net: TFLiteNet, path: Path) -> Path:
    """One network to ONNX (TorchScript-based exporter: the dynamo one needs onnxscript),
    constants folded, checked by onnx.checker; `path` is replaced whole, never half-written."""
    spec = net.spec
    final, path = path, path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
    dynamic = {INPUT_NAME: {0: "batch"}} | {name: {0: "batch"} for name in spec.output_names}
    with torch.no_grad(), warnings.catch_warnings():
        # the legacy exporter is the one that needs no onnxscript; we fold constants below
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(
            net,
            (example_input(spec.name),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(spec.output_names),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = fold_constants(onnx.load(str(path)))
    with torch.no_grad():
        shapes = [tuple(out.shape) for out in net(example_input(spec.name))]
    _set_output_shapes(model, shapes)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    os.replace(path, final)
    return final


def _manifest_entry(net: TFLiteNet, path: Path) -> dict:
    spec = net.spec
    with torch.no_grad():
        outputs = net(example_input(spec.name))
    return {
        "name": spec.name,
        "file": path.name,
        "sha256": sha256_of(path),
        "source_sha256": sha256_of(model_path(spec.name)),
        "input": {
            "name": INPUT_NAME,
            "shape": list(spec.input_shape),
            "layout": "NCHW",
            "dtype": "float32",
            "range": list(spec.input_range),
            "dynamic_axes": {"0": "batch"},
        },
        "outputs": [
            {"name": name, "shape": list(out.shape)}
            for name, out in zip(spec.output_names, outputs, strict=True)
        ],
    }


def export_onnx(
    out_dir: Path,
    progress: bool = True,
    networks: dict[str, TFLiteNet] | None = None,
    names: Sequence[str] | None = None,
    force: bool = False,
) -> list[Path]:
    """Export the named networks (default: every one) to `out_dir` (created if needed) and
    record them in its manifest; returns the ONNX files, in `names` order. A file already
    exported from the same .tflite (same opset and manifest version) is kept unless `force`:
    the daemon and each remote peer on TensorRT ask for the files, under the folder's lock."""
    out_dir = Path(out_dir)
    names = tuple(names or NETWORKS)
    with cache_lock(out_dir):
        entries = _current_entries(out_dir)
        stale = [name for name in names if force or not _up_to_date(out_dir, entries.get(name))]
        nets = networks if networks is not None or not stale else load_networks("cpu", stale)
        with progress_bar(len(stale), "ONNX export", "network", enabled=progress) as bar:
            for name in stale:
                bar.set_postfix_str(name, refresh=False)
                net = _on_cpu(nets[name])
                path = export_network(net, onnx_path(out_dir, name))
                entries[name] = _manifest_entry(net, path)
                log.info("exported %s (%d bytes)", path, path.stat().st_size)
                bar.update()
        kept = [entries[name] for name in NETWORKS if name in entries]
        manifest = {"version": MANIFEST_VERSION, "opset": OPSET, "networks": kept}
        write_atomic(out_dir / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    return [onnx_path(out_dir, name) for name in names]


def _current_entries(out_dir: Path) -> dict[str, dict]:
    """The manifest's entries by network, if it is one of this version and opset."""
    try:
        manifest = read_manifest(out_dir)
    except (OSError, ValueError):
        return {}
    if manifest.get("version") != MANIFEST_VERSION or manifest.get("opset") != OPSET:
        return {}
    return {entry["name"]: entry for entry in manifest.get("networks", [])}


def _up_to_date(out_dir: Path, entry: dict | None) -> bool:
    """The entry's file is there, unchanged, and exported from today's .tflite weights."""
    if entry is None or entry.get("name") not in NETWORKS:
        return False
    path = out_dir / entry["file"]
    return (
        path.is_file()
        and entry.get("source_sha256") == sha256_of(model_path(entry["name"]))
        and entry.get("sha256") == sha256_of(path)
    )


def read_manifest(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / MANIFEST_NAME).read_text())


def check_onnx(
    out_dir: Path, networks: dict[str, TFLiteNet] | None = None, batch: int = 2
) -> dict[str, float]:
    """Run each file of the manifest with onnxruntime (CPU) and torch on the same random inputs
    (a batch of `batch`, which also exercises the dynamic axis): the largest absolute
    difference over each network's outputs. Raises if a file does not match its manifest
    hash (exported from other weights)."""
    import onnxruntime as ort

    out_dir = Path(out_dir)
    hashes = {entry["name"]: entry["sha256"] for entry in read_manifest(out_dir)["networks"]}
    nets = networks if networks is not None else load_networks("cpu", list(hashes))
    differences = {}
    for name in hashes:
        path = onnx_path(out_dir, name)
        if sha256_of(path) != hashes.get(name):
            raise ValueError(f"{path}: sha256 differs from {MANIFEST_NAME}; export again")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = example_input(name, batch=batch, seed=1)
        expected = _run_torch(_on_cpu(nets[name]), inputs)
        got = session.run(None, {INPUT_NAME: inputs.numpy()})
        differences[name] = max(
            float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True)
        )
        log.info("%s: onnxruntime vs torch max abs diff %.3g", name, differences[name])
    return differences


def _run_torch(net: TFLiteNet, inputs: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [out.numpy() for out in net(inputs)]


def _on_cpu(net: TFLiteNet) -> TFLiteNet:
    """The network on the CPU, copied if it lives elsewhere (the caller's stays put)."""
    if all(p.device.type == "cpu" for p in net.parameters()):
        return net
    return copy.deepcopy(net).to("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    networks = load_networks("cpu")
    export_onnx(args.out_dir, networks=networks)
    if not args.no_check:
        check_onnx(args.out_dir, networks)


if __name__ == "__main__":
    main()
