"""Training: the recipe (``recipe``), the run (``loop``: build networks, step, resume, write the report), the
stages (``stages``) and the terms of their objective (``objective``, ``losses``, ``perceptual``), the paper
baselines (``baselines``, ``kddlgan``), feature adapters (``adapters``), quantisation-aware training (``qat``), the
saved run state (``run_state``), DDP (``distributed``) and the data and validation each task trains on
(``task_data``)."""
