"""Offline Weights & Biases runs read back without a server, for the metric-writer tests.

An offline run is WANDB_DIR/wandb/offline-run-*/run-ID.wandb: a 7-byte header (b":W&B", a
2-byte magic number, a version byte), then LevelDB-log-style blocks of 32 KiB holding records
[crc32 u32][length u16][type u8][data] (type 1: whole, 2/3/4: first/middle/last piece), a
block's tail of fewer than 7 bytes zero-filled. Each record is a wandb Record protobuf.
"""

import glob
import json
import os
import struct

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str) -> list:
    """The Record protobufs of one .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", data[:HEADER]
    out, parts, i = [], [], HEADER
    while i + HEADER <= len(data):
        left = BLOCK - i % BLOCK
        if left < HEADER:  # the zero-filled tail of a block
            i += left
            continue
        _, n, kind = struct.unpack("<IHB", data[i : i + HEADER])
        if kind == 0:  # the rest of a block no record used
            i += left
            continue
        parts.append(data[i + HEADER : i + HEADER + n])
        i += HEADER + n
        if kind in (FULL, LAST):
            out.append(wandb_internal_pb2.Record.FromString(b"".join(parts)))
            parts = []
    return out


def offline_runs(wandb_dir: str, run_id: str = "*") -> list[str]:
    """The .wandb files of the offline runs (of run_id) under wandb_dir, oldest first.

    wandb's service process writes a run's records after run.finish() returns; wandb.teardown()
    waits for them, so the files are whole when this returns."""
    import wandb

    wandb.teardown()
    pattern = os.path.join(wandb_dir, "wandb", f"offline-run-*-{run_id}", f"run-{run_id}.wandb")
    return sorted(glob.glob(pattern))


def history(path: str) -> list[dict]:
    """The logged rows of a .wandb file: {key: value}, nested keys joined by "/"."""
    rows = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            rows.append(
                {
                    (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                    for i in r.history.item
                }
            )
    return rows


def config(path: str) -> dict:
    """The run's config: the run record's and every later config record's updates."""
    out = {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        updates = (
            r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        )
        for item in updates:
            out[item.key] = json.loads(item.value_json)
    return out
