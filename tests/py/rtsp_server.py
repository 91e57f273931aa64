"""A real RTSP server for the RTSP camera source's tests (GStreamer's, through PyGObject).

Usage: /usr/bin/python3 rtsp_server.py PORT SOURCE [--user NAME:PASSWORD]
SOURCE is `test` (a live 256x256 10 fps test pattern) or an H.264 .mp4 clip, which loops
forever. Serves H.264 on rtsp://127.0.0.1:PORT/live (one shared stream, UDP or TCP
interleaved); with --user, only that user, by HTTP Basic auth (others get 401). Prints
`READY rtsp://127.0.0.1:PORT/live` once it accepts clients; exits 0 on SIGTERM/SIGINT and 2,
with a message on stderr, on errors. Needs Debian's /usr/bin/python3 (the `gi` module) with
python3-gi, gir1.2-gst-rtsp-server-1.0 and gstreamer1.0-plugins-{base,good,ugly,bad}."""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

# config-interval=-1 repeats SPS/PPS before every IDR, so a client that joins the shared stream
# late can start decoding at the next keyframe.
PAY = "rtph264pay name=pay0 pt=96 config-interval=-1"
TEST = ("( videotestsrc is-live=true ! video/x-raw,width=256,height=256,framerate=10/1 ! "
        f"x264enc tune=zerolatency key-int-max=10 ! {PAY} )")
CLIP = f"( appsrc name=src is-live=true format=time ! h264parse ! {PAY} )"


def fail(message):
    print(f"rtsp_server: {message}", file=sys.stderr)
    sys.exit(2)


def read_clip(path):
    """The clip's H.264 access units and caps, read once so every loop serves the same bytes."""
    pipe = Gst.parse_launch("filesrc name=f ! qtdemux ! h264parse ! "
                            "video/x-h264,alignment=au ! appsink name=sink sync=false")
    pipe.get_by_name("f").set_property("location", path)
    sink = pipe.get_by_name("sink")
    bus = pipe.get_bus()
    pipe.set_state(Gst.State.PLAYING)
    frames, caps = [], None
    while not sink.get_property("eos"):
        # A timed pull, because after an error (no such file, not an MP4) no EOS ever comes.
        sample = sink.emit("try-pull-sample", Gst.SECOND)
        msg = bus.pop_filtered(Gst.MessageType.ERROR)
        if msg is not None:
            pipe.set_state(Gst.State.NULL)
            fail(f"cannot read {path} as an H.264 MP4 clip: {msg.parse_error()[0].message}")
        if sample is not None:
            caps = sample.get_caps()
            frames.append(sample.get_buffer())
    pipe.set_state(Gst.State.NULL)
    if not frames:
        fail(f"the clip {path} has no H.264 frames")
    return frames, caps


class ClipFeeder:
    """Pushes the clip's frames into one media's appsrc, in a loop, in real time.

    Stamping frame i with running time t0 + i * duration is what makes the loop seamless: RTP
    timestamps keep increasing by one frame across the wrap, with no seek, no flush and no
    re-encoding (the clip's first frame is an IDR, so decoders resync there)."""

    def __init__(self, frames, caps, appsrc):
        self.frames, self.src, self.i, self.t0 = frames, appsrc, 0, None
        ok, num, den = caps.get_structure(0).get_fraction("framerate")
        self.duration = Gst.SECOND * den // num if ok and num else Gst.SECOND // 10
        appsrc.set_property("caps", caps)
        # A short tick, not one per frame: GLib timers drift by their dispatch delay, and the
        # frame times come from the schedule below, so a tick only bounds how late a frame goes.
        self.timer = GLib.timeout_add(10, self.push)

    def push(self):
        # A live source only makes sense once the pipeline runs; pushing before PLAYING would
        # queue a burst of stale frames in the appsrc.
        clock = self.src.get_clock()
        if self.src.get_state(0)[1] != Gst.State.PLAYING or clock is None:
            return True
        now = clock.get_time() - self.src.get_base_time()
        if self.t0 is None:
            self.t0 = now
        while self.t0 + self.i * self.duration <= now:
            buf = self.frames[self.i % len(self.frames)].copy()
            buf.pts = buf.dts = self.t0 + self.i * self.duration
            buf.duration = self.duration
            self.i += 1
            if self.src.emit("push-buffer", buf) != Gst.FlowReturn.OK:
                self.timer = 0  # returning False removes it
                return False
        return True

    def stop(self, *_):
        if self.timer:
            GLib.source_remove(self.timer)
            self.timer = 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("port", type=int)
    p.add_argument("source", help="`test` or an H.264 .mp4 clip")
    p.add_argument("--user", help="NAME:PASSWORD required by HTTP Basic auth")
    a = p.parse_args()
    Gst.init(None)

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_shared(True)
    if a.source == "test":
        factory.set_launch(TEST)
    else:
        frames, caps = read_clip(a.source)
        factory.set_launch(CLIP)

        def configure(_factory, media):
            feeder = ClipFeeder(frames, caps, media.get_element().get_by_name("src"))
            media.connect("unprepared", feeder.stop)

        factory.connect("media-configure", configure)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    if a.user:
        name, sep, password = a.user.partition(":")
        if not sep or not name:
            fail("--user wants NAME:PASSWORD")
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        auth = GstRtspServer.RTSPAuth()
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(name, password), token)
        server.set_auth(auth)
        perms = GstRtspServer.RTSPPermissions()
        for perm in ("media.factory.access", "media.factory.construct"):
            perms.add_permission_for_role("viewer", perm, True)
        factory.set_permissions(perms)
    server.get_mount_points().add_factory("/live", factory)

    # attach() binds and listens before it returns, so READY is true when printed: a client
    # that connects before the loop runs waits in the listen backlog.
    if server.attach(None) == 0:
        fail(f"cannot listen on 127.0.0.1:{a.port} (port in use?)")
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY rtsp://127.0.0.1:{a.port}/live", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
