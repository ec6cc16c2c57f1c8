"""Sample a saved pipeline:  python pipelines/sample.py --pipeline runs/teacher/pipeline --num-samples 64"""
import sys

from gendiv.cli import main

if __name__ == "__main__":
    main(["sample", *sys.argv[1:]])
