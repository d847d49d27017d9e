"""Training: the config check (`config_check`), the train state (`state`), the
optimisers and schedules (`optim`), the pure steps and their options
(`steps`), the one compiled step (`compiled`), the population of K >= 1
members every run is (`population`, `population_report`), the flat loop
(`loop`), evaluation (`evaluator`), the log (`metrics`), checkpoint storage
(`checkpoint`) and its versioned metadata (`metadata`), fine-tuning
(`finetune`), the workdir lock (`lock`) and the ways a run stops (`stops`).
The public restore API is `resnet_jax.restore`."""
