"""accelerate launch scripts/train.py --config configs/<recipe>.yaml [--resume latest] [key=value ...]"""

from convdiff.apps.train import train_main

if __name__ == "__main__":
    train_main()
