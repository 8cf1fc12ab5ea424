"""What a run or a comparison reports: the run report (``run_report``, ``gan_report`` for generate and face_sr,
``d_outputs``: what the
discriminators say about real, teacher and student images),
``gankd-distill eval`` on held-out photos (``evaluate``) and tables and plots (``plots``). The metrics themselves
are ``gankd.distill.metrics``."""
