"""The `sluice` command line: `sluice demo` (the main job).

    sluice demo [--duration 90] [--out sluice-demo-report] [--no-approve] [--no-live]
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sluice", description="Sluice: one exact rate-limit ledger per host.")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="play the five-phase story against a real sluiced and write a report")
    d.add_argument("--duration", type=float, default=90, help="seconds of traffic, 10..3600 (default 90)")
    d.add_argument("--out", default="sluice-demo-report", help="report directory (default ./sluice-demo-report)")
    d.add_argument("--bin-dir", help="where sluiced, sluicectl and sluice-trace are (default $SLUICE_BIN_DIR, PATH)")
    d.add_argument("--segment", help="segment name (default sluice-demo-<pid>)")
    d.add_argument("--keep-segment", action="store_true", help="leave the segment in /dev/shm for inspection")
    d.add_argument("--no-approve", action="store_true", help="no simulated operator: held-back changes stay pending")
    d.add_argument("--no-live", action="store_true", help="progress lines instead of the live view")
    a = ap.parse_args(argv)
    if a.command == "demo":
        from sluice import demo

        return demo.run(a.duration, a.out, a.bin_dir, a.segment, a.keep_segment, not a.no_approve,
                        False if a.no_live else None)
    return 2


if __name__ == "__main__":
    sys.exit(main())
