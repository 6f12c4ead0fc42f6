"""TensorBoard event files read back without TensorFlow, for the metric-log tests."""

import struct

from tensorboardX.proto import event_pb2


def read_events(path) -> list:
    """Event protos of a TFRecord file: [len u64][crc u32][data][crc u32] per record."""
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        out.append(event_pb2.Event.FromString(data[i + 12 : i + 12 + n]))
        i += 12 + n + 4
    return out
