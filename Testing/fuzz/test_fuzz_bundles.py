"""Issue 27 part 4: fuzzing of model bundles (manifest.json and safetensors weight files).

Starting from a valid tiny bundle, Hypothesis mutates the manifest (keys deleted at any depth, values
replaced by other JSON types and by extreme numbers and strings, lists wrapped and unwrapped, stages
duplicated, unknown roles, renamed files, wrong checksums, truncated text, a BOM, deep nesting) and the
weight files (truncated, bit-flipped, header lengths huge or "negative", headers with wrong dtypes,
shapes and offsets: the manifest's SHA-256 is recomputed, so the load reaches the weight parsing). The
properties: ``load_bundle`` returns a bundle or raises ``BundleError`` with one short line; ``info`` and
``segment`` return 0, 1 or 2 without a traceback, and ``segment`` leaves its output folder absent or
holding only complete case folders. Every example runs in a forked child whose address space may grow by
at most :data:`HEADROOM`, so an allocation of more fails the example instead of the machine.

``benchmarks/fuzz_bundles.py`` runs the same properties longer.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, List

import pytest
from hypothesis import example, given, strategies as st

from KidneyTumorSegLib.bundles.bundle import BundleError, load_bundle
from KidneyTumorSegLib.cli import main
from fuzz_bundle_checks import (HEADROOM, _capped, bounded, captured, info_problems, isolated, load_problems, message_problems, output_problems, segment_problems, weight_problems)
from fuzz_bundle_edits import (Fuzz, RAW, STRUCTS, manifest_edits, mild_edits, weight_edits, write_manifest, write_weights)

try:
    import resource
except ImportError:  # Windows: no memory limit, no fork (the examples run in process)
    resource = None



@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    return Fuzz(tmp_path_factory.mktemp("fuzz"))


def _ok(problems: List[str]) -> None:
    assert problems == [], "\n".join(problems)


def _set(path: tuple, value: Any) -> tuple:
    return ("set", 0, (path, value))


NO_TEXT_EDIT = ("none",)
K0, K1 = ("stages", 0), ("stages", 1)


# ---- the harness can fail ------------------------------------------------------------------------------------
def _raises() -> List[str]:
    raise KeyError("boom")


def _allocates() -> List[str]:
    return [f"allocated {len(bytearray(4 * HEADROOM))} bytes"]


def _aborts() -> List[str]:
    os.kill(os.getpid(), signal.SIGKILL)
    return []


def test_the_harness_reports_escapes_large_allocations_and_crashes_and_sees_broken_outputs(fuzz):
    assert isolated(_raises)[0].startswith("raised KeyError: 'boom'")
    assert isolated(lambda: ["a problem"]) == ["a problem"]
    if _capped():
        assert isolated(_allocates)[0].startswith("raised MemoryError")
        assert isolated(_aborts)[0].startswith("the child died")
    with fuzz.copy("pos") as (bundle, out):
        assert isolated(segment_problems, bundle, fuzz.ct, out) == []  # the valid bundle: exit 0, a complete case
        assert isolated(info_problems, bundle) == [] and isolated(load_problems, bundle) == []
        assert isolated(weight_problems, bundle) == []
    with fuzz.copy("pos") as (bundle, out):
        with captured():
            assert main(["segment", str(fuzz.ct), "-o", str(out), "--model", str(bundle), "--device", "cpu",
                         "--no-preview", "--no-progress"]) == 0
        (out / "ct" / "ct.seg.nrrd").unlink()
        (out / "ct" / ".tmp-1234.nii.gz").write_bytes(b"")
        assert len(output_problems(out, 0)) == 2
    assert message_problems("a\nb", Path("/b")) and message_problems("x" * 500, Path("/b"))


# ---- the properties, a bounded run each, with the failing examples found ----------------------------------------
@bounded(150)
@given(edits=manifest_edits)
@example(edits=([("many_keys", 0, 1000)], NO_TEXT_EDIT))  # 1000 unknown fields named in a 13 kB message
@example(edits=([_set(K0 + ("x" * 100_000,), 1)], NO_TEXT_EDIT))  # one unknown field of 100 kB, named whole
@example(edits=([("weight_name", 0, ("x" * 300, True))], NO_TEXT_EDIT))  # OSError: file name too long
@example(edits=([_set(("provenance",), RAW + "9" * 5000)], NO_TEXT_EDIT))  # ValueError: int of 5000 digits
@example(edits=([_set(("schema",), "x" * 100_000)], NO_TEXT_EDIT))  # the schema repeated in a 100 kB message
@example(edits=([_set(("schema_version",), ["x" * 100_000])], NO_TEXT_EDIT))  # so was the version
@example(edits=([_set(K1 + ("nnunet",), STRUCTS[1])], NO_TEXT_EDIT))  # OSError (EIO) hashing /proc/self/mem
@example(edits=([_set(K0 + ("name",), "x" * 100_000), _set(K0 + ("weights",), [])], NO_TEXT_EDIT))  # stage name
@example(edits=([_set(K0 + ("labels",), ["x" * 100_000] * 3)], NO_TEXT_EDIT))  # labels in a 300 kB message
def test_load_bundle_returns_a_bundle_or_raises_one_short_line(fuzz, edits):
    _ok(fuzz.manifest_load(edits))


@bounded(60)
@given(edits=manifest_edits)
@example(edits=([("many_keys", 0, 1000)], NO_TEXT_EDIT))
def test_info_exits_0_or_2_with_the_model_or_one_line_model_error(fuzz, edits):
    _ok(fuzz.manifest_info(edits))


@bounded(80)
@given(edits=manifest_edits | mild_edits, base=st.sampled_from(["neg", "pos"]))
@example(edits=([_set(K1 + ("network", "strides"), [1, 2, 4])], NO_TEXT_EDIT), base="neg")  # MONAI AssertionError
@example(edits=([_set(K0 + ("network", "heads"), {"a.b": 1})], NO_TEXT_EDIT), base="neg")  # torch KeyError
# a network of 1.4 GB per convolution for weights of 4 channels: allocated before the mismatch was noticed
@example(edits=([_set(K0 + ("network", "channels"), [1024] * 3), _set(K0 + ("network", "kernel_size"), 7)],
                NO_TEXT_EDIT), base="neg")
def test_segment_exits_0_1_or_2_and_leaves_only_complete_case_folders(fuzz, edits, base):
    _ok(fuzz.manifest_segment(edits, base))


@bounded(100)
@given(edits=weight_edits)
@example(edits=("tumor_0.safetensors", [("dtype", 0, "I32")]))  # int32 bytes copied into the network as weights
def test_weight_files_load_and_build_or_raise_one_short_line(fuzz, edits):
    _ok(fuzz.weights(edits))


# ---- the defects found, their messages ---------------------------------------------------------------------------
def _refusal(fuzz, edits, check=load_problems, base="neg") -> str:
    """The one-line BundleError of the bundle ``edits`` makes, as ``check`` meets it."""
    with fuzz.copy(base) as (bundle, _):
        write_manifest(bundle, edits) if edits[0] != "weights" else write_weights(bundle, edits[1])
        try:
            b = load_bundle(bundle)
            for role in b.stages:
                b.build_models(role)
        except BundleError as exc:
            return str(exc).replace(str(bundle), "B")
    raise AssertionError("no BundleError")


def test_the_defects_found_are_refused_naming_stage_and_field(fuzz):
    msg = _refusal(fuzz, ([("many_keys", 0, 1000)], NO_TEXT_EDIT))
    assert msg.endswith(": unknown field(s) unknown_0, unknown_1, unknown_2, unknown_3, unknown_4 and 995 more")
    assert _refusal(fuzz, ([_set(("schema",), "x" * 1000)], NO_TEXT_EDIT)) == \
        f'B/manifest.json: not a KidneyTumorSeg model manifest (schema "{"x" * 56}...)'
    msg = _refusal(fuzz, ([("weight_name", 0, ("x" * 256, True))], NO_TEXT_EDIT))
    assert msg == f'B/manifest.json: stage \'coarse\': weights entry "{"x" * 56}... is not a plain file name in the ' \
                  "bundle folder (no path separators, no '..', not absolute)"
    msg = _refusal(fuzz, ([_set(K0 + ("network", "strides"), [1, 2, 4])], NO_TEXT_EDIT))
    assert msg == "B/manifest.json: stage 'coarse': its network cannot be built: padding value should not be " \
                  "negative, please change the kernel size and/or stride."
    # accepted before: every case then failed, the output being half the input's size
    msg = _refusal(fuzz, ([_set(K1 + ("network", "strides"), [2, 2, 2])], NO_TEXT_EDIT))
    assert msg == "B/manifest.json: stage 'kidney': network.strides must start with 1 (the output has the " \
                  "resolution of the first level), got [2, 2, 2]"
    msg = _refusal(fuzz, ([_set(K0 + ("network", "heads"), {"a.b": 1})], NO_TEXT_EDIT))
    assert msg == "B/manifest.json: stage 'coarse': network.heads must be an object of head names to integers " \
                  'from 1 to 64, got {"a.b": 1}'
    msg = _refusal(fuzz, ("weights", ("tumor_0.safetensors", [("dtype", 0, "I32")])))
    assert msg.startswith("B/tumor_0.safetensors: weights do not match the 'resunet' network of stage 'tumor': tensor ")
    assert msg.endswith(' is of dtype "I32", not floating point')
    msg = _refusal(fuzz, ([_set(K0 + ("network", "channels"), [1024] * 3)], NO_TEXT_EDIT))
    assert msg.startswith("B/roi_0.safetensors: weights do not match the 'resunet' network of stage 'coarse': tensor ")
    assert "the network's is [1024, " in msg


def test_a_network_larger_than_its_weights_is_refused_before_it_is_allocated(fuzz):
    # 1.4 GB per convolution: under the memory limit, building it first fails with torch's RuntimeError
    edits = ([_set(K0 + ("network", "channels"), [1024] * 3), _set(K0 + ("network", "kernel_size"), 7)], NO_TEXT_EDIT)

    def refused() -> List[str]:
        msg = _refusal(fuzz, edits)
        return [] if msg.startswith("B/roi_0.safetensors: weights do not match") else [msg]

    _ok(isolated(refused))


def test_a_fine_spacing_in_a_valid_manifest_does_not_allocate_the_resampled_scan(fuzz):
    if not _capped():
        pytest.skip("no memory limit here: the example would try to allocate 32 GB")
    # 0.01 mm passes the checks (SPACING_MM); the 12 x 20 x 24 scan resampled to it is 8e9 voxels, 32 GB
    _ok(fuzz.manifest_segment(([_set(K0 + ("spacing",), [0.01] * 3)], NO_TEXT_EDIT), "pos"))
