"""FID command line (same as `gendiv fid`):  python eval/fid.py GEN REF [--kid] [--backend clean-fid] ...

See `python eval/fid.py --help`. `python eval/fid.py stats SOURCE --out ref.npz` writes reference statistics.
"""
import sys

from gendiv.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    main(["fid-stats", *args[1:]] if args[:1] == ["stats"] else ["fid", *args])
