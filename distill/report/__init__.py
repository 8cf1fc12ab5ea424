"""What a run or a comparison reports: the run report (``run_report``, ``gan_report`` for generate and face_sr),
``gankd-distill eval`` on held-out photos (``evaluate``) and tables and plots (``plots``). The metrics themselves
are ``gankd.distill.metrics``."""
