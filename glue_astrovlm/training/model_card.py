"""The README model card written next to every fine-tuned adapter or model."""

from __future__ import annotations

__all__ = ["model_card"]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _header(record: dict, adapter: bool) -> list[str]:
    """The YAML front matter, the title and how to use the adapter or model."""
    label_set = record.get("label_set")
    lines = ["---", "library_name: peft" if adapter else "library_name: transformers",
             f"base_model: {record['base_model']}", "tags:", "- glue-astrovlm", "- astronomy",
             f"- {record['method']}", "---", "",
             f"# {'LoRA adapter' if adapter else 'Fine-tuned model'} for {record['base_model']}", "",
             f"Trained with `astrovlm finetune --method {record['method']}` (glue-astrovlm "
             f"{record.get('glue_astrovlm_version', '')}) on {record['created']}.", ""]
    lines += ["## Use", "", "```python", "from glue_astrovlm import load_model", ""]
    if adapter:
        lines += [f"vlm = load_model({record['base_model']!r}, adapter='path/to/this/folder')"]
    else:
        lines += ["vlm = load_model('path/to/this/folder')"]
    if label_set:
        lines += [f"results = vlm.classify(cutouts, {label_set['labels']!r})"]
    lines += ["```", "", "or `astrovlm eval DATA --model ... "
              + ("--adapter this/folder`" if adapter else "`")
              + " (the label set, stretch and crop below are read from this folder).", ""]
    return lines


def _data_and_labels(record: dict) -> list[str]:
    """The training and validation data, the model images, and the label set with its question."""
    lines = ["## Data", ""]
    data = record["data"]
    lines.append(f"- training: {data.get('source')} ({data.get('kind')}, {data.get('n')} images)")
    if data.get("class_counts"):
        lines.append("  - per class: " + ", ".join(f"{k} {v}" for k, v in data["class_counts"].items()))
    if record.get("validation_data"):
        val = record["validation_data"]
        lines.append(f"- validation: {val.get('source')} ({val.get('n')} images)")
    lines.append(f"- images: engine stretch {record['stretch_text']}, central crop {record['crop']:g}")
    lines.append("")
    label_set = record.get("label_set")
    if label_set:
        lines += ["## Label set", "", f"`{label_set['name']}`, prompt hash `{label_set['prompt_hash']}`: the "
                  "model answers the question below with one label; `classify` scores each label's "
                  "likelihood.",
                  "", f"> {label_set['question']}", ""]
        descriptions = label_set["descriptions"] or [""] * len(label_set["labels"])
        for label, description in zip(label_set["labels"], descriptions):
            lines.append(f"- **{label}**" + (f": {description}" if description else ""))
        lines.append("")
    return lines


def _training(record: dict) -> list[str]:
    """The settings table and what the run measured."""
    lines = ["## Training", "", "| setting | value |", "|---|---|"]
    for key, value in record["hyperparameters"].items():
        lines.append(f"| {key} | {_fmt(value)} |")
    lines += [f"| trainable parameters | {record['trainable_parameters']:,} of "
              f"{record['total_parameters']:,} |",
              f"| vision tower | {'frozen' if record['modules']['vision_frozen'] else 'trained'} |",
              f"| optimiser updates | {record['steps']} ({record['epochs']:.2f} epochs) |",
              f"| training loss: mean over the run, last logged | {_fmt(record['train_loss'])}, "
              f"{_fmt(record.get('final_loss'))} |",
              f"| device, precision | {record['device']}, {record['precision']} |",
              f"| training time | {record['train_seconds']:.0f} s |"]
    if record.get("train_examples_per_second"):
        lines.append(f"| training speed | {record['train_examples_per_second']:.2f} examples/s |")
    if record.get("peak_gpu_memory_mb"):
        lines.append(f"| peak GPU memory | {record['peak_gpu_memory_mb']:,} MB |")
    lines.append("")
    return lines


def _validation(record: dict) -> list[str]:
    """The validation metrics of the saved model and per epoch (nothing without validation data)."""
    if not record.get("validation"):
        return []
    lines = ["## Validation", "", "Scored as `astrovlm eval` does (label likelihoods), best epoch kept:", ""]
    lines += [f"- {key}: {_fmt(value)}" for key, value in record["validation"].items()]
    evals = [h for h in record.get("history", []) if "eval_accuracy" in h]
    if evals:
        lines += ["", "| epoch | step | accuracy | macro F1 | NLL |", "|---|---|---|---|---|"]
        lines += [f"| {h.get('epoch', 0):.2f} | {h.get('step', '')} | {h['eval_accuracy']:.3f} | "
                  f"{h.get('eval_macro_f1', float('nan')):.3f} | {h.get('eval_nll', float('nan')):.3f} |"
                  for h in evals]
    lines.append("")
    return lines


def model_card(record: dict) -> str:
    """A Markdown model card from the record `finetune` saves (base model, data, labels, settings, metrics).

    Parameters
    ----------
    record : dict
        The record written as ``astrovlm_adapter.json`` or ``astrovlm_model.json``.

    Returns
    -------
    str
        The card, with a YAML header for the Hugging Face Hub.
    """
    adapter = record["method"] in ("lora", "two-stage")
    lines = _header(record, adapter) + _data_and_labels(record) + _training(record) + _validation(record)
    lines += ["## Limitations", "",
              "Validation figures describe the validation data above only. Check the model on your own data "
              "with `astrovlm eval` before using its labels for science.", ""]
    return "\n".join(lines)
