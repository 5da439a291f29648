"""Hyperparameter search, as the design names it: `python tune/search.py ARGS` is `sam tune ARGS`.

    python tune/search.py --data ../shared/data/tweet_sentiment_extraction --num-samples 8
    python tune/search.py --storage ~/ray_results --name sam-search --resume   # after an interrupt
"""

import sys

from sam.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
