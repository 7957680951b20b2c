"""Label Studio's brush RLE: the run-length code of an RGBA image (thi.ng rle-pack) its brush results store.

The stream is a 32-bit value count, the word size less one (5 bits), four run-length field sizes less one
(4 bits each), then records: 1 bit (1: a run of one value, 0: literal values), 2 bits choosing a field size,
the count less one in that many bits, then one word (a run) or count words (literals). The values are the
photo's pixels x 4 channels, row by row; the alpha channel holds the mask. `encode_brush` writes exactly what
label-studio-converter's `brush.mask2rle` writes (word size 8, field sizes 3, 4, 8, 16), in vectorised form.
"""

from __future__ import annotations

import numpy as np

from .. import WeedsegError

FIELD_BITS = (3, 4, 8, 16)
HEADER_BITS = 32 + 5 + 4 * 4


def encode_brush(mask: np.ndarray) -> list[int]:
    """The brush RLE (a list of byte values) of an HxW boolean mask: 255 in all four channels where it is set."""
    flat = np.repeat(np.where(mask.reshape(-1), 255, 0).astype(np.uint8), 4)
    change = np.flatnonzero(flat[1:] != flat[:-1])
    ends = np.append(change, flat.size - 1)
    lengths = np.diff(np.append(-1, ends))
    parts = [f"{flat.size:032b}", f"{8 - 1:05b}", "".join(f"{b - 1:04b}" for b in FIELD_BITS)]
    for length, value in zip(lengths.tolist(), flat[ends].tolist()):
        word = f"{value:08b}"
        while length > 1 << 16:
            parts.append(f"111{(1 << 16) - 1:016b}{word}")
            length -= 1 << 16
        if length == 1:
            parts.append(f"000000{word}")
        else:
            index = next(i for i, bits in enumerate(FIELD_BITS) if length <= 1 << bits)
            parts.append(f"1{index:02b}{length - 1:0{FIELD_BITS[index]}b}{word}")
    bits = "".join(parts)
    bits += "0" * (8 - len(bits) % 8)  # as the converter pads: always, 1 to 8 bits
    return np.packbits(np.frombuffer(bits.encode(), np.uint8) - 48).tolist()


def decode_brush(rle: list[int], width: int, height: int, where: str) -> np.ndarray:
    """The HxW boolean mask of a brush RLE: alpha at least 128 (half opaque). WeedsegError when the stream is
    for another size or broken."""
    try:
        raw = np.asarray(rle, np.int64)
        if raw.ndim != 1 or raw.size * 8 < HEADER_BITS or (raw < 0).any() or (raw > 255).any():
            raise ValueError("not a list of byte values")
        bits = (np.unpackbits(raw.astype(np.uint8)) + 48).tobytes().decode("ascii")
        count = int(bits[:32], 2)
        if count != width * height * 4:
            raise WeedsegError(f"{where}: the brush mask holds {count} values, but the photo is {width}x{height} "
                               f"({width * height * 4} values for its 4 channels); export it again from the same photo")
        word = int(bits[32:37], 2) + 1
        fields = [int(bits[37 + 4 * i : 41 + 4 * i], 2) + 1 for i in range(4)]
        out = np.zeros(count, np.uint8 if word <= 8 else np.uint32)
        pos, i = HEADER_BITS, 0
        while i < count:
            run = bits[pos] == "1"
            size = fields[int(bits[pos + 1 : pos + 3], 2)]
            j = i + 1 + int(bits[pos + 3 : pos + 3 + size], 2)
            pos += 3 + size
            if j > count:
                raise ValueError("a run goes past the end of the image")
            if run:
                out[i:j] = int(bits[pos : pos + word], 2)
                pos += word
            else:
                for k in range(i, j):
                    out[k] = int(bits[pos : pos + word], 2)
                    pos += word
            if pos > len(bits):
                raise ValueError("the stream ends early")
            i = j
    except (ValueError, IndexError) as exc:
        raise WeedsegError(f"{where}: unreadable brush mask ({exc})") from None
    return out.reshape(height, width, 4)[..., 3] >= 128
