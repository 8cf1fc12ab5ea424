"""Training and evaluation data: images on disk and the embedded photos (``images``, ``photos``), the degradation
of real photos (``degrade``), crop pools and epoch batches (``crops``), the frozen teacher's cached answers
(``teacher_cache``), faces for GCFSR (``faces``) and DiffAugment (``augment``)."""
