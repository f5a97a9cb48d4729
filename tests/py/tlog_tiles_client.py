"""An independent C2SP tlog-tiles reader (written from the specs, sharing no code with Tandem):
reads a log over HTTP the way any tlog-tiles client does and checks everything it serves.

  tlog_tiles_client.py URL VKEY

- `GET /checkpoint` (content type text/plain): a C2SP signed note whose Ed25519 signature
  verifies under VKEY (`name+hexid+base64(0x01 || key)`, key id = SHA-256(name || 0x0A || 0x01
  || key)[:4]); its body is `origin`, `size`, base64 root hash (C2SP tlog-checkpoint).
- Every entry bundle at its exact path (`tile/entries/<N>` or `<N>.p/<W>`, N in x-prefixed
  three-digit groups), parsed as big-endian uint16 length + data.
- Every hash tile of every level at its exact path, each equal to the tree recomputed from
  the entries (RFC 6962 leaf and node hashes); the root of the whole tree equals the
  checkpoint's.

Prints one JSON line: {"ok": true, "size": N, "root": hex, "tiles": n, "entries": n}.
"""

import base64
import hashlib
import json
import sys
import urllib.error
import urllib.request

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

WIDTH = 256


def get(base, path):
    with urllib.request.urlopen(f"{base}/{path}", timeout=30) as r:
        return r.read(), r.headers.get("content-type", "")


def tile_index(n):
    # C2SP tlog-tiles: the index in groups of three decimal digits, all but the last with "x".
    s = f"{n:03d}"
    s = "0" * ((3 - len(s) % 3) % 3) + s
    groups = [s[i:i + 3] for i in range(0, len(s), 3)]
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])


def tile_path(level, n, width):
    p = f"tile/{level}/{tile_index(n)}"
    return p if width == WIDTH else f"{p}.p/{width}"


def open_checkpoint(note, vkey):
    name, key_id_hex, key_b64 = vkey.split("+", 2)
    raw = base64.b64decode(key_b64)
    assert raw[0] == 0x01 and len(raw) == 33, "not an Ed25519 vkey"
    key_id = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    assert key_id.hex() == key_id_hex, "vkey id does not match its key"
    text, sep, sigs = note.partition(b"\n\n")
    assert sep, "no blank line between text and signatures"
    text += b"\n"
    pub = Ed25519PublicKey.from_public_bytes(raw[1:])
    verified = False
    for line in sigs.decode().splitlines():
        assert line.startswith("\u2014 "), f"bad signature line {line!r}"
        who, sig_b64 = line[2:].rsplit(" ", 1)
        sig = base64.b64decode(sig_b64)
        if who == name and sig[:4] == key_id:
            pub.verify(sig[4:], text)  # raises on a bad signature
            verified = True
    assert verified, f"no signature by {name}"
    lines = text.decode().split("\n")
    return lines[0], int(lines[1]), base64.b64decode(lines[2])


def leaf(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node(l, r):
    return hashlib.sha256(b"\x01" + l + r).digest()


def mth(hashes):
    """RFC 6962 Merkle tree hash over leaf hashes."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return node(mth(hashes[:k]), mth(hashes[k:]))


def main():
    base, vkey = sys.argv[1].rstrip("/"), sys.argv[2]
    note, ctype = get(base, "checkpoint")
    assert ctype.startswith("text/plain"), f"checkpoint content type {ctype!r}"
    origin, size, root = open_checkpoint(note, vkey)

    # Entry bundles, at their exact paths.
    entries = []
    for n in range((size + WIDTH - 1) // WIDTH):
        width = min(WIDTH, size - n * WIDTH)
        data, _ = get(base, tile_path("entries", n, width))
        got, i = [], 0
        while i < len(data):
            assert i + 2 <= len(data), "truncated entry length"
            ln = int.from_bytes(data[i:i + 2], "big")
            assert i + 2 + ln <= len(data), "truncated entry"
            got.append(data[i + 2:i + 2 + ln])
            i += 2 + ln
        assert len(got) == width, f"bundle {n}: {len(got)} entries, expected {width}"
        entries += got

    # Hash tiles of every level against the recomputed tree.
    level_hashes = [leaf(e) for e in entries]
    tiles, level = 0, 0
    while True:
        count = len(level_hashes)  # hashes at tree level 8*level
        if count == 0:
            break
        for n in range((count + WIDTH - 1) // WIDTH):
            width = min(WIDTH, count - n * WIDTH)
            data, _ = get(base, tile_path(level, n, width))
            want = b"".join(level_hashes[n * WIDTH:n * WIDTH + width])
            assert data == want, f"tile {tile_path(level, n, width)} differs from the tree"
            tiles += 1
        # The next tile level holds the roots of full 256-wide subtrees only.
        level_hashes = [mth(level_hashes[i:i + WIDTH]) for i in range(0, count - count % WIDTH, WIDTH)]
        level += 1
    got_root = mth([leaf(e) for e in entries])
    assert got_root == root, f"entries hash to {got_root.hex()}, checkpoint says {root.hex()}"
    print(json.dumps({"ok": True, "origin": origin, "size": size, "root": root.hex(),
                      "tiles": tiles, "entries": len(entries)}))


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, urllib.error.URLError, ValueError) as e:
        print(json.dumps({"ok": False, "error": str(e)}))
        sys.exit(1)
    except Exception as e:  # e.g. cryptography's InvalidSignature
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
