"""Fuzzing of model bundles, part 2: the mutations of manifests and weight files, and the bundles they start from.

Used by test_fuzz_bundles.py (the properties) and benchmarks/fuzz_bundles.py.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

from hypothesis import strategies as st

from KidneyTumorSegLib.bundles.bundle import MANIFEST
from helpers_bundle import make_tiny_bundle
from fuzz_bundle_checks import (WEIGHTS, info_problems, isolated, load_problems, segment_problems, weight_problems)
from helpers_ct import ct_volume, write_image

try:
    import resource
except ImportError:  # Windows: no memory limit, no fork (the examples run in process)
    resource = None


# ---- manifest mutations ---------------------------------------------------------------------------------------
RAW = "\x00RAW:"  # a string value starting so is written into the JSON text as is (what json.dumps cannot write)
GONE = object()
NUMBERS = [0, -1, 1, 2, 3, 7, 64, 1024, 2 ** 31, 2 ** 63, -2 ** 63, 2 ** 64, 10 ** 400, -0.0, 1e308, -1e308, 5e-324,
           1e-300, 0.01, 0.5, 1.0, 100.0, float("nan"), float("inf"), float("-inf")]
TEXTS = ["", " ", "x" * 100_000, "\u00e9\u6f22\U0001f642", "\u202e\u0000\n\t\u2028", "\ud800", "..",
         "../roi_0.safetensors", "/etc/passwd", "a.b", "roi", "kidney", "tumor", "liver", "NaN", "resunet", "zscore", "3d", "IPL", "seg",
         "manifest.json", "kidney_0.safetensors", "missing.safetensors", "0" * 64, "f" * 64, "F" * 64]
RAWS = [RAW + "9" * 5000, RAW + "1e99999", RAW + "-0", RAW + "0." + "0" * 400 + "1"] + \
       [RAW + "[" * n + "]" * n for n in (50, 200, 500, 900, 990, 5000, 100_000)] + \
       [RAW + '{"a":' * n + "0" + "}" * n for n in (200, 900, 5000)]
STRUCTS = [{"path": "m", "files": {"a/b.json": "0" * 64}},
           {"path": "/proc/self/x", "folds": [0], "files": {"mem": "0" * 64}},
           {"path": "/", "files": {"etc/hostname": "0" * 64}}, {"architecture": "vnet"}, {"boundary": 1}, {"a.b": 1},
           {"": 2}, {"seg": 1}, [[0.0, 1.0]], [1, [2, 2, 1], 2], [1, 3, 4], [4, 8, 16, 32], ["background"] * 3]
KEYS = ["schema", "schema_version", "name", "stages", "files", "postprocess", "provenance", "role", "weights", "network",
        "channels", "strides", "spacing", "patch_size", "window", "nnunet", "path", "folds", "heads", "labels",
        "member_norm", "foreground_channels", "tta", "extra", "", "a.b", "\u00e9"]
FACTORS = [0, -1, 0.001, 0.01, 0.5, 2, 3, 10, 64, 100, 1e6]
ROLES = ["roi", "kidney", "tumor", "liver", "", "ROI", "kidney ", None, 3]
NAMES = list(WEIGHTS) + ["missing.safetensors", "manifest.json", "../roi_0.safetensors", "/etc/passwd", ".", "",
                         "x" * 300, "\u00e9.safetensors", "a\nb", "C:x"]

leaf = st.one_of(st.none(), st.booleans(), st.sampled_from(NUMBERS), st.integers(), st.floats(),
                 st.sampled_from(TEXTS), st.text(max_size=12), st.sampled_from(RAWS), st.sampled_from(STRUCTS))
json_values = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4), max_leaves=8)
where = st.integers(0, 1 << 16)
tree_edit = st.one_of(
    st.tuples(st.sampled_from(["delete", "wrap", "unwrap", "stage_dup"]), where, st.none()),
    st.tuples(st.just("replace"), where, json_values),
    st.tuples(st.just("add"), where, st.tuples(st.sampled_from(KEYS) | st.text(max_size=8), json_values)),
    st.tuples(st.just("many_keys"), where, st.integers(1, 3000)),
    st.tuples(st.just("nest"), where, st.integers(1, 100)),
    st.tuples(st.just("number"), where, st.tuples(st.sampled_from(FACTORS), st.sampled_from([0, 1, 2, 4, -1]))),
    st.tuples(st.just("role"), where, st.sampled_from(ROLES)),
    st.tuples(st.just("weight_name"), where, st.tuples(st.sampled_from(NAMES), st.booleans())),
    st.tuples(st.just("checksum"), where, st.sampled_from(TEXTS[-3:]) | st.text("0123456789abcdef", min_size=63,
                                                                               max_size=65)),
)
text_edit = st.one_of(
    st.just(("none",)), st.just(("bom",)), st.just(("utf16",)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("byte"), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("deep"), st.sampled_from([100, 950, 5000, 200_000])),
)
manifest_edits = st.tuples(st.lists(tree_edit, min_size=1, max_size=4), text_edit)
# edits that mostly keep the manifest valid (numbers scaled, fields back to their defaults): they reach the cascade
_mild_number = st.tuples(st.just("number"), where, st.tuples(st.sampled_from([0, 0.5, 1, 2, 3, 0.01, 10]),
                                                             st.sampled_from([0, 1, -1, 0.5])))
mild_edit = st.one_of(_mild_number, _mild_number, _mild_number, st.tuples(st.just("delete"), where, st.none()))
mild_edits = st.tuples(st.lists(mild_edit, min_size=1, max_size=3), st.just(("none",)))


def _paths(node: Any, at: tuple = ()):
    yield at
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, at + (k,))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _at(tree: Any, path: tuple) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _special(tree: Any, op: str, where: int, value: Any) -> Any:
    """The edits of one stage or one file of the manifest (nothing when the manifest no longer has them)."""
    stages = tree.get("stages") if isinstance(tree, dict) else None
    files = tree.get("files") if isinstance(tree, dict) else None
    stage = stages[where % len(stages)] if isinstance(stages, list) and stages else None
    if op == "stage_dup" and stage is not None:
        stages.append(copy.deepcopy(stage))
    elif op == "role" and isinstance(stage, dict):
        stage["role"] = value
    elif op == "weight_name" and isinstance(stage, dict):
        name, rename_entry = value
        old = stage.get("weights", [None])
        stage["weights"] = [name]
        if rename_entry and isinstance(files, dict) and isinstance(old, list) and old and \
                isinstance(old[0], str) and old[0] in files:
            files[name if isinstance(name, str) else str(name)] = files.pop(old[0])
    elif op == "checksum" and isinstance(files, dict) and files:
        files[sorted(files)[where % len(files)]] = value
    elif op == "many_keys":
        target = stage if isinstance(stage, dict) else tree
        if isinstance(target, dict):
            target.update({f"unknown_{i}": i for i in range(value)})
    return tree


def edit_tree(tree: Any, edit: Tuple[str, int, Any]) -> Any:
    """``tree`` with one edit: ``(op, where, value)``, ``where`` picking the node (any depth) or the stage."""
    op, where, value = edit
    if op == "set":  # (path, value): the explicit examples' edit
        _at(tree, value[0][:-1])[value[0][-1]] = value[1]
        return tree
    if op in ("stage_dup", "role", "weight_name", "checksum", "many_keys"):
        return _special(tree, op, where, value)
    paths = list(_paths(tree))
    if op == "number":  # a number scaled and shifted: mostly still in range, a valid manifest with odd values
        paths = [p for p in paths if _number(_at(tree, p))] or [()]
    path = paths[where % len(paths)]
    node = _at(tree, path)
    new: Any = GONE if op == "delete" else copy.deepcopy(value) if op == "replace" else [node] if op == "wrap" else node
    if op == "unwrap" and isinstance(node, (list, dict)):
        new = (list(node.values()) if isinstance(node, dict) else node or [None])[:1] or [None]
        new = new[0]
    elif op == "add":
        if isinstance(node, dict):
            node[value[0]] = copy.deepcopy(value[1])
        elif isinstance(node, list):
            node.append(copy.deepcopy(value[1]))
        return tree
    elif op == "number" and _number(node):
        try:
            new = node * value[0] + value[1]
            new = int(new) if isinstance(node, int) and float(new).is_integer() else new
        except OverflowError:  # 10 ** 400 * 0.5
            new = node
    elif op == "nest":
        for i in range(value):
            new = [new] if i % 2 else {"provenance": new}
    if not path:
        return None if new is GONE else new
    parent = _at(tree, path[:-1])
    if new is GONE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return tree


def _raw(text: str) -> str:
    """Write the RAW values into the JSON text as they are."""
    return re.sub(r'"\\u0000RAW:((?:[^"\\]|\\.)*)"', lambda m: json.loads(f'"{m.group(1)}"'), text)


def edit_text(text: str, edit: tuple) -> bytes:
    op = edit[0]
    if op == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if op == "utf16":
        return text.encode("utf-16")
    data = text.encode()
    if op == "truncate":
        return data[: int(len(data) * edit[1])]
    if op == "byte" and data:
        pos = min(int(len(data) * edit[1]), len(data) - 1)
        return data[:pos] + bytes([edit[2]]) + data[pos + 1:]
    if op == "deep":
        return b"[" * edit[1] + data + b"]" * edit[1]
    return data


def write_manifest(folder: Path, edits) -> None:
    """Apply ``edits`` (tree edits, one text edit) to the manifest of ``folder``."""
    tree_edits, text_op = edits
    tree = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    for e in tree_edits:
        tree = edit_tree(tree, e)
    (folder / MANIFEST).write_bytes(edit_text(_raw(json.dumps(tree)), text_op))


# ---- weight file mutations (the manifest's SHA-256 follows the file) ------------------------------------------
DTYPES = ["F32", "F16", "BF16", "F64", "I32", "U32", "I64", "I8", "U8", "BOOL", "F8_E4M3", "XX", "", "f32"]
SHAPE_NUMBERS = st.sampled_from([0, 1, 2, 3, 4, 8, 16, -1, 2 ** 31, 2 ** 32, 2 ** 63 - 1, 2 ** 64, 10 ** 30])
shapes = st.lists(SHAPE_NUMBERS | st.integers(0, 64), max_size=6)
header_value = st.one_of(st.sampled_from(DTYPES), shapes, json_values)
weight_edit = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("length"), st.sampled_from([0, 1, 2, 7, -1, 1, 8, 2 ** 31, 100_000_001, 2 ** 63 - 1, 2 ** 63,
                                                  2 ** 64 - 1, -(2 ** 63)])),
    st.tuples(st.just("dtype"), where, st.sampled_from(DTYPES)),
    st.tuples(st.just("shape"), where, shapes),
    st.tuples(st.just("offsets"), where, st.lists(SHAPE_NUMBERS | st.integers(0, 100_000), max_size=3)),
    st.tuples(st.just("field"), where, st.tuples(st.sampled_from(["dtype", "shape", "data_offsets", "x"]),
                                                 header_value | st.just(GONE))),
    st.tuples(st.just("entry"), where, st.tuples(st.sampled_from(["rename", "drop", "copy", "metadata"]), json_values)),
)
weight_edits = st.tuples(st.sampled_from(WEIGHTS), st.lists(weight_edit, min_size=1, max_size=3))


def _edit_entry(header: dict, edit: tuple) -> None:
    op, where, value = edit
    names = sorted(k for k in header if k != "__metadata__") or ["w"]
    name = names[where % len(names)]
    entry = header.setdefault(name, {})
    if op in ("dtype", "shape", "offsets"):
        entry[{"offsets": "data_offsets"}.get(op, op)] = value
    elif op == "field" and isinstance(entry, dict):
        entry.pop(value[0], None) if value[1] is GONE else entry.__setitem__(value[0], copy.deepcopy(value[1]))
    elif op == "entry":
        kind, v = value
        if kind == "rename":
            header[f"{name}_renamed"] = header.pop(name)
        elif kind == "drop":
            header.pop(name)
        elif kind == "copy":
            header[f"{name}_copy"] = copy.deepcopy(entry)
        else:
            header["__metadata__"] = copy.deepcopy(v)


def edit_weight(data: bytes, edit: tuple) -> bytes:
    """A weight file's bytes with one edit (a header edit re-serialises the header, its length field follows)."""
    op = edit[0]
    if op == "truncate":
        return data[: int(len(data) * edit[1])]
    if op == "flip":
        n = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
        pos = edit[1] % max(1, min(len(data), 8 + n))
        return data[:pos] + bytes([data[pos] ^ (1 << edit[2])]) + data[pos + 1:] if data else data
    if op == "length":
        return (edit[1] % (1 << 64)).to_bytes(8, "little") + data[8:]
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8: 8 + n])
    except (ValueError, RecursionError):
        return data
    if not isinstance(header, dict):
        return data
    _edit_entry(header, edit)
    text = _raw(json.dumps(header)).encode()
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def write_weights(folder: Path, edits) -> None:
    """Apply ``edits`` to one weight file of ``folder`` and record its new SHA-256 in the manifest."""
    name, ops = edits
    path = folder / name
    data = path.read_bytes()
    for e in ops:
        data = edit_weight(data, e)
    path.write_bytes(data)
    mp = folder / MANIFEST
    manifest = json.loads(mp.read_text(encoding="utf-8"))
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    mp.write_text(json.dumps(manifest), encoding="utf-8")


# ---- the bundles and scan the examples start from ---------------------------------------------------------------
class Fuzz:
    """The valid tiny bundles the examples copy (``neg``: background everywhere, ``pos``: foreground everywhere),
    a small CT and a scratch folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bases = {"neg": make_tiny_bundle(root / "neg", fg_bias=-8.0).path,
                      "pos": make_tiny_bundle(root / "pos", fg_bias=8.0).path}
        self.ct = write_image(ct_volume(), root / "ct.nii.gz")
        self.n = 0

    @contextlib.contextmanager
    def copy(self, base: str = "neg"):
        """A fresh copy of a base bundle, and an output folder path beside it; both removed after."""
        self.n += 1
        work = self.root / f"ex{self.n}"
        shutil.copytree(self.bases[base], work / "bundle")
        try:
            yield work / "bundle", work / "out"
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def manifest_load(self, edits) -> List[str]:
        with self.copy() as (bundle, _):
            write_manifest(bundle, edits)
            return isolated(load_problems, bundle)

    def manifest_info(self, edits) -> List[str]:
        with self.copy() as (bundle, _):
            write_manifest(bundle, edits)
            return isolated(info_problems, bundle)

    def manifest_segment(self, edits, base: str = "neg") -> List[str]:
        with self.copy(base) as (bundle, out):
            write_manifest(bundle, edits)
            return isolated(segment_problems, bundle, self.ct, out)

    def weights(self, edits) -> List[str]:
        with self.copy() as (bundle, _):
            write_weights(bundle, edits)
            return isolated(weight_problems, bundle)


# the properties by name: (strategy of one example's arguments, Fuzz method); benchmarks/fuzz_bundles.py runs them
PROPERTIES: Dict[str, Tuple[Any, str]] = {
    "load": (st.tuples(manifest_edits), "manifest_load"),
    "info": (st.tuples(manifest_edits), "manifest_info"),
    "segment": (st.tuples(manifest_edits | mild_edits, st.sampled_from(["neg", "pos"])), "manifest_segment"),
    "weights": (st.tuples(weight_edits), "weights"),
}


