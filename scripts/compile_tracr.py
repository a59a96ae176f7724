"""Compile the bundled tracr programs and write their GPT-2 ports to interp/data/tracr-<name>/.

    pip install -e .[tracr] && python scripts/compile_tracr.py [--only reverse]

Deterministic: tracr builds weights from the program, so rerunning reproduces the shipped files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from interp.tracr_models import PROGRAMS, TRACR_DIR, compile_program


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(PROGRAMS), default=None)
    parser.add_argument("--out", default=str(TRACR_DIR), help="parent folder of the tracr-<name> checkpoints")
    args = parser.parse_args()
    for name, program in PROGRAMS.items():
        if args.only in (None, name):
            folder = compile_program(name, Path(args.out) / program.model_name)
            size = sum(f.stat().st_size for f in folder.iterdir()) / 1024
            print(f"{program.model_name}: {folder} ({size:.0f} KB)")


if __name__ == "__main__":
    main()
