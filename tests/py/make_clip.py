"""Makes a short H.264 .mp4 clip for the RTSP source's tests: copies of a normal PNG, with a
run of frames replaced by a defect PNG.

Usage: make_clip.py OUT.mp4 --normal A.png [--defect B.png --defect-at START:END]
                    [--frames 40] [--fps 10] [--gop 10] [--size WxH]
Frames in [START, END) show the defect image. Needs only the stdlib and the ffmpeg command."""

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile


def fail(message):
    print(f"make_clip: {message}", file=sys.stderr)
    sys.exit(2)


def png_size(path):
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        fail(f"{path} is not a PNG")
    return struct.unpack(">II", head[16:24])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--normal", required=True)
    p.add_argument("--defect")
    p.add_argument("--defect-at", help="START:END, frame indices, END exclusive")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--fps", type=int, default=10)
    p.add_argument("--gop", type=int, default=10)
    p.add_argument("--size", help="WxH, even; default: the normal PNG's, rounded up to even")
    a = p.parse_args()

    if (a.defect is None) != (a.defect_at is None):
        fail("--defect and --defect-at go together")
    start = end = 0
    if a.defect_at:
        try:
            start, end = (int(x) for x in a.defect_at.split(":"))
        except ValueError:
            fail(f"--defect-at wants START:END, got {a.defect_at!r}")
        if not 0 <= start < end <= a.frames:
            fail(f"--defect-at {a.defect_at} is outside 0..{a.frames}")
        png_size(a.defect)
    if a.frames < 1 or a.fps < 1 or a.gop < 1:
        fail("--frames, --fps and --gop must be positive")
    if a.size:
        try:
            w, h = (int(x) for x in a.size.lower().split("x"))
        except ValueError:
            fail(f"--size wants WxH, got {a.size!r}")
        if w < 2 or h < 2 or w % 2 or h % 2:
            fail("--size must be even in both directions (yuv420p)")
    else:
        w, h = png_size(a.normal)
        w, h = w + w % 2, h + h % 2
    if shutil.which("ffmpeg") is None:
        fail("the ffmpeg command is not installed")

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.frames):
            src = a.defect if start <= i < end else a.normal
            shutil.copyfile(src, os.path.join(tmp, f"f{i:05d}.png"))
        # Nearest-neighbour keeps the defect's hard edges; baseline-compatible settings (main
        # profile, no B-frames, yuv420p) so GStreamer and OpenH264 decode it; -crf 1 because
        # -qp 0 switches x264 to the High 4:4:4 profile; no scene-cut keyframes, so IDRs come
        # exactly every GOP frames.
        cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
               "-framerate", str(a.fps), "-i", os.path.join(tmp, "f%05d.png"),
               "-vf", f"scale={w}:{h}:flags=neighbor", "-frames:v", str(a.frames),
               "-c:v", "libx264", "-pix_fmt", "yuv420p", "-profile:v", "main", "-crf", "1",
               "-g", str(a.gop), "-keyint_min", str(a.gop), "-sc_threshold", "0", "-bf", "0",
               "-an", a.out]
        r = subprocess.run(cmd)
        if r.returncode != 0:
            fail(f"ffmpeg failed (exit {r.returncode}) writing {a.out}")


if __name__ == "__main__":
    main()
