"""The offline demo: tiny models and the embedded default a run uses when no model is named.

Nothing here is part of the method; it builds what lets ``reopold-agent train`` run offline.

- :mod:`.chat_template`: the ChatML tool-calling chat template of the tiny tokenizer;
- :mod:`.tiny_models`: the offline tokenizer and tiny Qwen2/Qwen3 causal LMs, and their cache;
- :mod:`.tiny_vl`: tiny Qwen2.5-VL models and processors for vision-language tasks;
- :mod:`.embedded`: the per-task recipes of the embedded teacher and student, built once and
  cached;
- :mod:`.measured_stop`: stopping a role's supervised pre-training at a measured accuracy.
"""
