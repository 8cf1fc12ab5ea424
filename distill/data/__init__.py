"""Training and evaluation data: images on disk and the embedded photos (``images``, ``photos``), the degradation
of real photos (``degrade``), crop pools and epoch batches (``crops``), the frozen teacher's cached answers
(``teacher_cache``), faces for GCFSR (``faces``) and DiffAugment (``augment``).

The SR pipeline: ``images.list_images`` / ``load_image`` (or the embedded ``sample_images``) -> ``crops.CropPool.build``
(random HR crops and their LR counterparts, made once; each crop's LR from :mod:`.degrade`, ``bicubic``,
``realesrgan`` or the ``photo`` mix, drawn from the crop's own seed) -> ``teacher_cache.cache_teacher`` (the frozen
teacher run once over the pool) -> ``crops.epoch_batches`` (a seeded permutation, so a resumed run restores the
generator and sees the same batches). A ``photo`` validation pool holds every crop clean and in each kind of the
mix.
"""
