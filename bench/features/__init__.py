"""Reward-model features of text datasets: extraction (``bench embed``) and the feature cache.

* :mod:`bench.features.cache` — the on-disk cache (float16 arrays + Parquet index), written in
  chunks, resumable, verified on load; imports neither torch nor transformers.
* :mod:`bench.features.encoders` — the transformers and vLLM backends (imported lazily).
* :mod:`bench.features.extract` — the extraction loop: dedup, length-sorted chunks, token-budget
  batches, the ``score(feature) ≈ logit`` check, progress and resume.

The feature of a response is the final-norm hidden state of the last token of the chat-templated
conversation (prompt messages + the assistant response, no generation prompt) — exactly the input
of the reward model's ``score`` head — and the head's output (the logit) is kept as the zero-shot
reward-model score.
"""
