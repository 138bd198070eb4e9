"""``kidneytumorseg segment`` over many cases: resumable, in one process or in several (torchrun), the same code.

**Ranks.** Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment) each process is
one rank: it joins a process group (gloo on CPU, nccl on GPUs), takes its own GPU (``cuda:LOCAL_RANK``)
when the device is auto or cuda, loads the model once, and segments every ``WORLD_SIZE``-th case of the
pending list. Rank 0 makes that list (with ``--resume``, a case whose planned files all exist is complete
and skipped; its folder was written as a whole, ``io.case_folder``) and sends it to the others, shows the
progress and ETA of all ranks, and writes the summary. Without torchrun there is one rank and no group.

**Files** in the output folder, besides the cases':

* ``summary.csv``: a row per case of the run: case, input, status (``done``, ``skipped``, ``failed``),
  reason (why it failed; ``complete output exists`` for a skipped one), seconds, rank. Written by rank 0
  at the end, atomically, for a run of more than one case, under torchrun or with ``--resume``; an
  earlier run's summary is replaced only with ``--resume`` or ``--overwrite``.
* ``.batch/rank<r>.jsonl``: rank ``r``'s rows as it goes (a flushed line per case) and, last, a line saying
  it has finished: how rank 0 counts the progress of all ranks and knows when they are done.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

log = logging.getLogger("kidneytumorseg")

SUMMARY = "summary.csv"
SUMMARY_FIELDS = ("case", "input", "status", "reason", "seconds", "rank")
COMPLETE = "complete output exists"
POLL_S = 2.0


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes (torchrun's environment; 0 of 1 without it)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Ranks":
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def rank_device(device: str, ranks: Ranks) -> str:
    """The device of this rank: its own GPU (``cuda:LOCAL_RANK``) for auto or cuda when there are several ranks."""
    if ranks.world == 1 or device not in ("auto", "cuda"):
        return device
    import torch

    return f"cuda:{ranks.local}" if torch.cuda.is_available() else ("cpu" if device == "auto" else device)


def start_group(ranks: Ranks, device: str) -> None:
    """Join torchrun's process group (nccl for GPUs, gloo otherwise); nothing for one rank."""
    if ranks.world == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(ranks.local)  # nccl's collectives run on this rank's own GPU
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def share(value: Any, ranks: Ranks) -> Any:
    """Rank 0's ``value``, on every rank."""
    if ranks.world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_ok(ok: bool, ranks: Ranks) -> bool:
    """Whether ``ok`` holds on every rank (a model that failed to load on one stops them all)."""
    if ranks.world == 1:
        return ok
    import torch
    import torch.distributed as dist

    device = f"cuda:{ranks.local}" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def end_group(ranks: Ranks) -> None:
    if ranks.world == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        # no barrier: a rank done early leaves (rank 0 reads its log); a barrier would time out (gloo: 30 min)
        # behind a rank 0 with hours of cases left
        dist.destroy_process_group()


def wants_summary(args, n_cases: int, ranks: Ranks) -> bool:
    return n_cases > 1 or ranks.world > 1 or bool(getattr(args, "resume", False))


def summary_problem(output: os.PathLike, args) -> Optional[str]:
    """Why the summary cannot be written (an earlier one, without --resume or --overwrite), before any work."""
    from .io.atomic import exists_message

    path = Path(output) / SUMMARY
    if path.exists() and not (args.overwrite or args.resume):
        return exists_message(path).replace("(use --overwrite", "(use --resume to go on with that run, or --overwrite")
    return None


def pending(cases: Sequence[Tuple[str, Path]], plans: Dict[str, Any], resume: bool):
    """``(to do, skipped rows)``: with ``resume``, the cases whose planned files all exist are skipped."""
    todo, skipped = [], []
    for case_id, path in cases:
        if resume and all(p.exists() for p in plans[case_id].paths.values()):
            skipped.append(_row(case_id, path, "skipped", COMPLETE, 0.0, 0))
        else:
            todo.append((case_id, path))
    return todo, skipped


def _row(case_id: str, path, status: str, reason: str, seconds: float, rank: int) -> Dict[str, Any]:
    return {"case": case_id, "input": str(path), "status": status, "reason": reason, "seconds": round(seconds, 2),
            "rank": rank}


class RankLog:
    """This rank's rows (``rows``) and, with ``to_file``, a flushed JSON line each in
    ``<output>/.batch/rank<r>.jsonl`` (started empty), where rank 0 reads every rank's progress."""

    def __init__(self, output: os.PathLike, ranks: Ranks, to_file: bool = True) -> None:
        self.folder = Path(output) / ".batch"
        self.rank = ranks.rank
        self.rows: List[Dict[str, Any]] = []
        self._f = None
        if to_file:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._f = open(self.folder / f"rank{ranks.rank}.jsonl", "w", encoding="utf-8")

    def case(self, case_id: str, path, error: Optional[str], seconds: float) -> None:
        status, reason = ("failed", error) if error else ("done", "")
        self.rows.append(_row(case_id, path, status, reason, seconds, self.rank))
        self._write(self.rows[-1])

    def finish(self) -> None:
        self._write({"finished": True})
        if self._f is not None:
            self._f.close()

    def _write(self, obj: Dict[str, Any]) -> None:
        if self._f is not None:
            self._f.write(json.dumps(obj) + "\n")
            self._f.flush()


def read_rank_logs(folder: Path, world: int) -> Tuple[List[Dict[str, Any]], int]:
    """The case rows of every rank's log so far and how many ranks have finished."""
    rows, finished = [], 0
    for r in range(world):
        p = folder / f"rank{r}.jsonl"
        if not p.exists():
            continue
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                obj = json.loads(line)
            except ValueError:  # a line being written
                continue
            if obj.get("finished"):
                finished += 1
            elif "case" in obj:
                rows.append(obj)
    return rows, finished


def eta_text(done: int, total: int, elapsed: float) -> str:
    """``"7/12 cases, 3.5 cases/min, ETA 1 min 26 s"`` (no ETA before the first case)."""
    if not done:
        return f"0/{total} cases"
    rate = done / max(elapsed, 1e-9)
    left = (total - done) / rate
    return f"{done}/{total} cases, {60 * rate:.1f} cases/min, ETA {int(left // 60)} min {int(left % 60)} s"


def wait_for_ranks(log_folder: Path, ranks: Ranks, total: int, t0: float,
                   poll_s: float = POLL_S) -> List[Dict[str, Any]]:
    """Rank 0, its own cases done: log the progress of all ranks until every one has finished; their rows."""
    last = -1
    while True:
        rows, finished = read_rank_logs(log_folder, ranks.world)
        if len(rows) != last:
            last = len(rows)
            log.info("all ranks: %s", eta_text(len(rows), total, time.perf_counter() - t0))
        if finished >= ranks.world:
            return rows
        time.sleep(poll_s)


def write_summary(rows: Sequence[Dict[str, Any]], output: os.PathLike) -> Path:
    """``summary.csv``, a row per case in case order, atomically (the run was allowed to write it)."""
    from .io.atomic import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(SUMMARY_FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["case"]):
        writer.writerow({k: row.get(k, "") for k in SUMMARY_FIELDS})
    return atomic_write_text(Path(output) / SUMMARY, buf.getvalue(), overwrite=True)


def run_cases(mine: Sequence[Tuple[str, Path]], total: int, ranks: Ranks,
              segment_one: Callable[[int, str, Path], Optional[str]], rank_log: RankLog, t0: float) -> int:
    """Segment this rank's cases with ``segment_one(index, case_id, path)`` (None, or the error); returns failures."""
    failed = 0
    for n, (case_id, path) in enumerate(mine):
        start = time.perf_counter()
        error = segment_one(n, case_id, path)
        failed += error is not None
        rank_log.case(case_id, path, error, time.perf_counter() - start)
        if ranks.main and ranks.world > 1:
            log.info("all ranks: %s", eta_text(cases_logged(rank_log.folder, ranks.world), total,
                                               time.perf_counter() - t0))
    return failed


def cases_logged(folder: Path, world: int) -> int:
    """How many cases the ranks' logs list so far (counted, not parsed: rank 0 asks after every case)."""
    n = 0
    for r in range(world):
        try:
            n += (folder / f"rank{r}.jsonl").read_bytes().count(b'{"case": ')
        except OSError:
            pass
    return n
