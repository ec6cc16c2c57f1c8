"""One-step distillation. Run with `python` or `accelerate launch`:

    accelerate launch pipelines/distill.py --config configs/distill_fdistill_js_digits.yaml
"""
import sys

from gendiv.cli import main

if __name__ == "__main__":
    main(["distill", *sys.argv[1:]])
