"""Commands around training: ``gankd-distill inspect`` (``inspect_model``), ``gankd-distill search``
(``search``) and the per-step cost of a recipe (``bench_step``)."""
