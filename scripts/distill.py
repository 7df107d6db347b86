"""accelerate launch scripts/distill.py --config configs/distill-<recipe>.yaml [--resume latest] [key=value ...]"""

from convdiff.apps.distill import distill_main

if __name__ == "__main__":
    distill_main()
