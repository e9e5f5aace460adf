"""Fine-tuning vision-language models on astronomers' own labels (`astrovlm finetune`).

- `config`: the method and hyper-parameters of a run, checked when they are set;
- `data`: training examples encoded exactly as `classify` scores them, and their collation;
- `architecture`: the vision tower, projector and language model of each VLM family;
- `finetune`: LoRA, projector-only, two-stage and full fine-tuning, inputs checked before the model loads;
- `trainer`: the transformers `Trainer` with the answer-token loss and validation by label scoring;
- `output`: the adapter or model, its record and its model card, written whole with the umask's permissions;
- `model_card`: the README written with every adapter.

Importing this package is cheap; torch, transformers and peft load when training starts.
"""

from .finetune import DEFAULT_LEARNING_RATES, METHODS, FinetuneConfig, FinetuneResult, finetune

__all__ = ["finetune", "FinetuneConfig", "FinetuneResult", "METHODS", "DEFAULT_LEARNING_RATES"]
