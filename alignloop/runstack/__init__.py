"""The run stack every trainer shares, language model and control alike.

One module per concern, each plain functions or a small class, imported by the trainers:

- `layout`: the run folder (checkpoints/, metrics.jsonl, tb/, final/, run.json), defined once;
- `seeding`: seeds and random-number-generator states as plain tensors and numbers;
- `distributed`: the process group, the strategies (`ddp`, `fsdp`, `fsdp-grad-op`), bf16;
- `optim` and `batches`: AdamW with its schedule, and the deterministic data order;
- `checkpoint`: atomic checkpoints with a checksum manifest, loaded with ``weights_only=True``,
  falling back to the newest intact one;
- `metrics`: metrics.jsonl, TensorBoard and a progress bar behind one logger, with sinks;
- `run`: the one ``--resume`` rule, the resolved configuration in run.json and the check that
  a resumed run still has the model it was started with;
- `options`: the options every trainer has (`RunOptions`), spelled the same in every command,
  and the deprecated spellings that still work.

It imports torch, numpy, rich and tensorboard, never transformers, and nothing of alignloop's
but `alignloop.core`, `alignloop.config` and `alignloop.errors` (tests/test_imports.py).
"""
