"""Fuzzing of image inputs, part 1: the files the examples are (written by SimpleITK, NIfTI header bytes,
NRRD and MetaImage header text). Used by test_fuzz_inputs.py and benchmarks/fuzz_inputs.py.
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, reject
from hypothesis import strategies as st


Spec = Dict[str, Any]
LIMIT_S = 30.0  # one read; a hang fails here rather than stalling the suite
PEAK_LIMIT = 256 << 20  # resident memory a read of these (small) files may add
CLI_PEAK_LIMIT = 1 << 30  # the same for a whole run of the command (model and inference included)
NAN, INF = float("nan"), float("inf")
FLOATS = [0.0, -0.0, -1.0, NAN, INF, -INF, 1e-9, 1e9, 1e-45, 3.4e38, 0.7, 2.5]
DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64",
          "complex64", "complex128", "bool"]
FORMATS = [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"]
DIRECTIONS = {
    "identity": np.eye(3),
    "rotated": np.array([[np.cos(0.35), -np.sin(0.35), 0.0], [np.sin(0.35), np.cos(0.35), 0.0], [0.0, 0.0, 1.0]]),
    "kits": np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]),
    "flipped": np.diag([-1.0, -1.0, 1.0]),
    "shear": np.array([[1.0, 0.6, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 1.0]]),  # unit columns, not orthogonal
    "singular": np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
    "zero": np.zeros((3, 3)),
    "tiny": np.eye(3) * 1e-9,
    "nan": np.array([[NAN, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
    "inf": np.array([[INF, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
}
FAST = dict(deadline=None, derandomize=True, database=None, print_blob=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------
# Voxels
# --------------------------------------------------------------------------
def ct_voxels(shape, dtype: str, values: str, seed: int) -> np.ndarray:
    """Voxels of ``shape`` and ``dtype``: a CT (air, tissue, bone) or something that is not one."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    if dtype == "bool":  # no file format stores bool: a 0/1 mask
        return (rng.random(shape) < 0.5).astype(np.uint8)
    dt = np.dtype(dtype)
    if values == "random":  # any bit pattern (NaN and inf included for floats)
        return rng.integers(0, 256, int(np.prod(shape)) * dt.itemsize, dtype=np.uint8).view(dt).reshape(shape)
    arr = rng.integers(-1000, 1500, shape).astype(np.float64)
    if arr.size:
        arr.flat[0], arr.flat[-1] = -1000.0, 1200.0
    if values == "constant":
        arr[...] = 40.0
    elif values == "positive":
        arr += 1024.0
    elif values in ("nan", "inf") and dt.kind in "fc" and arr.size:
        arr.flat[arr.size // 2] = NAN if values == "nan" else -INF
    elif values == "extreme" and arr.size > 1:
        info = np.finfo(dt) if dt.kind in "fc" else np.iinfo(dt)
        arr.flat[1], arr.flat[-2] = float(info.min), float(info.max)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        arr = np.clip(arr, info.min, info.max)
    with np.errstate(over="ignore", invalid="ignore"):
        return arr.astype(dt)


def _write_sitk(arr: np.ndarray, path: Path, compress: bool = False, vector: bool = False) -> None:
    img = sitk.GetImageFromArray(arr, isVector=vector)
    img.SetSpacing((0.8, 0.7, 2.5, 1.0, 1.0)[: img.GetDimension()])
    sitk.WriteImage(img, str(path), useCompression=compress)


# --------------------------------------------------------------------------
# Class 1: images SimpleITK writes (sizes, spacings, directions, types, dimensions)
# --------------------------------------------------------------------------
floats = st.sampled_from(FLOATS) | st.floats(width=32)


@st.composite
def written_specs(draw) -> Spec:
    ndim = draw(st.sampled_from([2, 3, 3, 3, 3, 4, 4, 5]))
    shape = draw(st.lists(st.integers(1, 7) | st.integers(2, 7), min_size=ndim, max_size=ndim))
    if ndim == 4 and draw(st.booleans()):
        shape[draw(st.integers(0, 3))] = 1  # one volume: readable as 3D
    dtype = draw(st.sampled_from(DTYPES + ["int16"] * 4))
    return dict(kind="written", fmt=draw(st.sampled_from(FORMATS)), shape=tuple(shape), dtype=dtype,
                components=1 if dtype.startswith("complex") else draw(st.sampled_from([1] * 6 + [2, 3, 4])),
                values=draw(st.sampled_from(["ct"] * 6 + ["constant", "positive", "nan", "inf", "extreme", "random"])),
                spacing=draw(st.tuples(*[st.floats(0.3, 6.0)] * 3) | st.tuples(floats, floats, floats)),
                direction=draw(st.sampled_from(["identity", "rotated", "kits"]) | st.sampled_from(sorted(DIRECTIONS))),
                compress=draw(st.booleans()),
                seed=draw(st.integers(0, 3)))


def build_written(spec: Spec, folder: Path) -> Tuple[Path, Optional[np.ndarray], Optional[Tuple[int, int]]]:
    """Write ``spec``; returns (path, voxels a successful read must return, None)."""
    arr = ct_voxels(spec["shape"], spec["dtype"], spec["values"], spec["seed"])
    n = spec["components"]
    data = np.stack([arr] * n, axis=-1) if n > 1 else arr
    img = sitk.GetImageFromArray(data, isVector=n > 1)
    nd = img.GetDimension()
    spacing, direction = tuple(spec["spacing"]), DIRECTIONS[spec["direction"]]
    patch = False
    try:  # SimpleITK refuses spacings <= 0 and singular directions: those go into the header by hand
        img.SetSpacing((spacing + (1.0,) * 5)[:nd])
        if nd == 3:
            img.SetDirection(tuple(direction.ravel()))
    except RuntimeError:
        patch = True
    path = folder / ("ct" + spec["fmt"])
    try:
        sitk.WriteImage(img, str(path), useCompression=spec["compress"])
    except RuntimeError:  # e.g. NRRD will not write a NaN direction
        img.SetSpacing((1.0,) * nd)
        img.SetDirection(tuple(np.eye(nd).ravel()))
        try:
            sitk.WriteImage(img, str(path), useCompression=spec["compress"])
        except RuntimeError:  # no such file at all (a 5D vector image in NIfTI)
            reject()
        patch = True
    if patch and nd == 3 and n == 1:
        patch_geometry(path, spacing, direction)
    expected = None
    if n == 1 and not spec["dtype"].startswith("complex"):
        squeezable = [a for a, s in enumerate(arr.shape) if s == 1]
        if arr.ndim == 3 or (arr.ndim == 4 and len(squeezable) == 1):
            expected = arr.reshape([s for s in arr.shape if s != 1] if arr.ndim == 4 else arr.shape)
    return path, expected, None


def patch_geometry(path: Path, spacing, d: np.ndarray) -> None:
    """Put ``spacing`` and direction ``d`` into the header of a 3D image file as they are."""
    with np.errstate(invalid="ignore", over="ignore"):
        cols = [d[:, a] * spacing[a] for a in range(3)]
    name = path.name
    if name.endswith((".nii", ".nii.gz")):
        raw = bytearray(gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes())
        with np.errstate(invalid="ignore", over="ignore"):
            ras = np.diag([-1.0, -1.0, 1.0]) @ np.stack(cols, axis=1)
        _put(raw, "pixdim", 1, spacing[0]), _put(raw, "pixdim", 2, spacing[1]), _put(raw, "pixdim", 3, spacing[2])
        _put(raw, "qform_code", 0, 0), _put(raw, "sform_code", 0, 1)
        for r in range(3):
            for c in range(3):
                _put(raw, "srow", 4 * r + c, ras[r, c])
        path.write_bytes(gzip.compress(bytes(raw)) if name.endswith(".gz") else bytes(raw))
    elif name.endswith((".nrrd", ".nhdr")):
        vecs = " ".join("(" + ",".join(repr(float(v)) for v in c) + ")" for c in cols)
        _edit_text(path, ":", [("set", "space directions", vecs)])
    else:
        _edit_text(path, " =", [("set", "ElementSpacing", " ".join(repr(float(s)) for s in spacing)),
                                ("set", "TransformMatrix", " ".join(repr(float(v)) for v in d.T.ravel()))])


# --------------------------------------------------------------------------
# Class 2: NIfTI-1 header bytes
# --------------------------------------------------------------------------
NIFTI_FIELDS = {
    "sizeof_hdr": (0, "<i4"), "dim_info": (39, "u1"), "dim": (40, "<i2"), "intent_code": (68, "<i2"),
    "datatype": (70, "<i2"), "bitpix": (72, "<i2"), "pixdim": (76, "<f4"), "vox_offset": (108, "<f4"),
    "scl_slope": (112, "<f4"), "scl_inter": (116, "<f4"), "xyzt_units": (123, "u1"), "qform_code": (252, "<i2"),
    "sform_code": (254, "<i2"), "quatern": (256, "<f4"), "srow": (280, "<f4"), "magic": (344, "S4"),
}
NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
               1536: 16, 1792: 16, 2048: 32, 2304: 4}
int16s = st.integers(-32768, 32767)


def _put(raw: bytearray, field: str, index: int, value) -> None:
    off, fmt = NIFTI_FIELDS[field]
    dt = np.dtype(fmt)
    with np.errstate(over="ignore", invalid="ignore"):
        raw[off + index * dt.itemsize: off + (index + 1) * dt.itemsize] = np.array([value]).astype(dt).tobytes()


nifti_edits = st.one_of(
    st.tuples(st.just("sizeof_hdr"), st.just(0), st.sampled_from([0, -1, 347, 349, 540, 0x5C010000, 1 << 30])),
    st.tuples(st.just("dim"), st.integers(0, 7), st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 7, 8, 13, 32767]) | int16s),
    st.tuples(st.just("pixdim"), st.integers(0, 7), floats),
    st.tuples(st.just("datatype"), st.just(0), st.sampled_from([0, 1] + sorted(NIFTI_BYTES)) | int16s),
    st.tuples(st.just("bitpix"), st.just(0), st.sampled_from([0, 1, 8, 16, 32, 64, 128, -16])),
    st.tuples(st.just("vox_offset"), st.just(0), st.sampled_from([0.0, 348.0, 351.0, 353.5, 1e9, -1.0]) | floats),
    st.tuples(st.sampled_from(["scl_slope", "scl_inter"]), st.just(0), floats),
    st.tuples(st.sampled_from(["qform_code", "sform_code"]), st.just(0), st.sampled_from([-1, 0, 1, 2, 3, 4, 127])),
    st.tuples(st.just("quatern"), st.integers(0, 5), floats),
    st.tuples(st.just("srow"), st.integers(0, 11), floats),
    st.tuples(st.just("magic"), st.just(0), st.sampled_from([b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0", b"abcd"])),
    st.tuples(st.sampled_from(["dim_info", "xyzt_units"]), st.just(0), st.integers(0, 255)),
    st.tuples(st.just("byte"), st.integers(0, 347), st.integers(0, 255)),
)


@st.composite
def nifti_specs(draw) -> Spec:
    shape = draw(st.sampled_from([(6, 7, 8), (4, 5, 3), (1, 6, 7, 8), (2, 3, 4, 5)]))
    damage = st.tuples(st.sampled_from(["cut", "trailer", "head"]), st.integers(0, 40), st.integers(0, 255))
    dtype = draw(st.sampled_from(["int16", "uint8", "int32", "float32", "float64"]))
    return dict(kind="nifti", shape=shape, dtype=dtype,
                edits=draw(st.lists(nifti_edits, min_size=1, max_size=4)),
                cut=draw(st.sampled_from([0, 0, 0, 1, 2, 100, 5000, 10 ** 6]) | st.integers(-64, 2000)),
                gz=draw(st.booleans()), gz_damage=draw(st.none() | damage), seed=draw(st.integers(0, 3)))


def nifti_spec(edits, cut=0, gz=False, gz_damage=None, shape=(6, 7, 8), dtype="int16") -> Spec:
    return dict(kind="nifti", shape=shape, dtype=dtype, edits=edits, cut=cut, gz=gz, gz_damage=gz_damage, seed=0)


def build_nifti(spec: Spec, folder: Path):
    """Write a small CT as NIfTI-1, edit its header bytes, cut or extend its data, maybe gzip and damage it."""
    base = folder / "base.nii"
    _write_sitk(ct_voxels(spec["shape"], spec["dtype"], "ct", spec["seed"]), base)
    raw = bytearray(base.read_bytes())
    base.unlink()
    for field, index, value in spec["edits"]:
        if field == "byte":
            raw[index] = value
        else:
            _put(raw, field, index, value)
    cut = spec["cut"]
    raw = raw + bytes(-cut) if cut < 0 else raw[: max(0, len(raw) - cut)]
    code = int(np.frombuffer(bytes(raw[70:72]), "<i2")[0]) if len(raw) >= 72 else 0
    bound = (max(0, len(raw) - 348), NIFTI_BYTES.get(code, 0))
    if not spec["gz"]:
        path = folder / "ct.nii"
        path.write_bytes(bytes(raw))
        return path, None, bound
    data = bytearray(gzip.compress(bytes(raw)))
    if spec["gz_damage"]:
        how, at, value = spec["gz_damage"]
        if how == "cut":
            data = data[: max(0, len(data) - 1 - at)]
        else:  # a byte of the gzip header, or of the CRC/length trailer
            data[(at % 10) if how == "head" else -1 - (at % 8)] = value
    path = folder / "ct.nii.gz"
    path.write_bytes(bytes(data))
    return path, None, bound


# --------------------------------------------------------------------------
# Classes 3 and 4: NRRD and MetaImage header text
# --------------------------------------------------------------------------
SIZES = ["0", "1", "2", "3", "7", "13", "-1", "255", "32767", "1048576", "2147483648", "1099511627776", "x", "2.5"]
texts = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12)


def _num(x: float) -> str:
    return repr(float(x))


vector = st.lists(floats, min_size=2, max_size=4).map(lambda v: "(" + ",".join(_num(x) for x in v) + ")")
numbers = st.lists(floats.map(_num) | st.sampled_from(SIZES), min_size=0, max_size=10).map(" ".join)
sizes = st.lists(st.sampled_from(SIZES), min_size=0, max_size=6).map(" ".join)
NRRD_VALUES = {
    "type": st.sampled_from(["short", "unsigned short", "uchar", "signed char", "int", "unsigned int", "long long",
                             "unsigned long long", "float", "double", "block", "complex", "string", ""]),
    "dimension": st.sampled_from(["0", "1", "2", "3", "4", "5", "17", "-1", "3.5", "x"]),
    "sizes": sizes,
    "space directions": st.lists(vector | st.just("none"), min_size=0, max_size=5).map(" ".join),
    "spacings": numbers,
    "space origin": vector,
    "encoding": st.sampled_from(["raw", "gzip", "gz", "bzip2", "ascii", "text", "hex", "zrl", "x"]),
    "endian": st.sampled_from(["little", "big", "middle"]),
    "kinds": st.lists(st.sampled_from(["domain", "space", "RGB-color", "vector", "list", "3-vector", "complex",
                                       "none", "???"]), max_size=5).map(" ".join),
    "byte skip": st.sampled_from(["-1", "0", "1", "100", "1000000", "-2"]),
    "line skip": st.sampled_from(["0", "1", "5", "1000000"]),
    "data file": st.sampled_from(["missing.raw", "LIST", "/dev/zero", "%03d.raw 0 2 1", ".", ""]),
    "space": st.sampled_from(["left-posterior-superior", "right-anterior-superior", "RAS", "3D-right-handed",
                              "scanner-xyz", "nonsense"]),
    "space dimension": st.sampled_from(["0", "2", "3", "4"]),
    "centerings": st.sampled_from(["cell cell cell", "node", "???"]),
}
MHA_VALUES = {
    "NDims": st.sampled_from(["0", "1", "2", "3", "4", "5", "-1", "x"]),
    "DimSize": sizes,
    "ElementSpacing": numbers,
    "ElementSize": numbers,
    "TransformMatrix": numbers,
    "Offset": numbers,
    "ElementType": st.sampled_from(["MET_SHORT", "MET_USHORT", "MET_UCHAR", "MET_CHAR", "MET_INT", "MET_UINT",
                                    "MET_LONG_LONG", "MET_ULONG_LONG", "MET_FLOAT", "MET_DOUBLE", "MET_STRING",
                                    "MET_OTHER", "MET_NONE", "MET_FLOAT_ARRAY", "BOGUS"]),
    "ElementNumberOfChannels": st.sampled_from(["0", "1", "2", "3", "-1", "1000000"]),
    "CompressedData": st.sampled_from(["True", "False", "Yes"]),
    "CompressedDataSize": st.sampled_from(["0", "1", "100", "1000000000", "-1"]),
    "BinaryData": st.sampled_from(["True", "False"]),
    "BinaryDataByteOrderMSB": st.sampled_from(["True", "False"]),
    "HeaderSize": st.sampled_from(["-1", "0", "1", "100", "1000000000"]),
    "AnatomicalOrientation": st.sampled_from(["RAI", "LPS", "???", "RRR"]),
    "ObjectType": st.sampled_from(["Image", "Mesh", ""]),
    "ElementDataFile": st.sampled_from(["LOCAL", "missing.raw", "LIST", "/dev/zero", "ct_%03d.raw 1 3 1", ""]),
}


def _text_edits(values: Dict[str, Any]):
    keys = sorted(values)
    return st.one_of(
        st.sampled_from(keys).flatmap(lambda k: st.tuples(st.just("set"), st.just(k), values[k])),
        st.tuples(st.sampled_from(["drop", "dup"]), st.sampled_from(keys)),
        st.tuples(st.just("junk"), texts),
    )


@st.composite
def text_specs(draw, kind: str) -> Spec:
    values = NRRD_VALUES if kind == "nrrd" else MHA_VALUES
    edits = draw(st.lists(_text_edits(values), min_size=1, max_size=4))
    if kind == "nrrd" and draw(st.integers(0, 9)) == 0:
        edits.append(("magic", draw(st.sampled_from(["NRRD0001", "NRRD0005", "NRRD9999", "XRRD0004", ""]))))
    return dict(kind=kind, shape=draw(st.sampled_from([(6, 7, 8), (4, 5, 3), (1, 6, 7, 8)])),
                dtype=draw(st.sampled_from(["int16", "uint8", "int32", "float32", "float64"])),
                compress=draw(st.booleans()), edits=edits,
                cut=draw(st.sampled_from([0, 0, 0, 1, 2, 100, 10 ** 6]) | st.integers(-64, 2000)),
                seed=draw(st.integers(0, 3)))


def text_spec(kind: str, edits, cut=0, compress=False, shape=(6, 7, 8), dtype="int16") -> Spec:
    return dict(kind=kind, shape=shape, dtype=dtype, compress=compress, edits=edits, cut=cut, seed=0)


def _edit_text(path: Path, sep: str, edits) -> int:
    """Edit the header of an NRRD (``sep`` ':') or MetaImage (``' ='``) file in place; returns the data's length."""
    raw = path.read_bytes()
    if sep == ":":
        end = raw.find(b"\n\n")
        head, data = (raw, b"") if end < 0 else (raw[:end], raw[end + 2:])
    else:
        m = re.search(rb"ElementDataFile = [^\n]*\n", raw)
        head, data = (raw, b"") if m is None else (raw[: m.end() - 1], raw[m.end():])
    lines = head.decode("latin-1").split("\n")
    last = lines.pop() if sep != ":" else None  # MetaImage: ElementDataFile stays last
    for edit in edits:
        if edit[0] == "magic":
            lines[0] = edit[1]
            continue
        if edit[0] == "junk":
            lines.insert(len(lines) // 2 + 1, edit[1])
            continue
        key = edit[1]
        if key == "ElementDataFile" and last is not None:
            last = {"set": f"ElementDataFile = {edit[-1]}", "drop": "", "dup": last + "\n" + last}[edit[0]]
            continue
        at = [i for i, ln in enumerate(lines) if ln.split(sep)[0].strip() == key]
        if edit[0] == "set":
            line = f"{key}{sep} {edit[2]}"
            if at:
                lines[at[0]] = line
            else:
                lines.append(line)
        elif at and edit[0] == "drop":
            del lines[at[0]]
        elif at:
            lines.insert(at[0], lines[at[0]])
    head = "\n".join(lines + ([last] if last is not None else [])).encode("latin-1")
    path.write_bytes(head + (b"\n\n" if sep == ":" else b"\n") + data)
    return len(data)


def build_text(spec: Spec, folder: Path):
    """Write a small CT as NRRD or MetaImage (data attached), edit its header text, cut or extend its data."""
    path = folder / ("ct.nrrd" if spec["kind"] == "nrrd" else "ct.mha")
    arr = ct_voxels(spec["shape"], spec["dtype"], "ct", spec["seed"])
    _write_sitk(arr, path, compress=spec["compress"])
    disk = _edit_text(path, ":" if spec["kind"] == "nrrd" else " =", spec["edits"])
    raw = path.read_bytes()
    cut = spec["cut"]
    path.write_bytes(raw + bytes(-cut) if cut < 0 else raw[: max(0, len(raw) - cut)])
    text = path.read_bytes()[:4096].decode("latin-1")
    ascii_data = re.search(r"(?m)^(encoding: *(ascii|text|txt)|BinaryData = False)", text) is not None
    detached = re.search(r"(?m)^(data ?file:|ElementDataFile = (?!LOCAL))", text) is not None
    bound = None if detached else (max(arr.nbytes, disk + max(0, -cut)) * (8 if ascii_data else 1), 0)
    return path, None, bound


BUILDERS = {"written": build_written, "nifti": build_nifti, "nrrd": build_text, "mha": build_text}


