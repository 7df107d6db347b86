"""N samples into one ADM-format `.npz`, sharded across `accelerate launch` processes and resumable after a kill.

Sample i starts from its own generator seeded with seed + i and gets label i mod num_classes (sample.py), so
which process makes it, in which batch, before or after an interruption, never changes it. The N samples are
cut into batches [k * B, (k + 1) * B); the P processes share the batches not yet on disk round robin and
write each finished one atomically (files.replace_file) into `<output>.parts/`, so a run killed at any moment
keeps every finished batch and nothing half-written. Then the main process streams the batches, in order,
into the ADM file (`arr_0` uint8 NHWC, `arr_1` labels when class-conditional; read by the ADM evaluator and
`convdiff fid`) without holding them all in memory, and removes them.

`<output>.parts/arguments.json` records what defines the samples: a fingerprint of the pipeline's configs
and weight sizes, the scheduler's config, steps, guidance, seed, N, batch size and labels. As with a training
run folder, an output belongs to one run: writing into it again needs `--resume` (continue; refused, naming
each differing argument, when the arguments differ) or `--overwrite` (start again).
"""

import hashlib
import json
import re
import zipfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..files import replace_file

RECORD = "arguments.json"
FORMAT = "convdiff-sample-run/1"
BATCH = re.compile(r"^batch-(\d{8})-(\d{8})\.npy$")
# Recorded for the reader, not compared: a folder may move without changing what it samples.
NOT_COMPARED = ("pipeline",)


def parts_folder(output) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".parts")


def batch_name(start: int, stop: int) -> str:
    return f"batch-{start:08d}-{stop:08d}.npy"


def batch_ranges(num_samples: int, batch_size: int) -> list:
    return [(start, min(num_samples, start + batch_size)) for start in range(0, num_samples, batch_size)]


def fingerprint(folder) -> str:
    """sha256 over a pipeline's model_index.json, its components' JSON configs and their weight files' sizes.

    Only the components model_index.json names count, so other files in the folder (even this run's own
    output) leave it unchanged; the weights themselves are not read (gigabytes).
    """
    folder, digest = Path(folder), hashlib.sha256()
    index = json.loads((folder / "model_index.json").read_text())
    components = [folder / name for name, value in index.items()
                  if isinstance(value, list) and len(value) == 2 and value[0] is not None]
    files = [folder / "model_index.json", *(p for c in components if c.is_dir() for p in c.rglob("*") if p.is_file())]
    for path in sorted(files):
        name = path.relative_to(folder).as_posix()
        content = path.read_bytes() if path.suffix == ".json" else str(path.stat().st_size).encode()
        digest.update(name.encode() + b"\0" + content + b"\0")
    return digest.hexdigest()


def read_record(output):
    path = parts_folder(output) / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is damaged ({error}); pass --overwrite to start the run again.") from error
    if record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a convdiff sample run record (format {record.get('format')!r}, expected "
                         f"{FORMAT!r}); pass --overwrite to replace it, or choose another --output.")
    return record


def mismatches(recorded: dict, arguments: dict) -> list:
    keys = [k for k in {**recorded, **arguments} if k not in NOT_COMPARED]
    return [f"{k}={recorded.get(k)!r} (this run: {arguments.get(k)!r})" for k in keys
            if recorded.get(k) != arguments.get(k)]


def check_output(output, arguments: dict, resume: bool, overwrite: bool) -> str:
    """What to do with `output`: "fresh", "resume" or "complete"; raises before anything is written.

    Read-only, so every process can run it and all of them fail alike on a refused output.
    """
    output, parts = Path(output), parts_folder(output)
    earlier = output.exists() or parts.exists()
    if not earlier or overwrite:
        return "fresh"
    record = read_record(output)
    if not resume:
        done = f", {record_progress(output, record)}" if record else ""
        raise FileExistsError(f"{output} already belongs to an earlier sampling run{done}. Continue it with --resume "
                              "(same arguments), replace it with --overwrite, or choose another --output.")
    if record is None:
        raise FileExistsError(f"{output} exists but was not written by a resumable convdiff sample run (no {parts / RECORD}); "
                              "pass --overwrite to replace it, or choose another --output.")
    differ = mismatches(record["arguments"], arguments)
    if differ:
        raise ValueError(f"{output} was sampled with other arguments: {'; '.join(differ)}. Rerun with the recorded "
                         "arguments to continue it, pass --overwrite to start again, or choose another --output.")
    if record.get("complete"):
        if not output.is_file():
            raise FileNotFoundError(f"{output} was completed and its batches removed, but the file is gone; "
                                    "pass --overwrite to sample it again.")
        return "complete"
    return "resume"


def record_progress(output, record) -> str:
    if record.get("complete"):
        return "complete"
    total = record["arguments"]["num_samples"]
    return f"{sum(b - a for a, b in finished_batches(output))} of {total} samples done"


def finished_batches(output) -> list:
    parts = parts_folder(output)
    if not parts.is_dir():
        return []
    return sorted((int(m.group(1)), int(m.group(2))) for p in parts.iterdir() if (m := BATCH.match(p.name)))


def clear_output(output) -> None:
    """Remove what a sampling run writes for `output` (its .npz, batches, record, partial files), nothing else."""
    output, parts = Path(output), parts_folder(output)
    for path in (output, output.with_name(f".{output.name}.partial")):
        if path.is_file():
            path.unlink()
    if parts.is_dir():
        for path in parts.iterdir():
            name = path.name.removeprefix(".").removesuffix(".partial")
            if path.is_file() and (BATCH.match(name) or name == RECORD):
                path.unlink()
        if not any(parts.iterdir()):
            parts.rmdir()


def remove_batches(output) -> None:
    for start, stop in finished_batches(output):
        (parts_folder(output) / batch_name(start, stop)).unlink()


def write_record(output, arguments: dict, complete: bool = False) -> None:
    text = json.dumps({"format": FORMAT, "arguments": arguments, "complete": complete}, indent=2)
    replace_file(parts_folder(output) / RECORD, lambda partial: Path(partial).write_text(text))


def write_batch(output, start: int, stop: int, images: np.ndarray) -> None:
    def write(partial):
        with open(partial, "wb") as handle:
            np.save(handle, images)

    replace_file(parts_folder(output) / batch_name(start, stop), write)


def read_batch(output, start: int, stop: int) -> np.ndarray:
    path = parts_folder(output) / batch_name(start, stop)
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is damaged ({error}); delete it and rerun with --resume to sample it again.") from error
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != stop - start:
        raise ValueError(f"{path} holds {images.dtype} {images.shape}, not {stop - start} uint8 NHWC images; delete it "
                         "and rerun with --resume to sample it again.")
    return images


def write_adm_npz(output, ranges, labels) -> Path:
    """Stream the batches into `output` as `np.savez` would write them (arr_0, [arr_1]), atomically."""
    first = read_batch(output, *ranges[0])
    shape = (ranges[-1][1], *first.shape[1:])

    def write(partial):
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("arr_0.npy", "w", force_zip64=True) as member:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                          "shape": shape}
                np.lib.format.write_array_header_1_0(member, header)
                for index, (start, stop) in enumerate(ranges):
                    images = first if index == 0 else read_batch(output, start, stop)
                    if images.shape[1:] != shape[1:]:
                        raise ValueError(f"batch {batch_name(start, stop)} holds {images.shape[1:]} images, the "
                                         f"first batch {shape[1:]}; pass --overwrite to sample again.")
                    member.write(np.ascontiguousarray(images).tobytes())
            if labels is not None:
                with archive.open("arr_1.npy", "w") as member:
                    np.lib.format.write_array(member, np.asarray(labels, dtype=np.int64))

    return replace_file(output, write)


def sample_to_npz(make_batch, output, arguments: dict, labels, state, resume=False, overwrite=False,
                  progress=True) -> tuple:
    """Run (or continue) the sampling run of `arguments` into `output`; returns (action, samples made here).

    `make_batch(start, stop)` returns samples start..stop-1 as uint8 NHWC; `state` is accelerate's PartialState.
    """
    output = Path(output)
    if output.suffix != ".npz":
        raise ValueError(f"ADM sample files end in .npz, got {output}")
    action = check_output(output, arguments, resume, overwrite)
    state.wait_for_everyone()  # every process has checked before the main one changes anything
    if action == "complete":
        if state.is_main_process:
            remove_batches(output)  # left by a kill between writing the .npz and removing them
        return action, 0
    if state.is_main_process:
        if action == "fresh":
            clear_output(output)
            write_record(output, arguments)
    state.wait_for_everyone()
    ranges = batch_ranges(arguments["num_samples"], arguments["batch_size"])
    done = set(finished_batches(output))
    mine = [r for r in ranges if r not in done][state.process_index::state.num_processes]
    made = 0
    for start, stop in tqdm(mine, desc="sample", disable=not (progress and state.is_main_process)):
        write_batch(output, start, stop, make_batch(start, stop))
        made += stop - start
    state.wait_for_everyone()
    if state.is_main_process:
        missing = sorted(set(ranges) - set(finished_batches(output)))
        if missing:
            raise RuntimeError(f"batches {missing[:5]} of {output} were not written; rerun with --resume to finish.")
        write_adm_npz(output, ranges, labels)
        write_record(output, arguments, complete=True)
        remove_batches(output)  # the .npz holds them now
    state.wait_for_everyone()
    return action, made

