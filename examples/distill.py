"""Distil a trained RAD-V reward model (the teacher) into a RAD-Q student.

    accelerate launch --multi_gpu --num_processes 2 examples/distill.py --use_cpu --teacher outputs/rad-v-toxicity --task toxicity \
        --data_dir ../shared/data --num_layers 6 --max_length 64 --candidate_top_k 20 \
        --per_device_train_batch_size 16 --output_dir outputs/rad-q-distilled

The student regresses the teacher's value of every prefix of the training texts through the reward of the observed
next token; `--candidate_top_k K` also matches the teacher on the base LM's (`--base_model`, default: the backbone)
top-K next tokens at every position, the candidates RAD decoding scores.

On a machine without a GPU `--use_cpu` makes the processes train together on the CPU (the script adds it itself
when it is missing, and says so); with GPUs drop it.
"""

import sys

import rad_q_hf  # noqa: F401  (registers the Auto classes)
from rad_q_hf.training.scripts import main

if __name__ == "__main__":
    sys.exit(main("distill"))
