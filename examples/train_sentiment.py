"""Train a sentiment reward model (label `positive`) as in the RAD-Q paper: Amazon reviews first, then SST-2.

    accelerate launch --multi_gpu --num_processes 2 examples/train_sentiment.py --use_cpu --method rad-q --data_dir ../shared/data \
        --source amazon,sst2 --learning_rate 1e-5 --num_layers 6 --max_length 64 \
        --per_device_train_batch_size 50 --output_dir outputs/rad-q-sentiment

Each source in `--source` is one stage in `<output_dir>/stage-<i>-<source>`, starting from the previous stage's
model; re-runs skip finished stages and resume interrupted ones. Offline sources: sst2, amazon (Blitzer et al.'s
reviews), imdb; with the Hub: hub:amazon_polarity, hub:sst2 (the papers' data). The last stage's model and its
SST-2 dev metrics end up in `--output_dir`.

On a machine without a GPU `--use_cpu` makes the processes train together on the CPU (the script adds it itself
when it is missing, and says so); with GPUs drop it.
"""

import sys

import rad_q_hf  # noqa: F401  (registers the Auto classes)
from rad_q_hf.training.scripts import main

if __name__ == "__main__":
    sys.exit(main("sentiment"))
