#!/usr/bin/python3
"""A small RTSP server for tests and demos, on GStreamer's RTSP server (Debian packages
gir1.2-gst-rtsp-server-1.0 and gstreamer1.0-plugins-{base,good,ugly}; run with the system
python3, which has PyGObject).

Paths:
  /test   a generated test picture (moving ball, a running time stamp), H.264
  /relay  relays H.264 RTP that you send to UDP 127.0.0.1:<relay-port>, e.g.
          gst-launch-1.0 videotestsrc is-live=true ! x264enc tune=zerolatency ! rtph264pay \
            ! udpsink host=127.0.0.1 port=<relay-port>
          Stop (SIGSTOP) the sender and the stream stalls without closing.
  /test-audio  the test picture plus a live Opus audio track (a tone). SIGUSR1 stops its
          video (the audio keeps flowing), SIGUSR2 starts it again.

With --user and --password every path wants those credentials (HTTP Basic over RTSP).

    /usr/bin/python3 scripts/rtsp_server.py --port 8554 [--relay-port 5600] [--size 320x240] \
        [--user admin --password S3cret]

Prints "READY rtsp://127.0.0.1:<port>" once it listens; stops on SIGTERM / SIGINT. Every
media pipeline is built once before that: a missing GStreamer element makes the server exit 2
at once, naming the element, instead of answering each client "5XX Server Error".
--print-pipelines prints the launch line of each path as JSON and exits (tests/test_system.py
checks that scripts/check_system.py checks each element in them).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

H264_RTP_CAPS = "application/x-rtp,media=video,encoding-name=H264,payload=96,clock-rate=90000"


def check_launch(path: str, launch: str) -> None:
    """Builds the pipeline once and throws it away; exits 2 with GStreamer's error if it
    cannot be built (typically a missing element: scripts/check_system.py names its package)."""
    try:
        Gst.parse_launch(f"( {launch} )")
    except GLib.Error as e:
        print(f"rtsp_server: cannot build the pipeline of {path}: {e.message}", file=sys.stderr)
        print(f"rtsp_server: pipeline was: {launch}", file=sys.stderr)
        sys.exit(2)


AUTH_ROLE = "user"


def pipelines(width: int, height: int, fps: int, relay_port: int) -> dict[str, str]:
    """The gst-launch line of each mount path (/relay only with a relay port)."""
    picture = (
        f"videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
        f"framerate={fps}/1"
    )
    h264 = f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps}"
    lines = {
        "/test": f"{picture} ! timeoverlay ! {h264} ! rtph264pay name=pay0 pt=96",
        # One keyframe, at the start, then none (like a camera using intra refresh).
        "/one-keyframe": f"{picture} ! {h264.replace(f'key-int-max={fps}', 'key-int-max=1000000')}"
        " ! rtph264pay name=pay0 pt=96",
        "/test-audio": f"{picture} ! valve name=videogate ! {h264} ! rtph264pay name=pay0 pt=96 "
        "audiotestsrc is-live=true wave=sine ! audio/x-raw,rate=48000 ! audioconvert "
        "! opusenc ! rtpopuspay name=pay1 pt=97",
    }
    if relay_port:
        lines["/relay"] = (
            f'udpsrc address=127.0.0.1 port={relay_port} caps="{H264_RTP_CAPS}" '
            "! rtph264depay ! rtph264pay name=pay0 pt=96"
        )
    return lines


def factory(path: str, launch: str, auth: bool) -> GstRtspServer.RTSPMediaFactory:
    check_launch(path, launch)
    f = GstRtspServer.RTSPMediaFactory()
    f.set_launch(f"( {launch} )")
    f.set_shared(True)
    if auth:
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role(AUTH_ROLE, "media.factory.access", True)
        permissions.add_permission_for_role(AUTH_ROLE, "media.factory.construct", True)
        f.set_permissions(permissions)
    return f


def require_password(server: GstRtspServer.RTSPServer, user: str, password: str) -> None:
    """Every client must log in as `user` with `password` (Basic authentication)."""
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, AUTH_ROLE)
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--relay-port", type=int, default=0, help="UDP port for /relay (0: no relay)")
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--user", help="require this user name (with --password)")
    ap.add_argument("--password", help="... and this password")
    ap.add_argument("--print-pipelines", action="store_true", help="print them as JSON, exit")
    args = ap.parse_args()
    if (args.user is None) != (args.password is None):
        ap.error("give --user and --password together")
    auth = args.user is not None
    w, h = (int(v) for v in args.size.split("x"))
    launch = pipelines(w, h, args.fps, args.relay_port)
    if args.print_pipelines:
        print(json.dumps(launch))
        return 0

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    if auth:
        require_password(server, args.user, args.password)
    mounts = server.get_mount_points()
    mounts.add_factory("/test", factory("/test", launch["/test"], auth))
    mounts.add_factory("/one-keyframe", factory("/one-keyframe", launch["/one-keyframe"], auth))
    if "/relay" in launch:
        mounts.add_factory("/relay", factory("/relay", launch["/relay"], auth))
    with_audio = factory("/test-audio", launch["/test-audio"], auth)
    gates: list[Any] = []  # the video valves of /test-audio's media (one: it is shared)
    with_audio.connect(
        "media-configure",
        lambda _f, media: gates.append(media.get_element().get_by_name("videogate")),
    )
    mounts.add_factory("/test-audio", with_audio)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)

    def video(drop: bool) -> bool:
        for gate in gates:
            gate.set_property("drop", drop)
        return True  # keep the handler

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR1, video, True)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR2, video, False)
    print(f"READY rtsp://{args.host}:{args.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
