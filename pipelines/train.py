"""Train a diffusion teacher. Run with `python` or `accelerate launch`:

    accelerate launch pipelines/train.py --config configs/teacher_digits.yaml run.steps=2000
"""
import sys

from gendiv.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
