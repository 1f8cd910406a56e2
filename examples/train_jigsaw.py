"""Train a RAD-V or RAD-Q toxicity reward model.

    accelerate launch --multi_gpu --num_processes 2 examples/train_jigsaw.py --use_cpu --method rad-q --data_dir ../shared/data \
        --num_layers 6 --max_length 64 --per_device_train_batch_size 50 --eval_strategy steps --eval_steps 200 \
        --save_steps 200 --output_dir outputs/rad-q-toxicity

Offline it trains on the labelled corpora under `<data_dir>/toxicity/` (one `toxicity` score); with the real data
use `--source jigsaw --jigsaw_dir DIR` (Kaggle Jigsaw Unintended Bias CSVs, 7 attributes) or, with the Hub,
`--source civil_comments`. `--method rad-v` trains the value-head model; `--lora_r 16` trains LoRA adapters instead
of the whole backbone; `--train_file my.jsonl --label_columns toxicity` trains on your own data. A re-run resumes
from the last checkpoint in `--output_dir`. The final folder loads with `AutoModel.from_pretrained`.

On a machine without a GPU `--use_cpu` makes the processes train together on the CPU (the script adds it itself
when it is missing, and says so); with GPUs drop it.
"""

import sys

import rad_q_hf  # noqa: F401  (registers the Auto classes)
from rad_q_hf.training.scripts import main

if __name__ == "__main__":
    sys.exit(main("toxicity"))
